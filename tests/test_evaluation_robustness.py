"""Worst-group evaluation and sub-group discovery on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.metrics import adjusted_rand_score

from pipeline.evaluation.grouping import (
    cluster_averaged_silhouette,
    discover_groups,
    gaussian_like,
    discovery_scores,
    minority_identification,
    smallest_group_recall,
)
from pipeline.evaluation.robustness import (
    HEAD_RULES,
    RuleSelector,
    evaluate_robustness,
    group_metrics,
    select_logistic,
)

# GEORGE with k-means, as params.yaml runs it without a reduction (a GMM per k and per parent on
# 2,000 points costs about a minute per call here and tests nothing more).
FAST = dict(steps=400, eval_every=50, etas=(0.1, 1.0), weight_decays=(1e-3, 1e-1),
            george={"cluster_method": "kmeans"})


def spurious(n: int, p_aligned: float, rng: np.random.Generator, d: int = 12):
    """y in {0, 1}; attribute a = y with probability p_aligned. The core feature (dim 0) is
    noisy, the spurious one (dim 1) clean, so ERM on a 95%-aligned split leans on it."""
    y = rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < p_aligned, y, 1 - y)
    x = rng.normal(size=(n, d))
    x[:, 0] += 1.0 * (2 * y - 1)
    x[:, 1] += 4.0 * (2 * a - 1)
    return x, y, 2 * y + a


@pytest.fixture(scope="module")
def spurious_metrics() -> dict[str, float]:
    rng = np.random.default_rng(0)
    train, val, test = spurious(2000, 0.95, rng), spurious(600, 0.5, rng), spurious(1200, 0.5, rng)
    return evaluate_robustness(train, val, test, seed=0, **FAST)


def test_group_metrics_match_loop() -> None:
    rng = np.random.default_rng(1)
    y, groups = rng.integers(0, 2, 200), rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.8, y, 1 - y)
    train_groups = rng.choice(4, size=500, p=[0.5, 0.3, 0.15, 0.05])
    got = group_metrics(pred, y, groups, train_groups)
    accs = [np.mean([pred[i] == y[i] for i in range(200) if groups[i] == g]) for g in range(4)]
    freq = [np.sum(train_groups == g) / 500 for g in range(4)]
    assert got["worst_group_acc"] == pytest.approx(min(accs))
    assert got["mean_group_acc"] == pytest.approx(np.mean(accs))
    assert got["avg_acc"] == pytest.approx(np.mean(pred == y))
    assert got["weighted_acc"] == pytest.approx(sum(f * a for f, a in zip(freq, accs)))
    assert all(got[f"group_{g}_acc"] == pytest.approx(accs[g]) for g in range(4))
    class_accs = [np.mean([pred[i] == y[i] for i in range(200) if y[i] == c]) for c in range(2)]
    assert got["worst_class_acc"] == pytest.approx(min(class_accs))
    assert got["balanced_acc"] == pytest.approx(np.mean(class_accs))


def test_each_rule_selects_by_the_worst_group_of_its_own_validation_grouping() -> None:
    """Three candidate heads, hand-made validation predictions: each rule keeps the one whose
    worst group under that rule's grouping is best (ties: mean accuracy, then the first)."""
    import torch

    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groupings = {"average": np.zeros(8, dtype=np.int64), "worst_class": y.numpy(),
                 "oracle": np.array([0, 0, 0, 1, 2, 2, 2, 3]),
                 "discovered": np.array([0, 0, 1, 1, 2, 2, -1, -1])}  # -1: not scored by this rule
    preds = torch.tensor([
        [0, 0, 0, 1, 1, 1, 1, 1],  # 7/8 right; misses the oracle's group 1 entirely
        [0, 0, 1, 0, 1, 1, 0, 1],  # 6/8; worst class 3/4, every oracle group >= 2/3
        [0, 1, 0, 0, 0, 1, 0, 1],  # 5/8; the discovered groups of points 0-5: 1/2, 1, 0... worst
    ])
    selector = RuleSelector(y, groupings)
    for i, pred in enumerate(preds):
        selector.consider(pred[None], lambda _, i=i: (i, {"candidate": i}))
    chosen = {rule: head.hyperparameters["candidate"] for rule, head in selector.chosen().items()}
    # average: 7/8 > 6/8 > 5/8. worst class: 3/4 (0), 3/4 (1), 1/2 (2): tie on 3/4 -> mean -> 0.
    # oracle: groups (0,1,2,3) -> candidate 0: 1, 0, 1, 1 (worst 0); 1: 2/3, 1, 2/3, 1 (2/3); 2: 2/3, 1, 1/3, 1.
    # discovered (points 0-5): 0: 1, 1/2, 1 -> 1/2; 1: 1, 1/2, 1 -> 1/2 (mean 6/8 < 7/8); 2: 1/2, 1, 1/2.
    assert chosen == {"average": 0, "worst_class": 0, "oracle": 1, "discovered": 0}
    scores = selector.chosen()
    assert scores["oracle"].val_worst_group_acc == pytest.approx(2 / 3)
    assert scores["discovered"].val_worst_group_acc == pytest.approx(1 / 2)


