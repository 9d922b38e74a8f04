"""Which sampler each registered negative sampler is compared with (its baseline twin, same method and
settings; None for a baseline), importable without torch: the leaderboard pairs results by it.

The registry (pretrain.samplers.SAMPLER_CLASSES) gives each class its `baseline_twin` from this table, and a
test keeps the two registries' names equal. A new sampler is one class, one registry line, one line here.
"""

from __future__ import annotations

BASELINE_TWINS: dict[str, str | None] = {
    "nce": None,
    "ring": "nce",
    "ball": "nce",
    "dcl": "nce",
    "hcl": "nce",
    "mochi": "nce",
}
