import pytest
import torch

from pretrain.losses import hcl_loss
from pretrain.samplers import build_sampler


def test_hcl_loss_uses_beta_and_reduces_to_dcl_at_beta_zero():
    pos, neg = torch.randn(4) + 3, torch.randn(4, 50)
    hcl = build_sampler("hcl", tau_plus=0.05, beta=2.0)
    assert torch.equal(hcl.loss(pos, neg, 0.5), hcl_loss(pos, neg, 2.0, 0.05, 0.5))
    flat = build_sampler("hcl", tau_plus=0.05, beta=0.0).loss(pos, neg, 0.5)
    assert torch.allclose(flat, build_sampler("dcl", tau_plus=0.05).loss(pos, neg, 0.5), rtol=1e-6)
    assert hcl.metadata() == {"tau_plus": 0.05, "beta": 2.0}


def test_hcl_checks_tau_plus():
    with pytest.raises(ValueError, match="tau_plus"):
        build_sampler("hcl", tau_plus=1.5)
