"""GEORGE sub-group discovery (pipeline/evaluation/george.py) on synthetic embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.evaluation.george import george_discover
from pipeline.evaluation.grouping import discover_groups

D = 16
N_CLASS = 600


def two_mode_classes(
    seed: int, n_sub: int = 30, sub_loss: str = "high", m1: float = 10.0, m2: float = 10.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two classes of N_CLASS points in D dims: (x, y, true minority mask, ERM loss).

    Each class sits at distance 50 along its own axis (so L2 normalisation only rescales the
    structure, by about 1/50) with isotropic noise of 0.5 per dimension, and is bimodal along a
    second axis (modes at +-m1: 20 apart). In class 0, ``n_sub`` points of the + mode are moved
    by m2 = 10 along a third axis: a sub-group whose direction has far less variance (about
    0.05 * 10^2 = 5) than the modes' (10^2 = 100). Its ERM loss is high (``sub_loss="high"``:
    about 1.3 against 0.1) or lower than the rest (``"low"``).
    """
    rng = np.random.default_rng(seed)
    xs, ys, minority, losses = [], [], [], []
    for c in (0, 1):
        x = 0.5 * rng.normal(size=(N_CLASS, D))
        x[:, 4 * c] += 50.0
        x[:, 4 * c + 1] += m1 * np.where(np.arange(N_CLASS) % 2 == 0, 1.0, -1.0)
        sub = np.zeros(N_CLASS, dtype=bool)
        loss = rng.exponential(0.1, size=N_CLASS)
        if c == 0 and n_sub:
            sub[np.arange(n_sub) * 2] = True  # even rows: the + mode
            x[sub, 4 * c + 2] += m2
            loss[sub] = 1.0 + rng.exponential(0.3, n_sub) if sub_loss == "high" else 0.01
        xs.append(x)
        ys.append(np.full(N_CLASS, c))
        minority.append(sub)
        losses.append(loss)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(minority), np.concatenate(losses)


