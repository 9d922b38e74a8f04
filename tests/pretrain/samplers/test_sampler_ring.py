import math

import pytest
import torch

from pretrain.samplers import build_sampler, ring_bounds, ring_mask


def test_ring_anneals_its_outer_cut_over_half_the_run():
    ring = build_sampler("ring", epochs=10, w_out=0.1, w_in=0.2)  # linear over 5 epochs by default
    outer = []
    for epoch in range(10):
        ring.set_epoch(epoch)
        outer.append(ring.epoch_record()["w_out"])
    assert outer == pytest.approx([1.0, 0.82, 0.64, 0.46, 0.28, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert ring.metadata() == {"w_out": 0.1, "w_in": 0.2, "anneal": "linear", "anneal_epochs": 5,
                               "anneal_steps": 4, "w_out_final": pytest.approx(0.1)}


def test_ring_selects_the_band_at_its_current_epoch():
    ring = build_sampler("ring", epochs=4, w_out=0.2, w_in=0.5, anneal="step", anneal_epochs=2, anneal_steps=2)
    similarity = torch.randn(6, 500, generator=torch.Generator().manual_seed(1))
    ring.set_epoch(1)  # one of two drops: w_out = 1 - 0.8 / 2 = 0.6
    assert torch.equal(ring.pool_mask(similarity), ring_mask(similarity, 0.6, 0.5))
    ring.set_epoch(3)
    mask = ring.pool_mask(similarity)
    lower, upper = ring_bounds(500, 0.2, 0.5)
    assert (lower, upper) == (50, 100) and bool((mask.sum(dim=1) == upper - lower).all())
    indices = ring.bank_indices(torch.eye(6, 500), torch.eye(500), 20, torch.Generator().manual_seed(0),
                                similarity=similarity)
    assert bool(mask.gather(1, indices).all())


@pytest.mark.parametrize("params,match", [({"w_out": 1.5}, "w_out must lie in"), ({"w_in": 1.0}, "band is empty"),
                                          ({"anneal": "cosine"}, "valid policies"),
                                          ({"anneal": "step", "anneal_steps": 0}, "anneal_steps")])
def test_bad_ring_parameters_fail_at_construction(params, match):
    with pytest.raises(ValueError, match=match):
        build_sampler("ring", **params)


def test_constant_ring_starts_at_its_target():
    ring = build_sampler("ring", epochs=3, w_out=0.3, anneal="constant")
    assert math.isclose(ring.epoch_record()["w_out"], 0.3) and ring.metadata()["w_out_final"] == 0.3
