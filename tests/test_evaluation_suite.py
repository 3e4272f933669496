"""The evaluate stage's metrics dict: alignment appears exactly when augmented views do."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import EvaluateParams, HeadParams
from pipeline.data.records import COARSE_TO_FINE, WORST_GROUP
from pipeline.evaluation.geometry import alignment
from pipeline.evaluation.suite import VIEW_KEYS, evaluate_embeddings

OPTS = EvaluateParams(probe_cs=[0.1, 1.0], knn_k=5, head=HeadParams(epochs=2))


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