def test_erm_selected_by_average_accuracy_is_the_linear_probe() -> None:
    """The ERM head under the "average" rule is exactly :func:`linear_probe`'s choice."""
    import torch

    from pipeline.evaluation.common import encode_labels, standardise
    from pipeline.evaluation.probes import linear_probe
    from pipeline.evaluation.robustness import logistic_path

    rng = np.random.default_rng(12)
    (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = (spurious(n, p, rng) for n, p in ((300, 0.9), (150, 0.5), (150, 0.5)))
    cs = (0.01, 0.1, 1.0, 10.0)
    probe = linear_probe(xtr, ytr, xva, yva, xte, yte, cs=cs, device="cpu")
    tr, va, te = (torch.as_tensor(a) for a in standardise(xtr, xva, xte))
    classes = np.unique(ytr)
    path = logistic_path(tr, torch.as_tensor(encode_labels(ytr, classes)), 2, cs=cs)
    head = select_logistic(path, va, torch.as_tensor(encode_labels(yva, classes)),
                           {"average": np.zeros(len(yva), dtype=np.int64)})["average"]
    assert head.hyperparameters["c"] == probe.best_c
    assert head.val_worst_group_acc == probe.val_accuracy
    assert np.array_equal(classes[head.model.predict(te).numpy()], probe.test_predictions)


def test_minority_identification_by_hand() -> None:
    y = np.array([0] * 10 + [1] * 6)
    groups = np.array([0] * 7 + [1] * 3 + [2] * 4 + [3] * 2)  # minorities: 1 (class 0), 3 (class 1)
    clusters = np.array([0] * 6 + [1] * 4 + [2] * 6)  # cluster 1 = one majority point + group 1
    precision, recall = minority_identification(clusters, groups, y)
    # group 1: cluster 1 holds all 3 of its 4 points -> precision 3/4, recall 1.
    # group 3: only cluster 2 in class 1 (6 points, 2 of them) -> precision 2/6, recall 1.
    assert precision == pytest.approx((3 / 4 + 2 / 6) / 2)
    assert recall == pytest.approx(1.0)
    assert np.isnan(minority_identification(clusters, np.zeros(16, dtype=np.int64), y)[0])


def test_spurious_feature_hurts_erm_and_oracle_dro_fixes_it(spurious_metrics) -> None:
    m = spurious_metrics
    erm = m["erm.average/worst_group_acc"]
    assert erm < 0.5  # minority groups follow the spurious feature
    assert m["erm.average/weighted_acc"] > 0.85  # ... while the training-weighted average looks fine
    assert m["oracle_gdro.oracle/worst_group_acc"] > erm + 0.3
    assert m["oracle_balanced.oracle/worst_group_acc"] > erm + 0.3
    # The hidden groups are well separated, so both discoveries recover them and group DRO follows.
    for prefix in ("discovery", "discovery_kmeans"):
        assert m[f"{prefix}/ari_within_class"] > 0.95
        assert m[f"{prefix}/smallest_group_recall"] > 0.95
        assert m[f"{prefix}/minority_precision"] > 0.95 and m[f"{prefix}/minority_recall"] > 0.95
    assert m["discovered_gdro.discovered/worst_group_acc"] > erm + 0.3
    assert m["kmeans_gdro.discovered/worst_group_acc"] > erm + 0.3
    for head, rules in HEAD_RULES.items():
        for rule in rules:
            accs = [m[f"{head}.{rule}/group_{g}_acc"] for g in range(4)]
            assert m[f"{head}.{rule}/worst_group_acc"] == min(accs)
            assert m[f"{head}.{rule}/mean_group_acc"] == pytest.approx(np.mean(accs))


def test_model_selection_never_sees_test_labels() -> None:
    rng = np.random.default_rng(2)
    train, val, test = spurious(800, 0.9, rng), spurious(300, 0.5, rng), spurious(300, 0.5, rng)
    x, y, g = test
    scrambled = (x, rng.permutation(y), rng.permutation(g))
    a = evaluate_robustness(train, val, test, seed=0, **FAST)
    b = evaluate_robustness(train, val, scrambled, seed=0, **FAST)
    chosen = [k for k in a if k.startswith(("discovery/", "discovery_kmeans/")) or k.endswith(
        ("/val_selection_acc", "/c", "/eta", "/weight_decay", "/steps"))]
    # 6 scores per discovery; per (head, rule): its validation score and hyperparameters.
    outputs = {"erm": 2, "oracle_balanced": 2, "discovered_gdro": 4, "kmeans_gdro": 4, "oracle_gdro": 4}
    assert len(chosen) == 2 * 6 + sum(len(rules) * outputs[h] for h, rules in HEAD_RULES.items())
    assert {k: a[k] for k in chosen} == {k: b[k] for k in chosen}


def test_discovery_recovers_well_separated_hidden_groups() -> None:
    rng = np.random.default_rng(3)
    n, d = 900, 10
    y = rng.integers(0, 3, size=n)
    sub = rng.integers(0, 3, size=n)  # 3 hidden sub-groups per class
    x = 0.3 * rng.normal(size=(n, d)) + 8.0 * np.eye(d)[y] + 3.0 * np.eye(d)[3 + sub]
    groups = 3 * y + sub
    discovery = discover_groups(x, y, k_max=6, seed=0)
    clusters = discovery.assign(x, y)
    scores = discovery_scores(clusters, groups, y)
    assert discovery.n_clusters == 9
    assert scores["ari"] > 0.99 and scores["ari_within_class"] > 0.99
    # New points of the same groups land in the matching clusters.
    x_new = 0.3 * rng.normal(size=(n, d)) + 8.0 * np.eye(d)[y] + 3.0 * np.eye(d)[3 + sub]
    assert discovery_scores(discovery.assign(x_new, y), groups, y)["ari"] > 0.99


@pytest.mark.parametrize("normalize", [True, False])
def test_unimodal_class_stays_one_cluster(normalize: bool) -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 400)
    # Class 0: one anisotropic Gaussian (k-means would happily cut it). Class 1: two blobs.
    x = rng.normal(size=(800, 7)) * np.array([3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    x[y == 1] = rng.normal(size=(400, 7)) + 6.0 * (rng.random(400) < 0.3)[:, None] * np.eye(7)[1]
    x[:, 6] = 10.0  # embeddings sit away from the origin (normalising is about the origin)
    discovery = discover_groups(x, y, seed=0, normalize=normalize)
    assert [c.n_clusters for c in discovery.per_class] == [1, 2]
    # The Gaussian null is what keeps class 0 whole: without it k-means cuts the blob.
    no_null = discover_groups(x, y, seed=0, normalize=normalize, min_gain=-1.0)
    assert [c.n_clusters for c in no_null.per_class] == [2, 2]


def direction_minority(n: int, share: float, rng: np.random.Generator, d: int = 16):
    """One class whose minority differs from the majority by *direction* only, while the
    norm of every embedding varies threefold (as the CE head leaves it): (x, is_minority)."""
    minority = rng.random(n) < share
    direction = np.eye(d)[0] + 0.6 * minority[:, None] * np.eye(d)[1]
    u = direction + 0.05 * rng.normal(size=(n, d))
    norms = rng.uniform(5.0, 15.0, size=(n, 1))
    return norms * u / np.linalg.norm(u, axis=1, keepdims=True), minority


def test_small_minority_differing_by_direction_is_found_after_normalising() -> None:
    rng = np.random.default_rng(6)
    x, minority = direction_minority(600, 0.05, rng)
    y = np.zeros(len(x), dtype=np.int64)
    found = discover_groups(x, y, seed=0)
    clusters = found.assign(x, y)
    assert found.n_clusters == 2
    assert adjusted_rand_score(minority, clusters) > 0.95
    assert smallest_group_recall(clusters, minority.astype(int)) == 1.0
    # The raw norms dominate the within-class variance: k-means cuts along the norm instead.
    raw = discover_groups(x, y, seed=0, normalize=False)
    assert adjusted_rand_score(minority, raw.assign(x, y)) < 0.2


def test_outliers_do_not_become_groups() -> None:
    rng = np.random.default_rng(7)
    x, minority = direction_minority(600, 0.1, rng)
    # Three stray points, close to each other and far from everything else.
    far = 10.0 * np.eye(x.shape[1])[2] + 0.05 * rng.normal(size=(3, x.shape[1]))
    x = np.concatenate([x, far])
    y = np.zeros(len(x), dtype=np.int64)
    tiny = discover_groups(x, y, seed=0, min_cluster_size=1)
    floor = discover_groups(x, y, seed=0, min_cluster_size=10)
    sizes = np.bincount(floor.assign(x, y))
    assert sizes.min() >= 10 and floor.n_clusters == 2
    assert adjusted_rand_score(minority, floor.assign(x, y)[:600]) > 0.95
    # Without the floor, some k-means solution spends a cluster on the stray points.
    assert np.bincount(tiny.assign(x, y)).min() < 10


def test_cluster_averaged_silhouette_matches_loop() -> None:
    rng = np.random.default_rng(8)
    z, labels = rng.normal(size=(40, 3)), np.repeat([0, 1, 2], [30, 7, 3])
    dist = np.linalg.norm(z[:, None] - z[None], axis=2)
    s = []
    for i in range(40):
        own = labels == labels[i]
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == c].mean() for c in set(labels.tolist()) - {labels[i]})
        s.append((b - a) / max(a, b))
    s = np.array(s)
    expected = np.mean([s[labels == c].mean() for c in range(3)])
    assert cluster_averaged_silhouette(z, labels) == pytest.approx(expected, rel=1e-10)


