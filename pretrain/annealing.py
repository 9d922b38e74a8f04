"""Ring annealing: the outer cut w_out as a pure function of the epoch.

constant  w_out = target from the first epoch (the released configs' fixed ring)
linear    w_out falls linearly from 1.0 at epoch 0 to the target at `anneal_epochs`, then stays
step      w_out falls from 1.0 to the target in `anneal_steps` equal drops spread over `anneal_epochs`
"""

from __future__ import annotations

import math

ANNEAL_POLICIES = ("constant", "linear", "step")


def check_policy(policy: str) -> str:
    if policy not in ANNEAL_POLICIES:
        raise ValueError(f"unknown anneal policy {policy!r}; valid policies: {', '.join(ANNEAL_POLICIES)}")
    return policy


def outer_fraction(policy: str, target: float, epoch: int, anneal_epochs: int, anneal_steps: int = 4) -> float:
    """w_out to use during `epoch` (0-based)."""
    check_policy(policy)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target w_out must lie in (0, 1], got {target}")
    if policy == "constant" or anneal_epochs <= 0:
        return target
    progress = min(1.0, max(0, epoch) / anneal_epochs)
    if policy == "step":
        if anneal_steps < 1:
            raise ValueError(f"anneal_steps must be >= 1, got {anneal_steps}")
        progress = math.floor(progress * anneal_steps) / anneal_steps
    return 1.0 - (1.0 - target) * progress
