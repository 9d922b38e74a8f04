"""The contract every registered sampler keeps (a new sampler is checked here without new code)."""

import dataclasses
import json

import pytest
import torch

from pretrain.samplers import SAMPLER_CLASSES, NegativeSampler, build_sampler, sampler_class


@pytest.mark.parametrize("name", list(SAMPLER_CLASSES))
def test_registered_sampler_keeps_the_contract(name):
    cls = SAMPLER_CLASSES[name]
    assert issubclass(cls, NegativeSampler) and cls.name == name
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    sampler = build_sampler(name, epochs=4)
    json.dumps(sampler.metadata())  # goes into the checkpoint as is
    assert set(sampler.epoch_record()) == {"w_out"}
    generator = torch.Generator().manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=1)
    pool = torch.nn.functional.normalize(torch.randn(200, 8, generator=generator), dim=1)
    if not cls.needs_queue:
        indices = sampler.bank_indices(anchors, pool, 16, generator)
        assert indices.shape == (3, 16) and 0 <= int(indices.min()) and int(indices.max()) < 200
    mask = sampler.pool_mask(anchors @ pool.T)
    assert mask is None or (mask.shape == (3, 200) and mask.dtype == torch.bool and bool(mask.any(dim=1).all()))
    loss = sampler.loss(torch.full((3,), 5.0), torch.zeros(3, 200), 0.5)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid samplers: nce, ring, ball, dcl, hcl, mochi"):
        sampler_class("rings")
    with pytest.raises(ValueError, match="sampler 'dcl' has no parameter w_out; its parameters: tau_plus"):
        build_sampler("dcl", w_out=0.2)
    with pytest.raises(ValueError, match="its parameters: none"):
        build_sampler("nce", tau_plus=0.2)
