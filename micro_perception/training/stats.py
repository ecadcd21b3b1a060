"""How far an evaluation's figures can be trusted: confidence intervals (no ROS, no torch).

A few hundred test frames give an MAE whose 95 % interval spans several micrometres, and a rate
of 0 misses in 178 frames only says the true rate is probably under 2 %. The evaluation
commands report these intervals beside their figures, and ``eval compare`` uses the paired ones
to say whether a change measured better on the same frames or only differently.

* :func:`bootstrap_ci`: percentile bootstrap of a statistic over frames (resampled with
  replacement, a fixed seed: the same data give the same interval);
* :func:`paired_bootstrap_ci`: the same for the difference of a statistic between two methods
  on the same frames (each resample takes both methods' values of the same frames, so what
  varies between frames cancels);
* :func:`block_bootstrap_ci`: the same for a time series whose neighbours are correlated (a
  filtered distance, frame after frame): blocks of consecutive values are resampled, longer
  than the series' correlation, so the interval is not made narrow by counting one slow wander
  as many independent frames;
* :func:`binomial_ci`: the exact (Clopper-Pearson) interval of a rate of k events in n trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

RESAMPLES = 2000
SEED = 0


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """(low, high) of ``stat`` (default the mean; it gets an (resamples, n) array and reduces
    its last axis) over resamples of ``values``; None for fewer than two values."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return None
    stat = stat or (lambda a: a.mean(-1))
    idx = np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))
    return _percentile_interval(stat(v[idx]), level)


def paired_bootstrap_ci(
    a,
    b,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """(low, high) of ``stat(b) - stat(a)`` where ``a[i]`` and ``b[i]`` belong to one frame;
    None for fewer than two pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} and {b.shape}")
    if a.size < 2:
        return None
    stat = stat or (lambda x: x.mean(-1))
    idx = np.random.default_rng(seed).integers(0, a.size, (resamples, a.size))
    return _percentile_interval(stat(b[idx]) - stat(a[idx]), level)


def correlation_length(values, cutoff: float = 0.1) -> int:
    """The first lag (>= 1) at which the series' sample autocorrelation falls below
    ``cutoff``; the series' length when it never does."""
    v = np.asarray(values, np.float64)
    v = v - v.mean()
    denom = float(v @ v)
    if v.size < 3 or denom == 0.0:
        return 1
    for lag in range(1, v.size):
        if float(v[:-lag] @ v[lag:]) / denom < cutoff:
            return lag
    return v.size


def block_bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
    block: int | None = None,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """Moving-block bootstrap interval of ``stat`` over a series; ``block`` defaults to twice
    its correlation length, at least the cube root of its length (and 2). None for fewer than
    four values or a block as long as the series."""
    v = np.asarray(values, np.float64)
    n = v.size
    if n < 4:
        return None
    if block is None:
        block = max(2, 2 * correlation_length(v), round(n ** (1 / 3)))
    if block >= n:
        return None
    stat = stat or (lambda a: a.mean(-1))
    k = -(-n // block)
    starts = np.random.default_rng(seed).integers(0, n - block + 1, (resamples, k))
    idx = (starts[..., None] + np.arange(block)).reshape(resamples, k * block)[:, :n]
    return _percentile_interval(stat(v[idx]), level)


def p95(a: np.ndarray) -> np.ndarray:
    """The 95th percentile over the last axis (a ``stat`` for the bootstraps)."""
    return np.percentile(a, 95, axis=-1)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to many thousands)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def _solve(f: Callable[[float], float], target: float) -> float:
    """p in [0, 1] where the decreasing function f crosses target, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) interval of the rate k/n; None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    tail = (1.0 - level) / 2
    # P(X >= k) = tail at the low end, P(X <= k) = tail at the high end.
    lo = 0.0 if k == 0 else _solve(lambda p: _binom_cdf(k - 1, n, p), 1.0 - tail)
    hi = 1.0 if k == n else _solve(lambda p: _binom_cdf(k, n, p), tail)
    return lo, hi
