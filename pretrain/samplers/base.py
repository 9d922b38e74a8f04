"""The negative-sampler interface every registered sampler implements.

A sampler is built once per training run from its typed parameters (a frozen dataclass, `Params`),
checks them in `__init__`, follows the epoch through `set_epoch` (its own annealing, if any) and
answers the methods' questions: which bank entries to contrast against (`bank_indices`), which pool
entries to keep (`pool_mask`), extra synthetic negatives (`extra_negatives`) and the loss over the
selected negatives (`loss`). Methods never look at a sampler's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from pretrain.losses import info_nce_loss
from pretrain.samplers.selection import uniform_indices


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A sampler without parameters."""


class NegativeSampler:
    """Uniform negatives and the InfoNCE loss; subclasses override what they change."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    needs_queue: ClassVar[bool] = False  # draws on a queue of past keys (only methods with a queue can host it)
    # The sampler a run of this one is compared against, same method and settings (the leaderboard's paired
    # rows, e.g. Ring - NCE); None for a baseline itself. Set by the registry from pretrain.sampler_twins.
    baseline_twin: ClassVar[str | None] = None
    synthesises_negatives: ClassVar[bool] = False  # adds negatives that are not pool entries (extra_negatives)

    @classmethod
    def hard_negative(cls) -> bool:
        """Whether the sampler changes NCE's negatives or their weights (it then has a baseline twin)."""
        return cls.baseline_twin is not None

    @property
    def band(self) -> tuple[float, float] | None:
        """(w_out, w_in) of the similarity-rank band the negatives are drawn from at this epoch; None: the whole pool."""
        return None

    @property
    def tilt(self) -> float | None:
        """beta when negatives are reweighted by exp(beta * score) (hardness concentration); None: equal weights."""
        return None

    @property
    def class_prior(self) -> float | None:
        """tau+ when the loss corrects for negatives of the anchor's class (debiasing); None: no correction."""
        return None

    def __init__(self, params: Any = None, epochs: int = 1):
        """`epochs`: the run's length, for samplers whose schedule is a fraction of it."""
        self.params = self.Params() if params is None else params
        if not isinstance(self.params, self.Params):
            raise TypeError(f"sampler {self.name!r} takes {self.Params.__name__}, got {type(self.params).__name__}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs = epochs
        self.validate()
        self.set_epoch(0)

    def validate(self) -> None:
        """Raise ValueError naming the bad parameter; called once, in __init__."""

    def set_epoch(self, epoch: int) -> None:
        """Follow the training epoch (0-based); annealed samplers update their schedule here."""
        self.epoch = epoch

    def epoch_record(self) -> dict:
        """What the metrics log records about the sampler for the current epoch."""
        return {"w_out": None}

    def metadata(self) -> dict:
        """The parameters written into the encoder checkpoint (`sampler_params`)."""
        return dataclasses.asdict(self.params)

    def bank_indices(self, anchors: torch.Tensor, bank: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None, similarity: torch.Tensor | None = None,
                     threshold_sample: int = 0) -> torch.Tensor:
        """(B, K) memory-bank indices of each anchor's negatives; `similarity` (anchors x bank, any
        positive scale) spares a matmul when the caller has it."""
        return uniform_indices(anchors.shape[0], bank.shape[0], num_negatives, generator, anchors.device)

    def pool_mask(self, similarity: torch.Tensor) -> torch.Tensor | None:
        """For queue/batch pools (every candidate scored): bool (B, M) of the negatives to keep, or None for all."""
        return None

    def extra_negatives(self, query: torch.Tensor, pool: torch.Tensor, similarity: torch.Tensor,
                        generator: torch.Generator | None) -> torch.Tensor | None:
        """(B, S, D) synthetic negatives to append to the pool's, or None."""
        return None

    def loss(self, pos_logits: torch.Tensor, neg_logits: torch.Tensor, temperature: float,
             neg_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss over already selected negatives (logits are similarities / temperature)."""
        return info_nce_loss(pos_logits, neg_logits, neg_mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params}, epoch={self.epoch})"
