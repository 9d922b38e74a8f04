import pytest
import torch

from pretrain.losses import dcl_loss
from pretrain.samplers import build_sampler


def test_dcl_loss_uses_its_tau_plus():
    pos, neg = torch.randn(4) + 3, torch.randn(4, 50)
    assert torch.equal(build_sampler("dcl", tau_plus=0.05).loss(pos, neg, 0.5), dcl_loss(pos, neg, 0.05, 0.5))
    assert build_sampler("dcl").metadata() == {"tau_plus": 0.1}


@pytest.mark.parametrize("tau_plus", [1.0, -0.1])
def test_tau_plus_outside_the_unit_interval_fails_at_construction(tau_plus):
    with pytest.raises(ValueError, match="tau_plus must lie in"):
        build_sampler("dcl", tau_plus=tau_plus)
