"""Statistics of the study over seeds: confidence intervals and paired comparisons (pure functions).

The Student t distribution is computed here (regularised incomplete beta function by its
continued fraction, Numerical Recipes 6.4; quantiles by bisection) so that the study needs no
statistics package; tests/study/test_statistics.py checks every function against scipy.stats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    # P(|T| > |t|) = I_x(dof/2, 1/2) with x = dof / (dof + t^2) = 1 - I_y(1/2, dof/2), y = t^2 / (dof + t^2):
    # near t = 0 the second form keeps its precision (1 - x would be rounded away).
    y = t * t / (dof + t * t)
    tail = 0.5 * (regularized_beta(dof / 2.0, 0.5, 1.0 - y) if y > 0.5 else 1.0 - regularized_beta(0.5, dof / 2.0, y))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = -1.0, 1.0
    while t_cdf(low, dof) > p:
        low *= 2.0
    while t_cdf(high, dof) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, dof) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def ci_half_width(values, level: float = 0.95) -> float:
    """Half-width of the ``level`` confidence interval of the mean of ``values`` (Student t,
    n - 1 degrees of freedom): the mean +- this. NaN for fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n < 2:
        return float("nan")
    return t_quantile(0.5 + level / 2.0, n - 1) * values.std(ddof=1) / math.sqrt(n)


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over paired runs (same seed, same fold), with its confidence interval and
    the two-sided paired t-test."""
    mean: float
    low: float
    high: float
    p_value: float
    n: int

    def within_noise(self) -> bool:
        """The interval contains 0: the data do not tell the two apart."""
        return self.low <= 0.0 <= self.high


def paired_difference(a, b, level: float = 0.95) -> PairedDifference:
    """The difference a - b of paired measurements (equal lengths, paired by position)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {a.size} and {b.size}")
    diff = a - b
    n, mean = diff.size, float(diff.mean()) if diff.size else float("nan")
    if n < 2:
        return PairedDifference(mean, float("nan"), float("nan"), float("nan"), n)
    sd = float(diff.std(ddof=1))
    half = ci_half_width(diff, level)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / (sd / math.sqrt(n))
        p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    return PairedDifference(mean, mean - half, mean + half, p, n)
