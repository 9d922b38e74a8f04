"""Property tests of the exact ring selection against a full-sort reference, ties included."""

import math

import pytest
import torch

from pretrain.samplers import ring_bounds, ring_mask, sample_band


def full_sort_band(similarity: torch.Tensor, w_out: float, w_in: float) -> torch.Tensor:
    """The band by the full sort's cut values: s >= value at rank upper-1 and s < value at rank lower-1."""
    lower, upper = ring_bounds(similarity.shape[1], w_out, w_in)
    ordered = similarity.sort(dim=1, descending=True).values
    band = similarity >= ordered[:, upper - 1:upper]
    if lower > 0:
        band &= similarity < ordered[:, lower - 1:lower]
    return band


def random_case(seed: int, ties: bool):
    generator = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 6, (), generator=generator))
    pool = int(torch.randint(20, 3000, (), generator=generator))
    w_out = float(torch.empty(()).uniform_(0.05, 1.0, generator=generator))
    w_in = float(torch.empty(()).uniform_(0.0, 0.9, generator=generator))
    if ties:  # few distinct values: many candidates tie at each cut
        similarity = torch.randint(0, 7, (rows, pool), generator=generator).float() / 7
    else:
        similarity = torch.randn(rows, pool, generator=generator)
    return similarity, w_out, w_in


@pytest.mark.parametrize("seed", range(40))
def test_ring_mask_equals_the_full_sort_band(seed):
    similarity, w_out, w_in = random_case(seed, ties=False)
    lower, upper = ring_bounds(similarity.shape[1], w_out, w_in)
    if upper == 0:
        return
    mask = ring_mask(similarity, w_out, w_in)
    ranks = similarity.argsort(dim=1, descending=True).argsort(dim=1)
    assert torch.equal(mask, (ranks >= lower) & (ranks < upper))  # no ties: exactly the rank band
    assert torch.equal(mask, full_sort_band(similarity, w_out, w_in))


@pytest.mark.parametrize("seed", range(40))
def test_ring_mask_with_ties_follows_the_value_rule(seed):
    similarity, w_out, w_in = random_case(seed, ties=True)
    if ring_bounds(similarity.shape[1], w_out, w_in)[1] == 0:
        return
    assert torch.equal(ring_mask(similarity, w_out, w_in), full_sort_band(similarity, w_out, w_in))


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("ties", [False, True])
def test_sample_band_draws_only_inside_the_full_sort_band(seed, ties):
    similarity, w_out, w_in = random_case(seed, ties)
    lower, upper = ring_bounds(similarity.shape[1], w_out, w_in)
    band = full_sort_band(similarity, w_out, w_in)
    if upper == 0 or not bool(band.any(dim=1).all()):
        return
    drawn = sample_band(similarity, w_out, w_in, 256, torch.Generator().manual_seed(seed))
    assert drawn.shape == (similarity.shape[0], 256)
    assert bool(torch.gather(band, 1, drawn).all())
    if not ties:  # the draw covers the band: some of its top and bottom tenth show up
        ranks = torch.gather(similarity.argsort(dim=1, descending=True).argsort(dim=1), 1, drawn)
        width = upper - lower
        if width >= 50:
            assert int(ranks.min()) < lower + math.ceil(0.1 * width) and int(ranks.max()) >= upper - math.ceil(0.1 * width)
