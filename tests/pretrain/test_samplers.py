import math

import numpy as np
import pytest
import torch
from scipy import stats

from pretrain.samplers import (
    BandWarning,
    ball_mask,
    build_sampler,
    check_band,
    ring_bounds,
    ring_mask,
    sample_from_mask,
    uniform_indices,
)


def exact_ranks(similarity: torch.Tensor) -> torch.Tensor:
    order = similarity.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(similarity.shape[1]).expand_as(order))
    return ranks


@pytest.mark.parametrize("pool_size", [37, 1000, 4096])
@pytest.mark.parametrize("w_out,w_in", [(1.0, 0.1), (0.5, 0.1), (0.1, 0.1), (0.3, 0.0), (0.75, 0.5)])
def test_ring_mask_is_exactly_the_rank_band(pool_size, w_out, w_in):
    similarity = torch.randn(9, pool_size, generator=torch.Generator().manual_seed(pool_size))
    mask = ring_mask(similarity, w_out, w_in)
    upper = math.floor(w_out * pool_size)
    lower = math.floor(w_in * upper)
    ranks = exact_ranks(similarity)
    assert torch.equal(mask, (ranks >= lower) & (ranks < upper))


def test_ball_is_ring_without_inner_cut():
    similarity = torch.randn(4, 300)
    ranks = exact_ranks(similarity)
    assert torch.equal(ball_mask(similarity, 0.2), ranks < 60)


def test_every_ring_negative_lies_inside_the_band():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(16, 32, generator=generator), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(5000, 32, generator=generator), dim=1)
    sampler = build_sampler("ring", w_out=0.1, w_in=0.1, anneal="constant")
    indices = sampler.bank_indices(anchors, bank, 256, generator=generator)
    assert indices.shape == (16, 256)
    ranks = torch.gather(exact_ranks(anchors @ bank.T), 1, indices)
    lower, upper = ring_bounds(5000, 0.1, 0.1)
    assert (lower, upper) == (50, 500)
    assert int(ranks.min()) >= lower and int(ranks.max()) < upper
    # the draw covers the band rather than a corner of it
    assert int(ranks.max()) > upper - 50 and int(ranks.min()) < lower + 50


def test_sample_from_mask_is_uniform_inside_each_row():
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, [3, 7, 40]] = True
    mask[1, 10:20] = True
    draws = sample_from_mask(mask, 30000, torch.Generator().manual_seed(1))
    assert bool(mask.gather(1, draws).all())
    counts = np.bincount(draws[1].numpy(), minlength=50)[10:20]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_nce_indices_are_uniform_goodness_of_fit():
    draws = uniform_indices(8, 20, 5000, torch.Generator().manual_seed(3)).flatten().numpy()
    counts = np.bincount(draws, minlength=20)
    result = stats.chisquare(counts)
    assert result.pvalue > 1e-3
    assert draws.min() == 0 and draws.max() == 19


def test_small_ring_warns_once_and_samples_with_replacement():
    anchors = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
    sampler = build_sampler("ring", w_out=0.1, w_in=0.1, anneal="constant")
    with pytest.warns(BandWarning, match="fewer than"):
        indices = sampler.bank_indices(anchors, bank, 64)
    assert indices.shape == (4, 64) and len(set(indices[0].tolist())) <= 10
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.bank_indices(anchors, bank, 64)


@pytest.mark.parametrize(
    "w_out,w_in", [(1.5, 0.1), (-0.1, 0.1), (0.5, 1.0), (0.0, 0.1), (0.5, -0.2), (float("nan"), 0.1)]
)
def test_bad_percentiles_raise(w_out, w_in):
    with pytest.raises(ValueError, match="w_out|w_in|band"):
        check_band(w_out, w_in)
    with pytest.raises(ValueError):
        ring_mask(torch.randn(2, 10), w_out, w_in)


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="valid samplers: nce, ring, ball, dcl, hcl, mochi"):
        build_sampler("rings")


@pytest.mark.parametrize("w_out,w_in", [(0.6, 0.1), (1.0, 0.1), (0.3, 0.0), (0.2, 0.5)])
def test_sample_band_stays_in_the_exact_band_on_both_paths(w_out, w_in):
    from pretrain.samplers import sample_band

    generator = torch.Generator().manual_seed(2)
    similarity = torch.randn(8, 4000, generator=generator)
    draws = sample_band(similarity, w_out, w_in, 3000, generator)
    lower, upper = ring_bounds(4000, w_out, w_in)
    ranks = torch.gather(exact_ranks(similarity), 1, draws)
    assert int(ranks.min()) >= lower and int(ranks.max()) < upper
    # uniform over the band: each tenth of the band gets about a tenth of the draws
    tenths = ((ranks - lower) * 10 // (upper - lower)).flatten().numpy()
    assert stats.chisquare(np.bincount(tenths, minlength=10)).pvalue > 1e-4


def test_sampled_thresholds_are_close_to_the_exact_band():
    from pretrain.samplers import sample_band

    generator = torch.Generator().manual_seed(4)
    similarity = torch.randn(8, 40000, generator=generator)
    draws = sample_band(similarity, 0.5, 0.1, 2000, generator, threshold_sample=4096)
    lower, upper = ring_bounds(40000, 0.5, 0.1)
    ranks = torch.gather(exact_ranks(similarity), 1, draws)
    slack = 0.01 * 40000  # about 4 standard errors of a 4,096-column quantile
    assert int(ranks.min()) >= lower - slack and int(ranks.max()) < upper + slack


def test_samplers_describe_themselves_for_pairing_and_studies():
    from pretrain.samplers import (
        SAMPLER_CLASSES,
        baseline_twin,
        build_sampler,
        build_sampler_from,
        hard_negative_samplers,
    )

    assert hard_negative_samplers() == ("ring", "ball", "dcl", "hcl", "mochi")
    assert all(baseline_twin(name) == "nce" for name in hard_negative_samplers()) and baseline_twin("nce") is None
    assert all(SAMPLER_CLASSES[baseline_twin(name)].baseline_twin is None for name in hard_negative_samplers())
    from pretrain.sampler_twins import BASELINE_TWINS  # the torch-free table the leaderboard reads

    assert set(BASELINE_TWINS) == set(SAMPLER_CLASSES)
    assert all(SAMPLER_CLASSES[name].baseline_twin == twin for name, twin in BASELINE_TWINS.items())
    assert build_sampler("ring", w_out=0.2, w_in=0.5, anneal="constant").band == (0.2, 0.5)
    assert build_sampler("ball", w_out=0.3, anneal="constant").band == (0.3, 0.0)
    annealed = build_sampler("ring", epochs=10, w_out=0.1, anneal="linear")
    assert annealed.band == (1.0, 0.1)  # the band of the current epoch: annealing starts from the whole pool
    assert build_sampler("nce").band is None and build_sampler("dcl").band is None
    assert build_sampler("hcl", beta=2.0).tilt == 2.0 and build_sampler("ring").tilt is None
    assert build_sampler("dcl", tau_plus=0.2).class_prior == 0.2 and build_sampler("nce").class_prior is None
    assert [name for name, cls in SAMPLER_CLASSES.items() if cls.synthesises_negatives] == ["mochi"]
    table = {"w_out": 0.2, "w_in": 0.3, "anneal": "constant"}
    assert build_sampler_from("nce", table).params == build_sampler("nce").params
    assert build_sampler_from("ball", table).band == (0.2, 0.0)
