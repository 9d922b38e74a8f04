"""Negative selection as pure functions over an anchor x pool similarity matrix.

Conventions: `similarity` is (B, M), row b = anchor b against the M pool candidates; rank 0 is the
most similar candidate. The ring keeps ranks [floor(w_in * floor(w_out * M)), floor(w_out * M)):
`w_out` is the outer (far) cut as a fraction of the pool, `w_in` the inner (near) cut as a fraction
of the kept outer set (the official code's "dynamic inner" cut). The ball is the ring with w_in = 0.

Thresholds come from `torch.topk` on the smaller side of each cut (never a full sort), so selection
costs about one partial selection plus a comparison pass over the pool. Ties at a cut are resolved by
value: candidates tied with the inner boundary value are dropped, tied with the outer one kept.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from pretrain.bands import check_band as check_band  # the band rule, torch-free; re-exported here
from pretrain.bands import ring_bounds as ring_bounds


def _generator_device(generator: torch.Generator | None, device) -> torch.device:
    """Where to draw: on the generator's own device (the training loop keeps one CPU generator so its
    state is device-independent), then move the draws to `device`."""
    return generator.device if generator is not None else torch.device(device)


def _randint(high: int, shape: tuple, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=_generator_device(generator, device)).to(device)


def _rand(shape: tuple, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_generator_device(generator, device)).to(device)


def value_at_rank(similarity: torch.Tensor, rank: int) -> torch.Tensor:
    """(B,) similarity of each row's candidate at `rank` (0 = most similar), via topk on the smaller side."""
    pool_size = similarity.shape[1]
    if not 0 <= rank < pool_size:
        raise ValueError(f"rank {rank} outside a pool of {pool_size}")
    if rank + 1 <= pool_size - rank:
        return similarity.topk(rank + 1, dim=1, largest=True, sorted=False).values.min(dim=1).values
    return similarity.topk(pool_size - rank, dim=1, largest=False, sorted=False).values.max(dim=1).values


def ring_mask(similarity: torch.Tensor, w_out: float, w_in: float) -> torch.Tensor:
    """Bool (B, M): True where the candidate's similarity rank lies in the ring [lower, upper)."""
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (anchors, pool), got shape {tuple(similarity.shape)}")
    lower, upper = ring_bounds(similarity.shape[1], w_out, w_in)
    similarity = similarity.detach()
    if upper == 0:
        return torch.zeros_like(similarity, dtype=torch.bool)
    if upper < similarity.shape[1]:
        mask = similarity >= value_at_rank(similarity, upper - 1).unsqueeze(1)
    else:
        mask = torch.ones_like(similarity, dtype=torch.bool)
    if lower > 0:
        mask &= similarity < value_at_rank(similarity, lower - 1).unsqueeze(1)
    return mask


def ball_mask(similarity: torch.Tensor, w_out: float) -> torch.Tensor:
    """Bool (B, M): True for the `floor(w_out * M)` most similar candidates (the ring without inner cut)."""
    return ring_mask(similarity, w_out, 0.0)


def uniform_indices(num_anchors: int, pool_size: int, k: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, k) pool indices drawn uniformly with replacement (the NCE noise distribution for banks)."""
    if pool_size < 1:
        raise ValueError("cannot sample negatives from an empty pool")
    return _randint(pool_size, (num_anchors, k), generator, device)


def sampled_band_thresholds(similarity: torch.Tensor, w_out: float, w_in: float, sample_size: int,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outer, inner) per-row thresholds estimated from `sample_size` random pool columns.

    The band is then `outer <= s < inner`. Quantiles of a uniform column subsample are off by about
    sqrt(q (1 - q) / sample_size) of the pool (0.5% of the pool for q = 0.1 and 4,096 columns), for a
    cost of one small sort instead of a partial selection over the whole pool.
    """
    lower, upper = ring_bounds(similarity.shape[1], w_out, w_in)
    columns = _randint(similarity.shape[1], (sample_size,), generator, similarity.device)
    ordered = similarity.index_select(1, columns).sort(dim=1, descending=True).values
    infinite = torch.full((similarity.shape[0],), float("inf"), device=similarity.device, dtype=similarity.dtype)
    pool_size = similarity.shape[1]

    def at(rank: int) -> torch.Tensor:
        position = min(sample_size - 1, int(rank * sample_size / pool_size))
        return ordered[:, position]

    outer = -infinite if upper >= pool_size else at(upper - 1)
    inner = infinite if lower == 0 else at(lower)
    return outer, inner


def sample_from_mask(mask: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, k) column indices drawn uniformly with replacement among each row's True entries."""
    found = mask.nonzero()
    counts = torch.bincount(found[:, 0], minlength=mask.shape[0])
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"anchor {row} has an empty negative band; widen w_out or grow the pool")
    columns = found[:, 1]
    offsets = torch.cumsum(counts, dim=0) - counts
    uniform = _rand((mask.shape[0], k), generator, mask.device)
    position = (uniform * counts.unsqueeze(1)).long().clamp_max(counts.unsqueeze(1) - 1)
    return columns[offsets.unsqueeze(1) + position]


