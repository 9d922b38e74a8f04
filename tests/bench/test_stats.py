"""The numpy tail probabilities of bench.stats against scipy.special over wide grids."""

import numpy as np
import pytest
from scipy import special

from bench.stats import binomial_cdf_half, regularized_incomplete_beta, student_t_two_sided_p


def test_incomplete_beta_matches_scipy_over_a_grid():
    rng = np.random.default_rng(0)
    a = np.exp(rng.uniform(np.log(0.05), np.log(5000), 4000))
    b = np.exp(rng.uniform(np.log(0.05), np.log(5000), 4000))
    x = rng.uniform(0, 1, 4000)
    mine, expected = regularized_incomplete_beta(x, a, b), special.betainc(a, b, x)
    normal = expected > 1e-200  # deeper in the tail the two disagree in the third digit: no p-value lives there
    assert normal.mean() > 0.8
    np.testing.assert_allclose(mine[normal], expected[normal], rtol=1e-9)
    assert np.all(mine[~normal] < 1e-190)
    assert regularized_incomplete_beta(0.0, 2.0, 3.0) == 0.0 and regularized_incomplete_beta(1.0, 2.0, 3.0) == 1.0


@pytest.mark.parametrize("df", [1, 2, 3, 9, 29, 599, 9_999, 1_000_000])
def test_t_test_p_matches_scipy(df):
    t = np.concatenate([-np.logspace(-8, 2.5, 200), [0.0], np.logspace(-8, 2.5, 200)])
    expected = 2.0 * special.stdtr(df, -np.abs(t))
    mine = student_t_two_sided_p(t, np.full_like(t, df))
    relevant = expected > 1e-280  # below that both are 0 to double precision in any useful sense
    np.testing.assert_allclose(mine[relevant], expected[relevant], rtol=1e-8)
    assert mine[t.size // 2] == 1.0  # t = 0: no evidence at all
    assert np.isnan(student_t_two_sided_p(np.nan, 5.0))


def test_sign_test_tail_matches_scipy_exactly_enough():
    n = np.arange(0, 1201)
    for trials in (0, 1, 2, 7, 40, 600, 1200):
        k = np.arange(0, trials + 1)
        np.testing.assert_allclose(binomial_cdf_half(k, np.full_like(k, trials)), special.bdtr(k, trials, 0.5),
                                   rtol=1e-9, atol=1e-300)
    assert binomial_cdf_half(n, n).tolist() == [1.0] * n.size
    assert binomial_cdf_half(0, 1) == pytest.approx(0.5) and binomial_cdf_half(3, 10) == pytest.approx(176 / 1024)
