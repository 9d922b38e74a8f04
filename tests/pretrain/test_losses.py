import math

import pytest
import torch

from pretrain.annealing import outer_fraction
from pretrain.losses import dcl_loss, hcl_loss, info_nce_loss
from pretrain.samplers import build_sampler

POS = torch.tensor([2.0])
NEG = torch.tensor([[1.0, 0.0]])


def test_info_nce_by_hand():
    expected = math.log(math.e**2 + math.e + 1) - 2
    assert info_nce_loss(POS, NEG).item() == pytest.approx(expected, rel=1e-6)
    # a masked negative leaves the partition
    masked = info_nce_loss(POS, NEG, torch.tensor([[True, False]])).item()
    assert masked == pytest.approx(math.log(math.e**2 + math.e) - 2, rel=1e-6)


def test_dcl_by_hand():
    t, tau = 0.5, 0.1
    pos, negs = math.e**2, math.e + 1
    ng = max((negs - tau * 2 * pos) / (1 - tau), 2 * math.exp(-1 / t))
    expected = -math.log(pos / (pos + ng))
    assert dcl_loss(POS, NEG, tau, t).item() == pytest.approx(expected, rel=1e-6)


def test_dcl_floor_binds_for_large_tau_plus():
    t, tau = 0.5, 0.9
    pos = math.e**2
    ng = 2 * math.exp(-1 / t)  # the estimate is negative, the floor N e^{-1/t} wins
    assert (math.e + 1 - tau * 2 * pos) / (1 - tau) < ng
    assert dcl_loss(POS, NEG, tau, t).item() == pytest.approx(-math.log(pos / (pos + ng)), rel=1e-5)  # float32


def test_hcl_by_hand():
    t, tau, beta = 0.5, 0.1, 1.0
    pos = math.e**2
    mean_weight = (math.e + 1) / 2
    weights = [math.e / mean_weight, 1 / mean_weight]
    reweighted = weights[0] * math.e + weights[1] * 1
    ng = max((reweighted - tau * 2 * pos) / (1 - tau), 2 * math.exp(-1 / t))
    assert hcl_loss(POS, NEG, beta, tau, t).item() == pytest.approx(-math.log(pos / (pos + ng)), rel=1e-6)


def _random_logits(seed, rows=6, cols=40, t=0.07):
    generator = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(rows, 16, generator=generator), dim=1)
    v = torch.nn.functional.normalize(torch.randn(rows + cols, 16, generator=generator), dim=1)
    sims = u @ v.T / t
    return sims[:, 0], sims[:, 1:cols + 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hcl_with_beta_zero_equals_dcl(seed):
    pos, neg = _random_logits(seed)
    assert torch.allclose(hcl_loss(pos, neg, 0.0, 0.1, 0.07), dcl_loss(pos, neg, 0.1, 0.07), rtol=1e-5)
    assert not torch.allclose(hcl_loss(pos, neg, 1.0, 0.1, 0.07), dcl_loss(pos, neg, 0.1, 0.07), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dcl_with_tau_plus_zero_equals_info_nce(seed):
    pos, neg = _random_logits(seed)
    assert torch.allclose(dcl_loss(pos, neg, 0.0, 0.07), info_nce_loss(pos, neg), rtol=1e-5)


def test_losses_are_stable_at_low_temperature_and_have_gradients():
    pos, neg = _random_logits(3, t=0.01)
    pos.requires_grad_(True)
    for name in ("nce", "dcl", "hcl"):
        loss = build_sampler(name).loss(pos, neg, 0.01)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, pos)
        assert torch.isfinite(grad).all() and (grad < 0).all()


def test_bad_shapes_and_tau_plus():
    with pytest.raises(ValueError, match="pos_logits"):
        info_nce_loss(torch.zeros(2, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="tau_plus"):
        dcl_loss(POS, NEG, 1.0, 0.5)


def test_annealing_policies():
    assert outer_fraction("constant", 0.1, 0, 10) == 0.1
    assert outer_fraction("linear", 0.1, 0, 10) == 1.0
    assert outer_fraction("linear", 0.1, 5, 10) == pytest.approx(0.55)
    assert outer_fraction("linear", 0.1, 10, 10) == pytest.approx(0.1)
    assert outer_fraction("linear", 0.1, 50, 10) == pytest.approx(0.1)
    steps = [outer_fraction("step", 0.2, e, 8, anneal_steps=4) for e in range(10)]
    assert steps == pytest.approx([1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4, 0.2, 0.2])
    with pytest.raises(ValueError, match="valid policies: constant, linear, step"):
        outer_fraction("cosine", 0.1, 0, 10)