def test_gaussian_like_matches_moments() -> None:
    rng = np.random.default_rng(9)
    z = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 5)) + 3.0
    null = gaussian_like(z, seed=0)
    np.testing.assert_allclose(null.mean(axis=0), z.mean(axis=0), atol=0.15)
    np.testing.assert_allclose(np.cov(null.T), np.cov(z.T), atol=0.15 * np.abs(np.cov(z.T)).max())


def test_smallest_group_recall_by_hand() -> None:
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    # Group 1 (smallest, 3 points): 2 of them in cluster 5 where it is the majority, 1 lost
    # in cluster 7, which group 2 dominates.
    clusters = np.array([4, 4, 4, 4, 5, 5, 7, 5, 7, 7, 7, 7])
    assert smallest_group_recall(clusters, groups) == pytest.approx(2 / 3)
    assert smallest_group_recall(groups, groups) == 1.0
    assert smallest_group_recall(np.zeros(12), groups) == 0.0


def test_evaluate_robustness_rejects_bad_triples() -> None:
    rng = np.random.default_rng(5)
    train, val, test = spurious(100, 0.9, rng), spurious(50, 0.5, rng), spurious(50, 0.5, rng)
    with pytest.raises(ValueError, match="val_group"):
        evaluate_robustness(train, (val[0], val[1], val[2][:-1]), test)
    with pytest.raises(ValueError, match="triple"):
        evaluate_robustness(train, val[:2], test)


