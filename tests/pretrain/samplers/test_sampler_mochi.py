import pytest
import torch

from pretrain.methods import MethodSettings, build_method
from pretrain.samplers import build_sampler


def test_mochi_mixes_unit_norm_negatives_from_the_queue():
    mochi = build_sampler("mochi", hardest=5, mixed=3, query_mixed=2)
    assert mochi.needs_queue and mochi.metadata() == {"hardest": 5, "mixed": 3, "query_mixed": 2}
    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=1)
    extra = mochi.extra_negatives(query, queue, query @ queue.T, generator)
    assert extra.shape == (4, 5, 8) and torch.allclose(extra.norm(dim=2), torch.ones(4, 5), atol=1e-5)


def test_mochi_needs_a_method_with_a_queue():
    with pytest.raises(ValueError, match="sampler 'mochi' draws on a queue.*method 'ir' has no queue.*method=moco"):
        build_method("ir", MethodSettings(), build_sampler("mochi"), 8)


def test_negative_counts_fail_at_construction():
    with pytest.raises(ValueError, match="mochi mixed must be an integer >= 0"):
        build_sampler("mochi", mixed=-1)
