"""The lift intervals (pipeline/intervals.py) and the per-image headline statistics (pipeline/tasks.py):
hand-computed cases, slow loop oracles, and the per-image file the evaluate stage writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.data.records import COARSE_TO_FINE, WORST_GROUP
from pipeline.evaluation.robustness import group_metrics
from pipeline.intervals import distinguishable, excludes_zero, paired_bootstrap_interval, t_interval
from pipeline.tasks import CoarseToFine, WorstGroup, task_named
from test_evaluation_metrics import FAST, arrays_for


def _accuracy(correct: np.ndarray):
    """A per-seed statistic: (..., K) image indices -> accuracy (%) on them."""
    return lambda index: 100.0 * correct[index].mean(axis=-1)


def _loop_bootstrap(method: list[np.ndarray], baseline: list[np.ndarray], n_resamples: int, seed: int) -> tuple[float, float]:
    """The paired bootstrap of a lift in accuracy, one resample at a time (the slow oracle)."""
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_resamples):
        per_seed = []
        for m, b in zip(method, baseline):
            index = rng.integers(0, len(m), len(m))  # the same images for the method and the baseline
            per_seed.append(100.0 * (sum(m[i] for i in index) - sum(b[i] for i in index)) / len(m))
        replicates.append(sum(per_seed) / len(per_seed))
    return float(np.percentile(replicates, 2.5)), float(np.percentile(replicates, 97.5))


def test_t_interval_by_hand() -> None:
    # mean 2, std 1, n 3: 2 ± t(0.975, 2) / sqrt(3), t(0.975, 2) = 4.302653 (tables)
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)  # no spread: the value itself, not nan
    assert t_interval([3.2]) is None  # one seed: undefined
    low, high = t_interval([-1.0, 1.0])  # n = 2: 1 degree of freedom, t = 12.7062
    assert (low, high) == pytest.approx((-12.7062 * 1.0, 12.7062 * 1.0), abs=1e-3)


def test_identical_methods_have_lift_zero_and_an_interval_containing_it() -> None:
    rng = np.random.default_rng(0)
    correct = [rng.random(100) < 0.8 for _ in range(3)]
    stats = [_accuracy(c) for c in correct]
    low, high = paired_bootstrap_interval(stats, stats, [100] * 3)
    assert low == high == 0.0
    assert not excludes_zero((low, high)) and not distinguishable(t_interval([0.0, 0.0, 0.0]), (low, high))


def test_a_constant_shift_on_every_image_gives_exactly_that_interval() -> None:
    rng = np.random.default_rng(1)
    values = [rng.normal(size=50) for _ in range(2)]
    method = [lambda i, v=v: (v + 1.0)[i].mean(axis=-1) for v in values]
    baseline = [lambda i, v=v: v[i].mean(axis=-1) for v in values]
    assert paired_bootstrap_interval(method, baseline, [50, 50]) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_two_images_give_the_enumerable_bootstrap_distribution() -> None:
    # One seed, 2 images; the method gets image 0 right, the baseline neither: the lift of a resample
    # is 100 x (share of image 0 in it): 0, 50 or 100 with probabilities 1/4, 1/2, 1/4.
    method, baseline = np.array([True, False]), np.array([False, False])
    assert paired_bootstrap_interval([_accuracy(method)], [_accuracy(baseline)], [2]) == (0.0, 100.0)


def test_bootstrap_agrees_with_the_slow_loop() -> None:
    rng = np.random.default_rng(2)
    base = [rng.random(60) < 0.7 for _ in range(3)]
    method = [b | (rng.random(60) < 0.2) for b in base]
    fast = paired_bootstrap_interval([_accuracy(m) for m in method], [_accuracy(b) for b in base], [60] * 3,
                                     n_resamples=4000)
    slow = _loop_bootstrap(method, base, n_resamples=4000, seed=7)
    assert fast == pytest.approx(slow, abs=0.8)  # Monte Carlo error of a 2.5 % quantile, 4000 draws
    assert fast == paired_bootstrap_interval([_accuracy(m) for m in method], [_accuracy(b) for b in base],
                                             [60] * 3, n_resamples=4000)  # a fixed seed: deterministic


def test_the_bootstrap_pairs_method_and_baseline_images() -> None:
    # The method is the baseline with 8 of 200 wrong images turned right: every paired replicate
    # is >= 0, so the interval excludes 0; resampled independently it would not (the 50 % noise).
    rng = np.random.default_rng(3)
    base = rng.random(200) < 0.5
    method = base.copy()
    method[np.flatnonzero(~base)[:8]] = True
    low, high = paired_bootstrap_interval([_accuracy(method)], [_accuracy(base)], [200])
    assert 0.0 < low < 4.0 < high < 8.0
    independent = _accuracy(base)(rng.integers(0, 200, (2000, 200)))
    assert np.percentile(_accuracy(method)(rng.integers(0, 200, (2000, 200))) - independent, 2.5) < 0.0


def test_bootstrap_refuses_mismatched_or_tiny_samples() -> None:
    stat = _accuracy(np.array([True, False, True]))
    with pytest.raises(ValueError, match="one statistic per seed"):
        paired_bootstrap_interval([stat, stat], [stat], [3, 3])
    with pytest.raises(ValueError, match="at least 2 images"):
        paired_bootstrap_interval([stat], [stat], [1])


@pytest.mark.parametrize("t, boot, expected", [
    ((0.5, 2.0), (0.1, 1.0), True),
    ((-0.5, 2.0), (0.1, 1.0), False),  # the seeds' interval includes 0
    ((0.5, 2.0), (0.0, 1.0), False),  # touching 0 counts as including it
    (None, (0.1, 1.0), False),  # one seed: never distinguishable
    ((-3.0, -1.0), (-2.0, -0.5), True),  # below the baseline, clearly
])
def test_distinguishable_needs_both_intervals_to_exclude_zero(t, boot, expected) -> None:
    assert distinguishable(t, boot) is expected


def test_worst_group_statistic_matches_group_metrics_on_resamples() -> None:
    rng = np.random.default_rng(4)
    group = rng.integers(0, 4, 40)
    y = group // 2
    pred = np.where(rng.random(40) < 0.75, y, 1 - y)
    statistic = WorstGroup().headline_statistic({"discovered_gdro.discovered": pred == y, "group": group},
                                                WorstGroup.HEADLINE)
    index = rng.integers(0, 40, (25, 40))
    index[0] = np.where(group == 3, 0, np.arange(40))  # a resample without group 3
    expected = [100.0 * group_metrics(pred[i], y[i], group[i], group)["worst_group_acc"] for i in index]
    assert statistic(index) == pytest.approx(expected, abs=1e-12)
    assert statistic(np.arange(40)).shape == ()


def test_coarse_to_fine_statistic_is_the_accuracy_of_the_chosen_headline() -> None:
    per_image = {"fine_head_acc": np.array([True, False, True, True]), "fine_knn_acc": np.array([False] * 4)}
    task = CoarseToFine()
    assert float(task.headline_statistic(per_image, "fine_head_acc")(np.arange(4))) == 75.0
    assert float(task.headline_statistic(per_image, "fine_knn_acc")(np.arange(4))) == 0.0
    with pytest.raises(KeyError):
        task.headline_statistic(per_image, "fine_probe_acc")
    with pytest.raises(ValueError, match="not \\(N,\\) correct flags"):
        task.headline_statistic({"fine_head_acc": np.arange(4)}, "fine_head_acc")


def test_chance_is_where_the_headline_axis_starts() -> None:
    assert CoarseToFine().chance({"fine": {i: str(i) for i in range(10)}}) == 10.0
    assert WorstGroup().chance({"group": {0: "a", 1: "b"}}) == 0.0


@pytest.mark.parametrize("task, headlines", [
    (COARSE_TO_FINE, ("fine_head_acc", "fine_probe_acc", "fine_knn_acc")),
    (WORST_GROUP, (WorstGroup.HEADLINE,)),
])
def test_the_per_image_results_give_back_the_metrics_headline(task: str, headlines: tuple[str, ...]) -> None:
    """What the evaluate stage writes beside the metrics file recomputes its headline exactly."""
    metrics, per_image = task_named(task).evaluate(arrays_for(task), FAST)
    for headline in headlines:
        value = task_named(task).headline_statistic(per_image, headline)(np.arange(80))
        assert float(value) == pytest.approx(metrics[headline], abs=1e-9)
    assert all(a.shape == (80,) for a in per_image.values())