def test_evaluate_robustness_passes_its_discovery_and_group_dro_settings_on() -> None:
    """``kmeans`` reaches discover_groups, ``george`` george_discover; ``lr`` the group-DRO heads."""
    from pipeline.evaluation.grouping import discover_groups as discover

    rng = np.random.default_rng(6)
    train, val, test = spurious(400, 0.9, rng), spurious(200, 0.5, rng), spurious(200, 0.5, rng)
    fast = dict(steps=60, eval_every=30, etas=(0.1,), weight_decays=(1e-3,))
    base = evaluate_robustness(train, val, test, seed=0, kmeans={"k_max": 3}, **fast)
    direct = discover(train[0], train[1], k_max=3, seed=0)
    assert base["discovery_kmeans/n_clusters"] == len(np.unique(direct.assign(train[0], train[1])))
    lumped = evaluate_robustness(train, val, test, seed=0, kmeans={"min_cluster_size": 10**6},
                                 george={"min_size": 10**6}, **fast)
    assert lumped["discovery_kmeans/n_clusters"] == 2
    # GEORGE's base clusters stay (the ERM-loss and size rules only guard the over-clusters).
    assert lumped["discovery/n_clusters"] <= base["discovery/n_clusters"]

    def untouched(m: dict[str, float]) -> dict[str, float]:  # the heads that see no discovered groups
        return {k: v for k, v in m.items() if k.startswith(("erm.average/", "erm.worst_class/",
                                                             "erm.oracle/", "oracle_"))}

    assert untouched(lumped) == untouched(base)
    slow = evaluate_robustness(train, val, test, seed=0, kmeans={"k_max": 3}, lr=1e-6, **fast)
    assert slow["oracle_gdro.oracle/val_selection_acc"] != base["oracle_gdro.oracle/val_selection_acc"] or (
        slow["oracle_gdro.oracle/steps"] != base["oracle_gdro.oracle/steps"])
    assert slow["erm.average/c"] == base["erm.average/c"]  # the logistic heads ignore the group-DRO settings