def best_match(ids: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the cluster that best matches the (N,) boolean ``truth``."""
    best = (0.0, 0.0)
    for cluster in np.unique(ids[truth]):
        inside = ids == cluster
        hit = float(np.sum(inside & truth))
        pr = (hit / inside.sum(), hit / truth.sum())
        best = max(best, pr, key=min)
    return best


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    x, y, sub, loss = two_mode_classes(0)
    vx, vy, vsub, _ = two_mode_classes(1)
    return {"x": x, "y": y, "sub": sub, "loss": loss, "vx": vx, "vy": vy, "vsub": vsub}


def test_overclustering_recovers_a_minority_that_the_best_silhouette_split_misses(data) -> None:
    # Why the plain clustering misses it: the cluster-averaged silhouette prefers the split of
    # the two modes (k = 2, about 0.84 on this data) to {mode-, mode+ bulk, sub-group} (k = 3,
    # about 0.78): the modes are 20 apart, the sub-group only 10 from its mode, so splitting
    # it off lowers the mode+ bulk's silhouette more than it raises the sub-group's.
    # Why over-clustering finds it: splitting the + mode into 5 gives the sub-group a cluster of
    # its own (it is 10 away from a bulk whose points spread about 2.8 apart). Its points'
    # silhouette then rises (about 0.57 -> 0.75: their own cluster is now tight and the nearest
    # other one 10 away, instead of sharing a cluster with a bulk 10 away), and its mean loss is
    # above the + mode's, so it is kept; the bulk's four pieces are arbitrary cuts of a Gaussian
    # whose silhouette falls (a is about b) and whose loss is below the mode's mean (the
    # sub-group lifts that mean), so they merge back. Generally: a piece is kept when its
    # offset from its mode, in units of its own spread, exceeds the mode separation in units
    # of that offset, and when the ERM model finds it harder than its mode.
    # k-means, not the default GMM: with reduction "none" a full-covariance GMM has 16 x 16
    # covariances fitted from about 60 points per over-cluster and cuts the 30-point
    # sub-group in two (6 + 24 here); GEORGE pairs its GMM with a 2-D UMAP (see the umap test).
    d = george_discover(data["x"], data["y"], data["loss"], data["vx"], data["vy"],
                        cluster_method="kmeans", seed=0)  # GEORGE's size thresholds: 25 and 25
    for ids, truth in ((d.assign(data["x"], data["y"]), data["sub"]),
                       (d.assign(data["vx"], data["vy"]), data["vsub"])):
        precision, recall = best_match(ids, truth)
        assert precision >= 0.8 and recall >= 0.8, (precision, recall, d.diagnostics())
    diag = d.diagnostics()
    assert [c["k"] for c in diag] == [2, 2]  # the base step found the modes only
    assert [c["n_kept_overclusters"] for c in diag] == [1, 0]  # class 1 has nothing to find

    plain = discover_groups(data["x"], data["y"], seed=0)
    precision, recall = best_match(plain.assign(data["x"], data["y"]), data["sub"])
    assert precision < 0.5 or recall < 0.5, (precision, recall)


def test_a_split_with_lower_loss_than_its_parent_is_merged_back(data) -> None:
    # The same geometry as above (the sub-group passes the silhouette and size tests there),
    # but the ERM model finds the sub-group easy: the loss criterion alone rejects it.
    x, y, sub, loss = two_mode_classes(0, sub_loss="low")
    d = george_discover(x, y, loss, data["vx"], data["vy"], cluster_method="kmeans", seed=0)
    assert [c["n_kept_overclusters"] for c in d.diagnostics()] == [0, 0]
    assert [c["n_groups"] for c in d.diagnostics()] == [2, 2]
    precision, recall = best_match(d.assign(x, y), sub)
    assert precision < 0.5


def test_pieces_that_do_not_beat_their_parent_are_merged_even_with_equal_losses(data) -> None:
    # Class 1 of the fixture: two Gaussian modes and no sub-group. Equal losses pass the loss
    # test (>=, exactly), and min_size / min_val of 1 pass every piece, so the silhouette test
    # alone must merge the five pieces of each mode back: cut out of one Gaussian, their
    # silhouette drops from about 0.87 (the modes' split) to about 0.05.
    # Not tested: a single isotropic Gaussian class. There the silhouette is about 0.05 before
    # and after over-clustering, and 20% (16-D) to 40% (2-D) of the pieces pass GEORGE's
    # silhouette test by chance; on a blob only the loss and size tests stand in their way.
    mode = data["y"] == 1
    d = george_discover(data["x"][mode], data["y"][mode], np.full(N_CLASS, 0.5),
                        data["vx"], data["vy"], cluster_method="kmeans", min_size=1, min_val=1)
    (diag,) = d.diagnostics()
    assert diag["k"] == 2 and diag["n_kept_overclusters"] == 0 and diag["n_groups"] == 2


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        ({"min_size": 30, "min_val": 30}, 1),  # thresholds are inclusive
        ({"min_size": 31, "min_val": 1}, 0),
        ({"min_size": 1, "min_val": 31}, 0),
        ({"min_size": 1, "min_val": 1, "min_fraction": 0.06}, 0),  # 0.06 * 600 = 36 > 30
    ],
)
def test_size_thresholds_are_honoured(data, settings, kept) -> None:
    d = george_discover(data["x"], data["y"], data["loss"], data["vx"], data["vy"],
                        cluster_method="kmeans", seed=0, **settings)
    assert d.diagnostics()[0]["n_kept_overclusters"] == kept
    if not kept:
        assert d.diagnostics()[0]["n_groups"] == 2


def test_a_tiny_subcluster_below_min_size_is_merged_back() -> None:
    x, y, sub, loss = two_mode_classes(0, n_sub=12)
    vx, vy, _, _ = two_mode_classes(1, n_sub=12)
    merged = george_discover(x, y, loss, vx, vy, cluster_method="kmeans", min_size=25, seed=0)
    assert merged.diagnostics()[0]["n_kept_overclusters"] == 0
    found = george_discover(x, y, loss, vx, vy, cluster_method="kmeans", min_size=10, min_val=10,
                            seed=0)
    assert found.diagnostics()[0]["n_kept_overclusters"] == 1
    assert min(best_match(found.assign(x, y), sub)) >= 0.8


def blob_parent(small: int, small_loss: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class: four tight blobs of 70 points and one of ``small`` at +20, a Gaussian at -20.

    Returns (x, loss, val_x). With k_max=2 the base step must split the two sides, and the
    over-clustering of the + side finds the five blobs.
    """
    rng = np.random.default_rng(5)
    centres = 4.0 * np.eye(D)[1:6]  # the + side's five blobs, sqrt(32) apart

    def side(sizes: list[int]) -> np.ndarray:
        plus = np.concatenate([c + 0.2 * rng.normal(size=(s, D)) for c, s in zip(centres, sizes)])
        minus = rng.normal(size=(290, D)) - 20.0 * np.eye(D)[0]
        return np.concatenate([plus, minus]) + 40.0 * np.eye(D)[7]

    x = side([70, 70, 70, 70, small])
    loss = np.full(len(x), 0.5)
    loss[280:280 + small] = small_loss
    return x, loss, side([70, 70, 70, 70, small])


def test_a_parent_whose_overclusters_are_all_kept_or_too_small_to_stand_is_dropped() -> None:
    # Four blobs kept, the fifth (8 points) too small: GEORGE would keep the parent's remnant
    # as a group of 8 points; here it joins the nearest kept blob and the parent is dropped.
    x, loss, vx = blob_parent(small=8, small_loss=0.5)
    y = np.zeros(len(x), dtype=np.int64)
    d = george_discover(x, y, loss, vx, y, k_max=2, cluster_method="kmeans", seed=0)
    (diag,) = d.diagnostics()
    assert diag["n_kept_overclusters"] == 4
    assert diag["n_groups"] == 5  # four blobs + the - side; no parent id for the + side
    assert sorted(np.bincount(d.assign(x, y))) == [70, 70, 70, 78, 290]

    # A rejected (low-loss) fifth blob of 60 points: the parent keeps its id for it (GEORGE).
    x, loss, vx = blob_parent(small=60, small_loss=0.1)
    y = np.zeros(len(x), dtype=np.int64)
    d = george_discover(x, y, loss, vx, y, k_max=2, cluster_method="kmeans", seed=0)
    assert d.diagnostics()[0]["n_kept_overclusters"] == 4
    assert sorted(np.bincount(d.assign(x, y))) == [60, 70, 70, 70, 70, 290]


def test_assign_uses_each_class_groups_and_is_deterministic(data) -> None:
    kwargs = {"cluster_method": "kmeans", "min_size": 10, "min_val": 10, "seed": 4}
    d = george_discover(data["x"], data["y"], data["loss"], data["vx"], data["vy"], **kwargs)
    again = george_discover(data["x"], data["y"], data["loss"], data["vx"], data["vy"], **kwargs)
    vx = np.concatenate([data["vx"], data["vx"][:5]])
    vy = np.concatenate([data["vy"], np.full(5, 7)])  # class 7 was never trained on
    ids = d.assign(vx, vy)
    assert ids.dtype == np.int64 and ids.shape == (len(vx),)
    assert np.all(ids[-5:] == -1)
    for label, offset, clustering in zip(d.classes, d.offsets, d.per_class):
        in_class = ids[vy == label]
        assert np.all((in_class >= offset) & (in_class < offset + clustering.n_groups))
    assert d.n_clusters == sum(c.n_groups for c in d.per_class) == 5
    # Training points land in the groups they were fitted into.
    assert [c.group_sizes for c in d.per_class] == [
        tuple(np.bincount(d.assign(data["x"], data["y"])[data["y"] == c] - o))
        for c, o in zip(d.classes, d.offsets)
    ]
    np.testing.assert_array_equal(ids, again.assign(vx, vy))
    assert d.diagnostics() == again.diagnostics()


@pytest.mark.slow  # ~20 s of numba compilation, whatever the data size
def test_the_umap_path_returns_valid_ids() -> None:
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(120, D)) + 10.0 * np.eye(D)[c] for c in (0, 1)])
    y = np.repeat([0, 1], 120)
    vx, vy = x[::3] + 0.01 * rng.normal(size=(80, D)), y[::3]
    d = george_discover(x, y, rng.exponential(size=240), vx, vy, reduction="umap",
                        k_max=4, min_size=5, min_val=2, seed=0)  # GEORGE's pairing: UMAP + GMM
    for xs, ys in ((x, y), (vx, vy)):
        ids = d.assign(xs, ys)
        assert ids.min() >= 0 and ids.max() < d.n_clusters
        for label, offset, clustering in zip(d.classes, d.offsets, d.per_class):
            assert np.all((ids[ys == label] >= offset)
                          & (ids[ys == label] < offset + clustering.n_groups))
    assert all(2 <= c["k"] <= 4 for c in d.diagnostics())


