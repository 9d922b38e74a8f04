import pytest
import torch

from pretrain.samplers import build_sampler


def test_ball_keeps_the_most_similar_fraction():
    ball = build_sampler("ball", epochs=2, w_out=0.25, anneal="constant")
    similarity = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    mask = ball.pool_mask(similarity)
    top = similarity.topk(10, dim=1).indices
    assert bool((mask.sum(dim=1) == 10).all()) and bool(mask.gather(1, top).all())
    assert ball.metadata() == {"w_out": 0.25, "anneal": "constant", "anneal_epochs": 1, "anneal_steps": 4,
                               "w_out_final": 0.25}


def test_ball_has_no_inner_cut():
    with pytest.raises(ValueError, match="sampler 'ball' has no parameter w_in"):
        build_sampler("ball", w_in=0.1)
