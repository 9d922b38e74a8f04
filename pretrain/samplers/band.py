"""Ring and ball negatives (Wu et al. 2021, "Conditional Negative Sampling"): keep the candidates whose
similarity rank to the anchor lies in a band, with the outer cut annealed from the whole pool to its target.

Usage:
    ring = Ring(RingParams(w_out=0.1, w_in=0.1, anneal="linear"), epochs=10)
    ring.set_epoch(3)                      # w_out follows the schedule
    mask = ring.pool_mask(query @ queue.T)  # (B, M) True inside the band
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from pretrain.annealing import check_policy, outer_fraction
from pretrain.samplers.base import NegativeSampler
from pretrain.samplers.selection import check_band, ring_mask, sample_band


class BandWarning(UserWarning):
    """The ring holds fewer candidates than the number of negatives drawn from it."""


@dataclass(frozen=True)
class RingParams:
    w_out: float = 0.1  # target outer cut, a fraction of the pool
    w_in: float = 0.1  # inner cut, a fraction of the kept outer set
    anneal: str = "linear"  # constant | linear | step (pretrain.annealing)
    anneal_epochs: int = -1  # -1: half of the epochs
    anneal_steps: int = 4


@dataclass(frozen=True)
class BallParams:
    w_out: float = 0.1
    anneal: str = "linear"
    anneal_epochs: int = -1
    anneal_steps: int = 4


class Ring(NegativeSampler):
    """Negatives in the similarity-rank band [w_in * w_out * M, w_out * M) of a pool of M."""

    name = "ring"
    Params = RingParams

    @property
    def inner_cut(self) -> float:
        return self.params.w_in

    def validate(self):
        check_band(self.params.w_out, self.inner_cut)
        check_policy(self.params.anneal)
        if self.params.anneal == "step" and self.params.anneal_steps < 1:
            raise ValueError(f"anneal_steps must be >= 1, got {self.params.anneal_steps}")
        self._warned_small_band = False

    @property
    def anneal_epochs(self) -> int:
        """The annealing length in epochs (-1 resolves to half of the run)."""
        return self.epochs // 2 if self.params.anneal_epochs < 0 else self.params.anneal_epochs

    def w_out_at(self, epoch: int) -> float:
        params = self.params
        return outer_fraction(params.anneal, params.w_out, epoch, self.anneal_epochs, params.anneal_steps)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.w_out = self.w_out_at(epoch)

    @property
    def band(self) -> tuple[float, float]:
        return self.w_out, self.inner_cut

    def epoch_record(self):
        return {"w_out": self.w_out}

    def band_params(self) -> dict:
        return {"w_out": self.params.w_out, "w_in": self.params.w_in}

    def metadata(self):
        return self.band_params() | {"anneal": self.params.anneal, "anneal_epochs": self.anneal_epochs,
                                     "anneal_steps": self.params.anneal_steps,
                                     "w_out_final": self.w_out_at(self.epochs - 1)}

    def bank_indices(self, anchors, bank, num_negatives, generator=None, similarity=None, threshold_sample=0):
        pool_size = bank.shape[0]
        upper = math.floor(self.w_out * pool_size)
        lower = math.floor(self.inner_cut * upper)
        if upper - lower < num_negatives and not self._warned_small_band:
            warnings.warn(
                f"{self.name} band holds {upper - lower} of {pool_size} bank entries, fewer than "
                f"K={num_negatives} negatives: sampling with replacement",
                BandWarning,
                stacklevel=3,
            )
            self._warned_small_band = True
        with torch.no_grad():
            if similarity is None:
                similarity = anchors.detach().float() @ bank.float().T
            return sample_band(similarity, self.w_out, self.inner_cut, num_negatives, generator, threshold_sample)

    def pool_mask(self, similarity):
        return ring_mask(similarity, self.w_out, self.inner_cut)


class Ball(Ring):
    """The ring without its inner cut: the floor(w_out * M) most similar candidates."""

    name = "ball"
    Params = BallParams

    @property
    def inner_cut(self) -> float:
        return 0.0

    def band_params(self):
        return {"w_out": self.params.w_out}
