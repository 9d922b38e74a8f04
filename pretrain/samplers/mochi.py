"""MoCHi (Kalantidis et al. 2020): synthetic hard negatives mixed from a MoCo queue's hardest entries."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.samplers.base import NegativeSampler
from pretrain.samplers.selection import mochi_negatives


@dataclass(frozen=True)
class MoCHiParams:
    hardest: int = 1024  # N: the hardest queue entries per query that are mixed
    mixed: int = 512  # s: negatives mixed from two hard ones
    query_mixed: int = 256  # s': negatives mixed from the query and a hard one


class MoCHi(NegativeSampler):
    name = "mochi"
    Params = MoCHiParams
    needs_queue = True
    synthesises_negatives = True

    def validate(self):
        for key in ("hardest", "mixed", "query_mixed"):
            value = getattr(self.params, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"mochi {key} must be an integer >= 0, got {value!r}")

    def extra_negatives(self, query, pool, similarity, generator):
        return mochi_negatives(query, pool, similarity, self.params.hardest, self.params.mixed,
                               self.params.query_mixed, generator)