def mochi_negatives(
    query: torch.Tensor,
    pool: torch.Tensor,
    similarity: torch.Tensor,
    num_hardest: int,
    num_mixed: int,
    num_query_mixed: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MoCHi synthetic negatives (B, num_mixed + num_query_mixed, D), detached and L2-normalised.

    Per query take the `num_hardest` most similar pool entries; type 1 mixes two of them with
    alpha ~ U(0, 1), type 2 mixes the (detached) query into one with beta ~ U(0, 0.5).
    """
    if pool.shape[0] == 0:
        raise ValueError("mochi needs a non-empty queue of negatives")
    query = F.normalize(query.detach().float(), dim=1)
    pool = pool.detach().float()
    batch = query.shape[0]
    num_hardest = max(1, min(num_hardest, pool.shape[0]))
    hardest = similarity.detach().topk(num_hardest, dim=1).indices  # (B, N)
    hard = pool[hardest]  # (B, N, D)
    parts = []
    if num_mixed > 0:
        pick = _randint(num_hardest, (batch, num_mixed, 2), generator, query.device)
        first = torch.gather(hard, 1, pick[..., 0:1].expand(-1, -1, hard.shape[2]))
        second = torch.gather(hard, 1, pick[..., 1:2].expand(-1, -1, hard.shape[2]))
        alpha = _rand((batch, num_mixed, 1), generator, query.device)
        parts.append(F.normalize(alpha * first + (1 - alpha) * second, dim=2))
    if num_query_mixed > 0:
        pick = _randint(num_hardest, (batch, num_query_mixed, 1), generator, query.device)
        chosen = torch.gather(hard, 1, pick.expand(-1, -1, hard.shape[2]))
        beta = 0.5 * _rand((batch, num_query_mixed, 1), generator, query.device)
        parts.append(F.normalize(beta * query.unsqueeze(1) + (1 - beta) * chosen, dim=2))
    if not parts:
        return query.new_zeros(batch, 0, query.shape[1])
    return torch.cat(parts, dim=1)


def _draw_in_band(values: torch.Tensor, outer: torch.Tensor | None, inner: torch.Tensor | None, k: int,
                  accept_rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, k) uniform column draws with outer <= value < inner, by rejection; rows left short use a mask."""
    rows, width = values.shape
    draws = math.ceil(1.1 * k / max(accept_rate, 1e-6)) + 64  # >= 8 standard deviations of spare draws at K = 4096
    candidates = _randint(width, (rows, draws), generator, values.device)
    drawn = torch.gather(values, 1, candidates)
    accept = torch.ones_like(drawn, dtype=torch.bool)
    if outer is not None:
        accept &= drawn >= outer.unsqueeze(1)
    if inner is not None:
        accept &= drawn < inner.unsqueeze(1)
    order = accept.cumsum(dim=1, dtype=torch.int32)
    enough = order[:, -1] >= k
    result = torch.empty(rows, k, dtype=torch.long, device=values.device)
    if bool(enough.any()):
        result[enough] = candidates[enough][(accept & (order <= k))[enough]].view(-1, k)
    if not bool(enough.all()):  # rare: too few accepted draws; scan those rows
        short = (~enough).nonzero().flatten()
        mask = torch.ones_like(values[short], dtype=torch.bool)
        if outer is not None:
            mask &= values[short] >= outer[short].unsqueeze(1)
        if inner is not None:
            mask &= values[short] < inner[short].unsqueeze(1)
        result[short] = sample_from_mask(mask, k, generator)
    return result


def sample_band(similarity: torch.Tensor, w_out: float, w_in: float, k: int,
                generator: torch.Generator | None = None, threshold_sample: int = 0) -> torch.Tensor:
    """(B, k) pool indices drawn uniformly with replacement from each row's ring, never a full sort.

    Narrow bands (outer cut <= a quarter of the pool): one `topk(upper)` gives the exact outer set and
    the inner cut is a small topk inside it. Wide bands: thresholds at the two cuts (exact
    `value_at_rank`, or estimated from `threshold_sample` columns when > 0). Either way the draws are
    uniform positions accepted when inside the band (rejection sampling), so no B x M index list is built.
    """
    pool_size = similarity.shape[1]
    lower, upper = ring_bounds(pool_size, w_out, w_in)
    if upper == 0:
        raise ValueError(f"the band is empty for a pool of {pool_size} (w_out={w_out}); widen w_out or grow the pool")
    sampled = 0 < threshold_sample and 4 * threshold_sample <= pool_size
    if sampled:
        outer, inner = sampled_band_thresholds(similarity, w_out, w_in, threshold_sample, generator)
        outer = None if bool(torch.isinf(outer).all()) else outer
        inner = None if bool(torch.isinf(inner).all()) else inner
        if (upper - lower) / pool_size >= 0.25:
            return _draw_in_band(similarity, outer, inner, k, (upper - lower) / pool_size, generator)
        mask = similarity >= outer.unsqueeze(1) if outer is not None else torch.ones_like(similarity, dtype=torch.bool)
        if inner is not None:
            mask &= similarity < inner.unsqueeze(1)
        return sample_from_mask(mask, k, generator)
    if upper <= pool_size // 4:
        values, columns = similarity.topk(upper, dim=1, sorted=False)
        inner = values.topk(lower, dim=1, sorted=False).values.min(dim=1).values if lower > 0 else None
        positions = _draw_in_band(values, None, inner, k, (upper - lower) / upper, generator)
        return torch.gather(columns, 1, positions)
    outer = value_at_rank(similarity, upper - 1) if upper < pool_size else None
    inner = value_at_rank(similarity, lower - 1) if lower > 0 else None
    return _draw_in_band(similarity, outer, inner, k, (upper - lower) / pool_size, generator)
