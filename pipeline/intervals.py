"""95 % intervals of a lift over the baseline: paired over seeds, and bootstrapped over test images.

A lift is the mean over seeds of the per-seed difference method - baseline of a headline metric.
Two sources of noise move it, and each interval measures one:

- **seeds** (:func:`t_interval`): the per-seed differences d_1..d_n, a Student t interval
  with n - 1 degrees of freedom (``scipy.stats.t``); undefined (None) for one seed.
- **test images** (:func:`paired_bootstrap_interval`): within each seed, the test images are
  resampled with replacement, *the same* resampled images for the method and the baseline (a
  paired bootstrap), and the lift is recomputed on them; the replicate is the mean over seeds
  of the per-seed differences. Percentile interval (``scipy.stats.bootstrap``), with a fixed
  RNG seed so that the report, a DVC output, is byte-identical on rerun.

:func:`distinguishable` is the rule the report uses: a lift counts as different from 0 only
when *both* intervals exclude 0 (so never with one seed).

Pure functions of arrays; the report builds the per-seed statistics (:mod:`pipeline.tasks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0  # the bootstrap's RNG seed: a fixed number keeps the report deterministic
# Resamples drawn at once are capped so that a batch holds at most this many image indices
# (CIFAR's 10,000 test images x 3 seeds x 2,000 resamples would be 480 MB of int64 at once).
_BATCH_ELEMENTS = 4_000_000

# A per-seed statistic: (..., N) indices of test images -> (...) values of the headline (%) on them.
Statistic = Callable[[np.ndarray], np.ndarray]
Interval = tuple[float, float]


def t_interval(differences: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval | None:
    """The t interval (n - 1 df) of the mean of (n,) values, None for n < 2: of the per-seed
    differences to the baseline, the paired interval of a lift.

    With no spread at all (every difference equal) the interval is that value, [d, d].
    """
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"differences must be a 1-D array; got shape {d.shape}")
    if d.size < 2:
        return None  # one seed says nothing about seed-to-seed spread
    mean = float(d.mean())
    sem = float(d.std(ddof=1)) / math.sqrt(d.size)
    if sem == 0.0:
        return mean, mean  # scipy returns nan for a zero scale
    low, high = stats.t.interval(level, df=d.size - 1, loc=mean, scale=sem)
    return float(low), float(high)


def paired_bootstrap_interval(method: Sequence[Statistic], baseline: Sequence[Statistic], sizes: Sequence[int], *,
                              level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the lift ``mean_s [method[s](I_s) - baseline[s](I_s)]``.

    ``method[s]`` and ``baseline[s]`` are seed s's statistics (see :data:`Statistic`) over its
    ``sizes[s]`` test images; each replicate draws I_s, ``sizes[s]`` image indices with
    replacement, independently per seed and shared by the method and the baseline (paired).
    """
    from scipy import stats

    if not (len(method) == len(baseline) == len(sizes)) or not sizes:
        raise ValueError(f"one statistic per seed for the method and the baseline, and one size each; got "
                         f"{len(method)}, {len(baseline)} and {len(sizes)}")
    if min(sizes) < 2:
        raise ValueError(f"a bootstrap over test images needs at least 2 images per seed; got sizes {list(sizes)}")

    def lift(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        # indices[s]: (..., sizes[s]) resampled image indices of seed s (scipy passes axis=-1).
        return np.mean([m(i.astype(np.intp)) - b(i.astype(np.intp))
                        for m, b, i in zip(method, baseline, indices)], axis=0)

    result = stats.bootstrap(tuple(np.arange(n) for n in sizes), lift, n_resamples=n_resamples,
                             batch=max(1, _BATCH_ELEMENTS // sum(sizes)), vectorized=True, paired=False,
                             confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def excludes_zero(interval: Interval | None) -> bool:
    """True when ``interval`` lies wholly above or below 0 (an undefined interval does not)."""
    return interval is not None and (interval[0] > 0.0 or interval[1] < 0.0)


def distinguishable(t_interval: Interval | None, bootstrap_interval: Interval | None) -> bool:
    """The report's rule: a lift differs from 0 only when both its intervals exclude 0."""
    return excludes_zero(t_interval) and excludes_zero(bootstrap_interval)
