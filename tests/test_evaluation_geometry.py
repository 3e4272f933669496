"""Geometry metrics against loop oracles and on collapsed vs spread configurations; pictures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.evaluation.geometry import (
    alignment,
    class_spread,
    fine_knn_purity,
    geometry_metrics,
    uniformity,
)
from pipeline.evaluation.projection import plot_projection, project_2d


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def hierarchy(spread: float, seed: int, n: int = 240, d: int = 16):
    """2 coarse classes x 3 fine classes. spread = 0: each coarse class is one tight blob
    (fine structure gone, class collapse); spread > 0: fine classes sit apart inside it."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 6, size=n)
    coarse = fine // 3
    coarse_dir = np.eye(d)[coarse] * 5.0
    fine_dir = np.eye(d)[2 + fine] * spread
    return coarse_dir + fine_dir + 0.05 * rng.normal(size=(n, d)), coarse, fine


def test_alignment_and_uniformity_match_loops() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    ua, ub = unit(a), unit(b)
    expected_align = np.mean([np.linalg.norm(ua[i] - ub[i]) ** 2 for i in range(30)])
    pairs = [
        np.exp(-2 * np.sum((ua[i] - ua[j]) ** 2))
        for i, j in itertools.combinations(range(30), 2)
    ]
    assert alignment(a, b) == pytest.approx(expected_align, rel=1e-10)
    assert uniformity(a) == pytest.approx(math.log(np.mean(pairs)), rel=1e-10)
    with pytest.raises(ValueError, match="paired"):
        alignment(a, b[:-1])


def test_class_spread_matches_loop() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.integers(0, 3, size=50)
    z = unit(x)
    mu = {c: z[y == c].mean(axis=0) for c in range(3)}
    within = np.mean([np.sum((z[i] - mu[y[i]]) ** 2) for i in range(50)])
    pairs = itertools.combinations(range(3), 2)
    between = np.mean([np.sum((mu[a] - mu[b]) ** 2) for a, b in pairs])
    got = class_spread(x, y)
    assert got["within"] == pytest.approx(within, rel=1e-10)
    assert got["between"] == pytest.approx(between, rel=1e-10)
    assert got["ratio"] == pytest.approx(within / between, rel=1e-10)


def test_fine_knn_purity_matches_loop() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(70, 6))
    coarse, fine = rng.integers(0, 2, size=70), rng.integers(0, 4, size=70)
    z, k = unit(x), 5
    purity, chance = [], []
    for i in range(70):
        others = [j for j in range(70) if j != i and coarse[j] == coarse[i]]
        nearest = sorted(others, key=lambda j: -z[i] @ z[j])[:k]
        purity.append(np.mean([fine[j] == fine[i] for j in nearest]))
        chance.append(np.mean([fine[j] == fine[i] for j in others]))
    got = fine_knn_purity(x, coarse, fine, k=k, chunk_size=9)
    assert got["purity"] == pytest.approx(np.mean(purity), abs=1e-6)
    assert got["chance"] == pytest.approx(np.mean(chance), rel=1e-10)


def test_metrics_move_the_right_way_from_collapsed_to_spread() -> None:
    xc, coarse, fine = hierarchy(0.0, seed=3)
    collapsed = geometry_metrics(xc, coarse, fine=fine)
    x, coarse, fine = hierarchy(3.0, seed=3)
    spread = geometry_metrics(x, coarse, fine=fine)
    assert spread["class_spread_ratio"] > 10 * collapsed["class_spread_ratio"]
    assert spread["uniformity"] < collapsed["uniformity"]  # lower = more uniform
    assert collapsed["fine_knn_purity"] < collapsed["fine_knn_chance"] + 0.1  # chance ~ 1/3
    assert spread["fine_knn_purity"] > 0.99
    # Views: a small perturbation aligns far better than an unrelated embedding.
    rng = np.random.default_rng(4)
    near = geometry_metrics(x, coarse, views=(x, x + 0.01 * rng.normal(size=x.shape)))["alignment"]
    far = geometry_metrics(x, coarse, views=(x, rng.permutation(x)))["alignment"]
    assert near < 0.01 < far


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_png(tmp_path, method: str) -> None:
    x, coarse, fine = hierarchy(3.0, seed=5, n=120)
    coords = project_2d(x, method=method)
    assert coords.shape == (120, 2) and np.isfinite(coords).all()
    path = plot_projection(x, fine, tmp_path / "sub" / "proj.png", method=method, max_points=100)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="method"):
        project_2d(x, method="umap")
    with pytest.raises(ValueError, match="label_names"):
        plot_projection(x, fine, tmp_path / "p.png", label_names=["a", "b"])


def test_pca_projection_separates_well_separated_groups() -> None:
    x, coarse, _ = hierarchy(0.0, seed=6)
    coords = project_2d(x)
    # Coarse classes 10 apart with tiny noise: the first principal axis splits them.
    assert min(coords[coarse == 0, 0].max(), coords[coarse == 1, 0].max()) < max(
        coords[coarse == 0, 0].min(), coords[coarse == 1, 0].min()
    )


def test_pca_2d_is_sklearns_pca() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 9)) @ rng.normal(size=(9, 9)) + 4.0
    np.testing.assert_allclose(project_2d(x), PCA(n_components=2).fit_transform(x), atol=1e-8)
    one_dim = project_2d(x[:, :1])
    np.testing.assert_allclose(one_dim[:, 0], PCA(n_components=1).fit_transform(x[:, :1])[:, 0],
                               atol=1e-8)
    assert np.all(one_dim[:, 1] == 0.0)
