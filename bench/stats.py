"""The two tail probabilities behind the leaderboard's paired tests, in numpy alone.

scipy.special has both (stdtr, bdtr), but importing it takes about a quarter of a second: a tenth
of the budget for building a 10,000-cell leaderboard. Both reduce to the regularized incomplete beta
function, evaluated here by its continued fraction (modified Lentz); tests/bench/test_stats.py checks
every function against scipy.
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300
_EPS = 1e-15
_MAX_TERMS = 10_000  # terms grow like sqrt(max(a, b)): about 100 for a million samples


def _log_gamma(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.lgamma, 1, 1)(values).astype(float)


def _continued_fraction(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b); converges fast for x < (a + 1) / (a + b + 2)."""
    def guarded(values):
        return np.where(np.abs(values) < _TINY, _TINY, values)

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 / guarded(1.0 - qab * x / qap)
    h = d.copy()
    active = np.ones(x.shape, dtype=bool)  # an element stops at its own convergence: roundoff
    for m in range(1, _MAX_TERMS + 1):     # jitter must not keep another from stopping
        m2 = 2.0 * m
        step = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / guarded(1.0 + step * d)
        c = guarded(1.0 + step / c)
        first = d * c
        step = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / guarded(1.0 + step * d)
        c = guarded(1.0 + step / c)
        change = d * c
        h = np.where(active, h * first * change, h)
        active &= ~(np.abs(change - 1.0) < _EPS)
        if not active.any():
            return h
    raise ArithmeticError(f"incomplete beta: no convergence in {_MAX_TERMS} terms")


def regularized_incomplete_beta(x, a, b, one_minus_x=None) -> np.ndarray:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1, elementwise (broadcast). `one_minus_x`, when the caller
    has it more exactly than 1 - x (x close to 1), keeps the upper tail's precision."""
    y = 1.0 - np.asarray(x, dtype=float) if one_minus_x is None else one_minus_x
    x, y, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, y, a, b)))
    out = np.where(y <= 0.0, 1.0, 0.0)  # the ends; the interior below
    inside = (x > 0.0) & (y > 0.0)
    if not inside.any():
        return out
    x, y, a, b = x[inside], y[inside], a[inside], b[inside]
    flip = x > (a + 1.0) / (a + b + 2.0)  # I_x(a, b) = 1 - I_{1-x}(b, a) where that converges faster
    xs, ys = np.where(flip, y, x), np.where(flip, x, y)
    as_, bs = np.where(flip, b, a), np.where(flip, a, b)
    log_front = (_log_gamma(as_ + bs) - _log_gamma(as_) - _log_gamma(bs)
                 + as_ * np.log(xs) + bs * np.log(ys))
    value = np.exp(log_front) * _continued_fraction(xs, as_, bs) / as_
    out[inside] = np.where(flip, 1.0 - value, value)
    return out


def student_t_two_sided_p(t, df) -> np.ndarray:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (scipy: 2 * stdtr(df, -|t|))."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=float), np.asarray(df, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = np.where(np.isinf(t), 0.0, df / (df + t * t))
        y = np.where(np.isinf(t), 1.0, t * t / (df + t * t))  # 1 - x, exact for small t
    p = regularized_incomplete_beta(np.nan_to_num(x), df / 2.0, np.full_like(df, 0.5), np.nan_to_num(y, nan=1.0))
    return np.where(np.isnan(t), np.nan, p)


def binomial_cdf_half(k, n) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, 1/2), integer 0 <= k <= n (scipy: bdtr(k, n, 0.5))."""
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    below = k < n
    out = np.ones(k.shape)
    if below.any():  # P(X <= k) = I_{1/2}(n - k, k + 1)
        out[below] = regularized_incomplete_beta(np.full(int(below.sum()), 0.5), n[below] - k[below], k[below] + 1.0)
    return out
