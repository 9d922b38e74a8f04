"""Paired comparison of two classifiers on the same test images (Ring vs NCE on one split).

McNemar's exact test uses only the discordant images (one right, the other wrong); the paired
bootstrap resamples images to give a 95% interval of the accuracy difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedDifference:
    n: int
    delta: float  # accuracy(a) - accuracy(b), percentage points
    ci95_low: float
    ci95_high: float
    only_a_right: int
    only_b_right: int
    p_value: float  # McNemar exact (two-sided binomial test on the discordant images)


def paired_difference(a_correct: np.ndarray, b_correct: np.ndarray, bootstrap: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """Compare per-image correctness (0/1 or 0/100 arrays over the same images, same order)."""
    a = np.asarray(a_correct, dtype=np.float64) > 0
    b = np.asarray(b_correct, dtype=np.float64) > 0
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired comparison needs two equally long 1-d arrays, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    difference = (a.astype(np.float64) - b.astype(np.float64)) * 100.0
    rng = np.random.default_rng(seed)
    means = np.empty(bootstrap)
    block = max(1, min(1000, 4_000_000 // a.size))  # keeps the index matrix small for large test sets
    for start in range(0, bootstrap, block):
        count = min(block, bootstrap - start)
        means[start:start + count] = difference[rng.integers(0, a.size, size=(count, a.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDifference(int(a.size), float(difference.mean()), float(low), float(high), only_a, only_b, p_value)
