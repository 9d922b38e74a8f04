"""The ring's band rule as plain arithmetic (no torch), shared by the samplers and by planning code that
must not import torch (the estimator study's options): which ranks [lower, upper) of a pool the band keeps.

    check_band(0.1, 0.1)         # fine; check_band(0.0, 0.1) raises ValueError
    ring_bounds(1000, 0.1, 0.1)  # (10, 100)
"""

from __future__ import annotations

import math


def check_band(w_out: float, w_in: float = 0.0) -> None:
    """Raise ValueError unless 0 <= w_in < 1 and 0 < w_out <= 1 (so the band's lower end < upper end)."""
    for name, value in (("w_out", w_out), ("w_in", w_in)):
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if w_out <= 0.0 or w_in >= 1.0:
        raise ValueError(
            f"ring band is empty: lower percentile w_in*w_out = {w_in * w_out:g} must be below "
            f"upper percentile w_out = {w_out:g} (need w_out > 0 and w_in < 1)"
        )


def ring_bounds(pool_size: int, w_out: float, w_in: float = 0.0) -> tuple[int, int]:
    """(lower, upper) rank bounds of the ring for a pool of `pool_size` candidates: ranks [lower, upper)."""
    check_band(w_out, w_in)
    upper = math.floor(w_out * pool_size)
    lower = math.floor(w_in * upper)
    return lower, upper