def test_the_none_path_never_imports_umap(monkeypatch) -> None:
    # A None entry in sys.modules makes any import of that name raise ImportError, whatever
    # the other tests imported before.
    monkeypatch.setitem(sys.modules, "umap", None)
    monkeypatch.setitem(sys.modules, "numba", None)
    r = np.random.default_rng(0)
    x, y = r.normal(size=(60, 4)), np.repeat([0, 1], 30)
    d = george_discover(x, y, np.ones(60), x, y, cluster_method="kmeans", k_max=3, min_size=3)
    assert d.assign(x, y).min() >= 0


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"reduction": "pca"}, "reduction"),
        ({"cluster_method": "dbscan"}, "cluster_method"),
        ({"k_max": 1}, "k_max"),
        ({"overcluster_factor": 0}, "overcluster_factor"),
        ({"min_size": 0}, "min_size"),
        ({"min_fraction": 1.5}, "min_fraction"),
        ({"min_val": -1}, "min_val"),
        ({"umap_neighbors": 1}, "umap_neighbors"),
        ({"umap_min_dist": -0.1}, "umap_min_dist"),
        ({"umap_components": 0}, "umap_components"),
        ({"silhouette_sample": 2}, "silhouette_sample"),
        ({"seed": -1}, "seed"),
        ({"train_loss": np.ones(3)}, "train_loss"),
        ({"train_loss": np.full(10, np.nan)}, "train_loss"),
        ({"val_x": np.ones((2, 5))}, "val_x"),
        ({"val_y": np.zeros(3)}, "val_y"),
        ({"train_y": np.zeros(4)}, "train_y"),
    ],
)
def test_bad_arguments_are_named(change, name) -> None:
    arrays = {"train_x": np.ones((10, 4)), "train_y": np.zeros(10), "train_loss": np.ones(10),
              "val_x": np.ones((2, 4)), "val_y": np.zeros(2)}
    arrays.update({k: v for k, v in change.items() if k in arrays})
    options = {k: v for k, v in change.items() if k not in arrays}
    with pytest.raises(ValueError, match=name):
        george_discover(arrays.pop("train_x"), arrays.pop("train_y"), arrays.pop("train_loss"),
                        arrays.pop("val_x"), arrays.pop("val_y"), **options)
