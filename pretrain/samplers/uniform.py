"""NCE: negatives drawn uniformly (banks) or every pool entry (queues, batches), InfoNCE loss."""

from __future__ import annotations

from pretrain.samplers.base import NegativeSampler


class NCE(NegativeSampler):
    """The standard noise-contrastive negatives; everything is the base behaviour."""

    name = "nce"