def test_discover_groups_passes_the_silhouette_sample_on() -> None:
    """The silhouette subsample is a setting of the whole discovery (params: evaluate.discovery)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 5)) + 5.0 * np.eye(5)[np.repeat([0, 1], 300)]  # two directions
    y = np.zeros(600, dtype=np.int64)
    full = discover_groups(x, y, seed=0, silhouette_sample=2000).per_class[0]
    sampled = discover_groups(x, y, seed=0, silhouette_sample=50).per_class[0]
    assert full.silhouette != sampled.silhouette  # scored on 600 points vs a 50-point subsample
    assert full.n_clusters == sampled.n_clusters == 2


@pytest.mark.parametrize("adjustment", [0.0, 2.0])
def test_batched_group_dro_matches_one_config_at_a_time_with_autograd(adjustment: float) -> None:
    """Each configuration of the batched path, against the plain algorithm: its own linear
    model, autograd, torch.optim.Adam (Sagawa et al.'s online group DRO, full batch, with their
    group-size adjustment C / sqrt(n_g) in the weight update)."""
    import torch

    from pipeline.evaluation.robustness import group_dro_path

    rng = np.random.default_rng(10)
    x, y, g = spurious(300, 0.9, rng, d=5)
    g[:7] = -1  # points without a group count in no group loss
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    etas, wds, steps = (0.1, 1.0), (1e-3, 1e-1), 60
    *_, (last, weight, bias) = group_dro_path(xt, yt, g, 2, etas, wds, steps=steps, every=25,
                                              adjustment=adjustment)
    assert last == steps
    ids = [gid for gid in np.unique(g) if gid >= 0]
    sizes = torch.tensor([float(np.sum(g == gid)) for gid in ids], dtype=torch.float64)
    for i, (eta, wd) in enumerate((e, w) for e in etas for w in wds):
        w_ref = torch.zeros(5, 2, dtype=torch.float64, requires_grad=True)
        b_ref = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        q = torch.full((len(ids),), 1.0 / len(ids), dtype=torch.float64)
        optimiser = torch.optim.Adam([w_ref, b_ref], lr=0.01)
        for _ in range(steps):
            ce = torch.nn.functional.cross_entropy(xt @ w_ref + b_ref, yt, reduction="none")
            losses = torch.stack([ce[torch.as_tensor(g == gid)].mean() for gid in ids])
            with torch.no_grad():
                q = q * torch.exp(eta * (losses + adjustment / sizes.sqrt()))
                q = q / q.sum()
            loss = (q * losses).sum() + 0.5 * wd * w_ref.square().sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        # Same arithmetic up to summation order; Adam's grad / sqrt(v) magnifies float64
        # rounding where a gradient entry is near 0, hence not 1e-12. A wrong gradient is off
        # by orders of magnitude more (steps move weights by up to lr = 0.01 each).
        torch.testing.assert_close(weight[:, i], w_ref.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bias[i], b_ref.detach(), rtol=1e-6, atol=1e-7)
