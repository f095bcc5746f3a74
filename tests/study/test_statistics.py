"""moelab/study/statistics.py against scipy.stats (Student t, confidence intervals, paired tests)."""
import numpy as np
import pytest
import scipy.stats

from moelab.study import statistics


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 14, 40])
def test_t_distribution_matches_scipy(dof):
    for t in (-8.0, -2.5, -0.3, 0.0, 0.7, 2.1, 12.0):
        assert statistics.t_cdf(t, dof) == pytest.approx(scipy.stats.t.cdf(t, dof), abs=1e-12)
    for p in (0.005, 0.05, 0.5, 0.9, 0.975, 0.995):
        assert statistics.t_quantile(p, dof) == pytest.approx(scipy.stats.t.ppf(p, dof), abs=1e-9)


def test_regularized_beta_matches_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 7.5, 0.1), (10.0, 0.5, 0.95), (1.0, 1.0, 0.42), (30.0, 40.0, 0.44)]:
        assert statistics.regularized_beta(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), abs=1e-12)


def test_confidence_interval_is_scipys_t_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 15):
        values = rng.normal(0.96, 0.002, n)
        low, high = scipy.stats.t.interval(0.95, n - 1, loc=values.mean(), scale=scipy.stats.sem(values))
        assert statistics.ci_half_width(values) == pytest.approx((high - low) / 2, rel=1e-9)
    assert np.isnan(statistics.ci_half_width([0.5]))


def test_paired_difference_is_scipys_paired_t_test():
    rng = np.random.default_rng(1)
    a = rng.normal(0.97, 0.003, 5)
    b = a - 0.004 + rng.normal(0, 0.001, 5)
    result = statistics.paired_difference(a, b)
    test = scipy.stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(test.pvalue, rel=1e-8)
    low, high = test.confidence_interval(0.95)
    assert (result.low, result.high) == (pytest.approx(low, rel=1e-8), pytest.approx(high, rel=1e-8))
    assert result.mean == pytest.approx(np.mean(a - b)) and result.n == 5 and not result.within_noise()
    assert statistics.paired_difference(a, a).within_noise()
    with pytest.raises(ValueError, match="same length"):
        statistics.paired_difference(a, b[:3])
