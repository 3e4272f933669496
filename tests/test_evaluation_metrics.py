"""The evaluate stage's metrics dict (pipeline/evaluation/metrics.py, through pipeline.tasks):
alignment appears exactly when augmented views do; the robustness settings come from params."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import (
    DiscoveryParams,
    EvaluateParams,
    GeorgeParams,
    GroupDROParams,
    HeadParams,
    KMeansDiscoveryParams,
)
from pipeline.data.records import COARSE_TO_FINE, VIEW_KEYS, WORST_GROUP
from pipeline.evaluation.geometry import alignment
from pipeline.tasks import evaluate_embeddings

DISCOVERY = DiscoveryParams(george=GeorgeParams(reduction="none", cluster_method="kmeans", min_size=5, min_val=3),
                            kmeans=KMeansDiscoveryParams())
OPTS = EvaluateParams(probe_cs=[0.1, 1.0], discovery=DISCOVERY, knn_k=5, head=HeadParams(epochs=2))


def arrays_for(task: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Small embedding files of either task; the test split has two noisy 'views'."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", 160), ("val", 80), ("test", 80)):
        fine = rng.integers(0, 4, size=n)
        x = rng.normal(size=(n, 6)) + 3.0 * np.eye(6)[fine]
        out[f"{split}_x"] = x.astype(np.float32)
        if task == COARSE_TO_FINE:
            out[f"{split}_coarse"], out[f"{split}_fine"] = fine // 2, fine
        else:
            y, attribute = fine // 2, fine % 2
            out.update({f"{split}_y": y, f"{split}_attribute": attribute,
                        f"{split}_group": 2 * y + attribute, f"{split}_fine": fine})
    out[VIEW_KEYS[0]] = out["test_x"] + 0.1 * rng.normal(size=out["test_x"].shape)
    out[VIEW_KEYS[1]] = out["test_x"] + 0.1 * rng.normal(size=out["test_x"].shape)
    return out


@pytest.mark.parametrize("task", [COARSE_TO_FINE, WORST_GROUP])
def test_alignment_is_reported_when_views_are_present(task: str) -> None:
    arrays = arrays_for(task)
    with_views = evaluate_embeddings(arrays, task, OPTS)
    expected = alignment(arrays[VIEW_KEYS[0]], arrays[VIEW_KEYS[1]])
    assert with_views["geom_alignment"] == pytest.approx(expected, rel=1e-12)
    assert 0.0 < with_views["geom_alignment"] < 0.1  # small noise: well aligned
    without = evaluate_embeddings({k: v for k, v in arrays.items() if k not in VIEW_KEYS}, task, OPTS)
    assert "geom_alignment" not in without
    assert set(with_views) - set(without) == {"geom_alignment"}
    assert all(without[k] == with_views[k] for k in without)  # views change nothing else


def test_view_keys_agree_with_the_embed_step() -> None:
    from pipeline.embeddings import VIEW_KEYS as EMBED_VIEW_KEYS

    assert VIEW_KEYS == EMBED_VIEW_KEYS


def _robustness(opts: EvaluateParams) -> dict[str, float]:
    """The worst-group metrics of a small file, without geometry (what the settings act on)."""
    metrics = evaluate_embeddings(arrays_for(WORST_GROUP), WORST_GROUP, opts)
    return {k: v for k, v in metrics.items() if not k.startswith("geom_")}


FAST = replace(OPTS, group_dro=GroupDROParams(etas=[0.1], weight_decays=[0.01], steps=40, eval_every=20))


def test_worst_group_metrics_use_the_evaluate_settings() -> None:
    """evaluate.robustness_cs, .group_dro and .discovery reach the robustness heads (none is ignored)."""
    base = _robustness(FAST)
    assert base["discovered_gdro.discovered/eta"] == 0.1 and base["oracle_gdro.oracle/weight_decay"] == 0.01
    # checkpoints every eval_every steps, up to steps
    assert base["discovered_gdro.discovered/steps"] in (20.0, 40.0)
    assert base["erm.average/c"] in OPTS.robustness_cs and base["oracle_balanced.oracle/c"] in OPTS.robustness_cs

    one_c = _robustness(replace(FAST, robustness_cs=[0.5]))
    assert one_c["erm.worst_class/c"] == 0.5 and one_c["oracle_balanced.oracle/c"] == 0.5

    grid = _robustness(replace(FAST, group_dro=GroupDROParams(etas=[0.3], weight_decays=[0.002], steps=30,
                                                              eval_every=30, adjustment=1.0)))
    assert (grid["oracle_gdro.oracle/eta"], grid["oracle_gdro.oracle/weight_decay"],
            grid["oracle_gdro.oracle/steps"]) == (0.3, 0.002, 30)
    adjusted = _robustness(replace(FAST, group_dro=replace(FAST.group_dro, adjustment=5.0)))
    assert adjusted != base  # the group-size adjustment reaches group DRO

    # Clusters of at least 10**6 points cannot exist: one cluster per class, however the rest is set.
    lumped = _robustness(replace(FAST, discovery=replace(DISCOVERY, kmeans=KMeansDiscoveryParams(
        min_cluster_size=10**6))))
    assert lumped["discovery_kmeans/n_clusters"] == 2 and base["discovery_kmeans/n_clusters"] > 2
    # GEORGE: over-clusters of 10**6 points cannot exist either; its base clusters stay.
    no_split = _robustness(replace(FAST, discovery=replace(DISCOVERY, george=replace(DISCOVERY.george,
                                                                                     min_size=10**6))))
    assert no_split["discovery/n_clusters"] <= base["discovery/n_clusters"]

    # The coarse-to-fine probe's grid is not the robustness heads' grid.
    assert _robustness(replace(FAST, probe_cs=[123.0])) == base
