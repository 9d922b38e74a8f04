import torch

from pretrain.losses import info_nce_loss
from pretrain.samplers import build_sampler


def test_nce_keeps_every_pool_entry_and_uses_info_nce():
    sampler = build_sampler("nce")
    similarity = torch.randn(4, 30)
    assert sampler.pool_mask(similarity) is None and sampler.metadata() == {}
    assert sampler.epoch_record() == {"w_out": None} and not sampler.needs_queue
    pos, neg = torch.randn(4), torch.randn(4, 30)
    assert torch.equal(sampler.loss(pos, neg, 0.1), info_nce_loss(pos, neg))


def test_nce_bank_draws_are_the_uniform_draws_of_its_generator():
    anchors, bank = torch.randn(5, 8), torch.randn(100, 8)
    drawn = build_sampler("nce").bank_indices(anchors, bank, 7, torch.Generator().manual_seed(9))
    assert torch.equal(drawn, torch.randint(0, 100, (5, 7), generator=torch.Generator().manual_seed(9)))
