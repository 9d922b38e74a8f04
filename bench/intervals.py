"""The 95% intervals and tests of the leaderboards, one rule for each (docs/statistics.md).

- A mean over a few runs (seeds, pretraining seeds, categories, test images) gets Student's t:
  t(0.975, n - 1) * sd / sqrt(n), sd with ddof = 1. With 3 seeds the normal quantile 1.96 gives an
  interval 2.2 times too narrow.
- A Meta-Dataset mean over episodes keeps the field's convention, 1.96 * population sd / sqrt(n)
  (n = 600 episodes: it differs from the t interval by a fraction of a percent).
- A paired comparison reports the paired t-test's p-value and that same test's interval, so the
  interval excludes 0 exactly when p < 0.05; the exact sign test and the Holm-corrected p-value
  (over every comparison of one table) stand beside it.
- One value (n = 1) has no interval: NaN here, "no interval (n = 1)" where a person reads it.

scipy.stats is imported on first use: a leaderboard without intervals never pays for it.
"""

from __future__ import annotations

import numpy as np

STUDENT_T = "student_t"
EPISODE_CONVENTION = "normal"  # Meta-Dataset's 1.96 * population sd / sqrt(episodes)
SAMPLE_INTERVALS = (STUDENT_T, EPISODE_CONVENTION)
NORMAL_QUANTILE = 1.96
NO_INTERVAL = "no interval (n = 1)"


def t_quantile(n) -> np.ndarray:
    """t(0.975, n - 1): the 95% two-sided quantile for a mean of n values; NaN for n < 2."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)


def t_half_width(sd, n) -> np.ndarray:
    """Half-width of the 95% Student-t interval of a mean of n values with sample sd (ddof = 1)."""
    sd, n = np.asarray(sd, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, t_quantile(n) * sd / np.sqrt(n), np.nan)


def half_width_from_population_std(std, n, interval: str = STUDENT_T) -> np.ndarray:
    """The 95% half-width of a mean of n values from their population sd (ddof = 0, what a Metric
    and an aggregated row store): Student's t, or with EPISODE_CONVENTION the normal 1.96 * std / sqrt(n)."""
    if interval not in SAMPLE_INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; expected one of {', '.join(SAMPLE_INTERVALS)}")
    std, n = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if interval == EPISODE_CONVENTION:
            return np.where(n >= 2, NORMAL_QUANTILE * std / np.sqrt(n), np.nan)
        return t_half_width(std * np.sqrt(n / np.maximum(n - 1, 1)), n)  # sd(ddof=1) from sd(ddof=0)


def paired_t_p(mean, sd, n) -> np.ndarray:
    """Two-sided one-sample t-test of the paired differences (mean, sd with ddof = 1, count); the
    interval t_half_width(sd, n) excludes 0 exactly when this is below 0.05. No spread: p = 1 for no
    difference, 0 for a constant non-zero shift (its interval is the point itself); NaN for n < 2."""
    from scipy import stats

    mean, sd, n = (np.asarray(a, dtype=float) for a in (mean, sd, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
        p = 2.0 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1))
    p = np.where(sd == 0, np.where(mean == 0, 1.0, 0.0), p)
    return np.where(n >= 2, p, np.nan)


def sign_test_p(positives, trials) -> np.ndarray:
    """Two-sided exact sign test: scipy.stats.binomtest(k, m, 0.5).pvalue, vectorised as twice the
    smaller binomial tail (the two tails are mirror images at 1/2), capped at 1; 1 for no trials."""
    from scipy import stats

    positives, trials = np.broadcast_arrays(np.asarray(positives, dtype=float), np.asarray(trials, dtype=float))
    smaller = np.minimum(positives, trials - positives)
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(smaller, trials, 0.5))
    return np.where(trials > 0, p, 1.0)


def holm(p_values) -> np.ndarray:
    """Holm's step-down correction over one family of p-values (scipy has none; statsmodels'
    multipletests(method="holm") gives the same): the i-th smallest of m becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)). NaN stays NaN and is not counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    if present.size:
        order = present[np.argsort(p[present], kind="stable")]
        scaled = (present.size - np.arange(present.size)) * p[order]
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out
