"""GEORGE sub-group discovery with loss-aware over-clustering (Sohoni et al., NeurIPS 2020).

:mod:`pipeline.evaluation.grouping` keeps a class's most cluster-like structure and nothing
else, so a small sub-group inside a class with a stronger split (two modes, say) is absorbed
into one of the modes. GEORGE's "overcluster" step targets exactly that case: it splits every
cluster further and keeps a piece as its own group only when the piece is both a better
cluster than before (silhouette) and harder for the ERM model (mean loss), which is what a
hidden minority looks like. For each class c of the training split:

1. L2-normalise every embedding (GEORGE's default ``normalize``; see grouping.py for why).
2. Reduce: ``"none"`` keeps the normalised D-dim points (GEORGE's NoOpReducer); ``"umap"``
   fits UMAP on the class's training points (GEORGE's UMAPReducer defaults: n_neighbors 10,
   min_dist 0) and maps every other point of the class with ``.transform``.
3. Base clustering: GMM or k-means for k = 2..k_max; keep the k with the highest
   cluster-averaged silhouette (ties: the larger k, as GEORGE's ``>=``).
4. Over-clustering, as GEORGE's ``OverclusterModel``: every base cluster is split on its own
   into ``overcluster_factor`` sub-clusters (a separate model per base cluster, so each
   over-cluster lies inside one parent by construction; GEORGE does not fit one model with
   k * factor clusters on the whole class). Over-cluster o of parent p is kept iff
      - its points' mean silhouette under the over-clustered labelling is greater than both
        0 and *the same points'* mean silhouette under the base labelling (GEORGE compares
        the same points before and after, not o against p's own mean silhouette);
      - the mean ERM loss of its training points is >= that of p's training points;
      - it holds >= max(min_fraction * N_c, min_size) training points and >= min_val
        validation points of class c (GEORGE: 0.5% of N_c, 25, and 25).
   Rejected over-clusters merge back into p; p keeps its own id unless every one of its
   over-clusters was kept, in which case p is dropped (GEORGE's ``create_label_map``).
   One deviation: GEORGE keeps p's remnant whatever its size; here a remnant that holds fewer
   training (or validation) points than a kept over-cluster must is dissolved into the kept
   sibling with the nearest centroid, because group DRO chases a group whose loss rests on a
   handful of points (grouping.py's ``min_cluster_size`` has the same reason).

Group ids enumerate (class, group) pairs like :class:`grouping.GroupDiscovery`; any split is
assigned with its known class label through that class's reducer and models.

Silhouettes are quadratic in the number of points, so both the choice of k and the
over-cluster test use a seeded subsample of at most ``silhouette_sample`` of the class's
training points (GEORGE uses all points; with N_c <= silhouette_sample this is identical).
An over-cluster without a point in the subsample has no silhouette and is not kept.

Choice of method: a full-covariance GMM (GEORGE's default) is meant for the low-dimensional
UMAP output; on "none" with D in the hundreds and a few hundred points per class its
covariances are rank-deficient (only ``reg_covar`` keeps them invertible), so k-means is the
sounder pairing there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_samples
from sklearn.mixture import GaussianMixture

from pipeline.evaluation.common import check_features, check_labels
from pipeline.evaluation.grouping import GroupDiscovery, cluster_averaged_silhouette, l2_normalise

REDUCTIONS = ("none", "umap")
CLUSTER_METHODS = ("gmm", "kmeans")
# GEORGE's AutoKMixtureModel restarts both GMM and k-means 3 times (n_init=3).
_N_INIT = 3
# The smallest class that gets clustered: k = 2 needs a silhouette, which needs at least
# 3 points, and UMAP's neighbour graph needs a few more to mean anything.
_MIN_CLASS_POINTS = 4

Model = GaussianMixture | KMeans


def _make_model(method: str, k: int, seed: int) -> Model:
    if method == "gmm":
        return GaussianMixture(n_components=k, n_init=_N_INIT, random_state=seed)
    return KMeans(n_clusters=k, n_init=_N_INIT, random_state=seed)


def _predict(model: Model, allowed: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, p) points -> (N,) component of ``model``, restricted to the ``allowed`` components.

    A component that got no training point has no group; a new point the model puts there
    goes to its most likely (GMM) or nearest (k-means) allowed component instead.
    """
    labels = model.predict(z).astype(np.int64)
    stray = ~np.isin(labels, allowed)
    if stray.any():
        if isinstance(model, GaussianMixture):
            best = np.argmax(model.predict_proba(z[stray])[:, allowed], axis=1)
        else:
            best = np.argmin(model.transform(z[stray])[:, allowed], axis=1)
        labels[stray] = allowed[best]
    return labels


def _silhouette_rows(n: int, silhouette_sample: int, seed: int) -> np.ndarray:
    """Sorted indices of the seeded silhouette subsample of n points (all when n is small)."""
    if n <= silhouette_sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, silhouette_sample, replace=False))


def _can_score(labels: np.ndarray) -> bool:
    """sklearn's silhouette needs 2 <= number of labels <= number of points - 1."""
    return 2 <= len(np.unique(labels)) <= len(labels) - 1


def _reduce(
    z: np.ndarray, reduction: str, neighbors: int, min_dist: float, components: int, seed: int
) -> tuple[Any | None, np.ndarray]:
    """Step 2 on one class's (N, D) normalised training points -> (reducer, (N, p) coords)."""
    if reduction == "none":
        return None, z
    # Lazy: umap pulls in numba, whose import and JIT cost seconds; "none" must not pay it.
    import umap
    from numba.core.errors import NumbaWarning

    reducer = umap.UMAP(
        n_components=components,
        n_neighbors=min(neighbors, len(z) - 1),  # umap would truncate itself, with a warning
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,  # a seed forces one thread anyway; saying so avoids umap's warning
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaWarning)  # as GEORGE's UMAPReducer
        reducer.fit(z)
        # GEORGE clusters transform(train), not the fit's embedding; umap returns embedding_
        # for the exact training array, so this equals what assign() computes later.
        coords = reducer.transform(z)
    return reducer, np.asarray(coords, dtype=np.float64)


def _apply_reducer(reducer: Any | None, z: np.ndarray) -> np.ndarray:
    if reducer is None or len(z) == 0:
        return z if reducer is None else np.zeros((0, reducer.n_components))
    from numba.core.errors import NumbaWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaWarning)
        return np.asarray(reducer.transform(z), dtype=np.float64)


@dataclass(frozen=True)
class GeorgeClassClustering:
    """One class's fitted reducer, base model, per-parent over-cluster models and label map.

    Parents are the base components that hold training points (``parents[i]`` is the base
    component of parent i). ``label_map[i, j]`` is the local group id of over-cluster j of
    parent i (-1: no training point). ``base_model is None``: the class is one group.
    """

    reducer: Any | None
    base_model: Model | None
    parents: np.ndarray  # (P,) base components with training points
    sub_models: tuple[Model | None, ...]  # (P,) None: the parent was not over-clustered
    sub_allowed: tuple[np.ndarray, ...]  # (P,) each sub-model's components with training points
    label_map: np.ndarray  # (P, overcluster_factor) local group ids
    k: int  # the chosen base k (1 when the class was not clustered)
    silhouette: float  # the chosen k's cluster-averaged silhouette (nan when not clustered)
    n_kept: int  # over-clusters kept as groups of their own
    n_groups: int
    group_sizes: tuple[int, ...]  # training points per local group

    @property
    def n_clusters(self) -> int:
        """Its groups (the name :class:`grouping.GroupDiscovery` reads)."""
        return self.n_groups

    def overclusters(self, zr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, p) reduced points -> ((N,) parent index, (N,) over-cluster index in its parent)."""
        parent = np.searchsorted(self.parents, _predict(self.base_model, self.parents, zr))
        sub = np.zeros(len(zr), dtype=np.int64)
        for i, model in enumerate(self.sub_models):
            mask = parent == i
            if model is not None and mask.any():
                sub[mask] = _predict(model, self.sub_allowed[i], zr[mask])
        return parent, sub

    def assign(self, x: np.ndarray) -> np.ndarray:
        """(N, D) raw features of this class -> (N,) local group id in [0, n_groups)."""
        if self.base_model is None or len(x) == 0:
            return np.zeros(len(x), dtype=np.int64)
        parent, sub = self.overclusters(_apply_reducer(self.reducer, l2_normalise(x)))
        return self.label_map[parent, sub].astype(np.int64)


@dataclass(frozen=True)
class GeorgeDiscovery(GroupDiscovery):
    """Per-class GEORGE clusterings: :class:`grouping.GroupDiscovery`'s ids and ``assign``
    (class ``classes[i]``'s groups are ``offsets[i] .. offsets[i] + n_groups_i - 1``; points
    whose label is not a training class get -1), plus GEORGE's diagnostics."""

    def diagnostics(self) -> list[dict[str, float | int]]:
        """Per class: label, chosen k, its silhouette, kept over-clusters, groups, sizes."""
        return [
            {
                "class": int(label),
                "k": c.k,
                "silhouette": c.silhouette,
                "n_kept_overclusters": c.n_kept,
                "n_groups": c.n_groups,
                "min_group_size": min(c.group_sizes),
            }
            for label, c in zip(self.classes, self.per_class)
        ]


def _best_k(
    zr: np.ndarray, method: str, k_max: int, rows: np.ndarray, seed: int
) -> tuple[Model, np.ndarray, int, float] | None:
    """Step 3: (model, (N,) labels, k, score) of the best k in 2..k_max, or None if none scores."""
    best: tuple[Model, np.ndarray, int, float] | None = None
    for k in range(2, min(k_max, len(zr) - 1) + 1):
        model = _make_model(method, k, seed).fit(zr)
        labels = model.predict(zr).astype(np.int64)
        if not _can_score(labels[rows]):
            continue
        score = cluster_averaged_silhouette(zr[rows], labels[rows])
        if best is None or score >= best[3]:  # ties: the larger k (GEORGE's >=)
            best = (model, labels, k, score)
    return best


def _mean_by(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(N,) values, (N,) labels in [0, n) -> (n,) mean per label (nan where empty)."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.bincount(labels, weights=values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _one_group(n: int) -> GeorgeClassClustering:
    return GeorgeClassClustering(
        reducer=None, base_model=None, parents=np.zeros(0, dtype=np.int64), sub_models=(),
        sub_allowed=(), label_map=np.zeros((0, 0), dtype=np.int64), k=1,
        silhouette=float("nan"), n_kept=0, n_groups=1, group_sizes=(n,),
    )


def _cluster_class(
    x: np.ndarray,
    loss: np.ndarray,
    val_x: np.ndarray,
    *,
    reduction: str,
    cluster_method: str,
    k_max: int,
    overcluster_factor: int,
    min_size: int,
    min_fraction: float,
    min_val: int,
    umap_neighbors: int,
    umap_min_dist: float,
    umap_components: int,
    silhouette_sample: int,
    seed: int,
) -> GeorgeClassClustering:
    """Steps 1-4 for one class: (N, D) training points, (N,) losses, (M, D) validation points."""
    n = len(x)
    if n < _MIN_CLASS_POINTS:
        return _one_group(n)
    reducer, zr = _reduce(
        l2_normalise(x), reduction, umap_neighbors, umap_min_dist, umap_components, seed
    )
    rows = _silhouette_rows(n, silhouette_sample, seed)
    best = _best_k(zr, cluster_method, k_max, rows, seed)
    if best is None:
        return _one_group(n)
    base_model, base_labels, k, score = best
    parents = np.unique(base_labels)
    parent = np.searchsorted(parents, base_labels)  # (N,) parent index 0..P-1
    n_parents = len(parents)
    f = overcluster_factor
    train_min = max(min_fraction * n, min_size)

    # Step 4a: split every parent on its own. A parent with fewer than 2 * train_min points
    # cannot yield two groups that both meet the size threshold (a lone kept piece would
    # leave a remnant that the size rule dissolves again), so it is not split at all.
    sub_models: list[Model | None] = []
    sub_allowed: list[np.ndarray] = []
    sub = np.zeros(n, dtype=np.int64)
    for i in range(n_parents):
        members = parent == i
        n_sub = min(f, int(members.sum()))
        if n_sub < 2 or members.sum() < 2 * train_min:
            sub_models.append(None)
            sub_allowed.append(np.zeros(1, dtype=np.int64))
            continue
        model = _make_model(cluster_method, n_sub, seed).fit(zr[members])
        sub[members] = model.predict(zr[members])
        sub_models.append(model)
        sub_allowed.append(np.unique(sub[members]))
    oc = parent * f + sub  # (N,) over-cluster id within the class
    n_oc = n_parents * f

    fitted = GeorgeClassClustering(
        reducer, base_model, parents, tuple(sub_models), tuple(sub_allowed),
        np.zeros((0, 0), dtype=np.int64), k, score, 0, 0, (),
    )
    if len(val_x):
        val_parent, val_sub = fitted.overclusters(_apply_reducer(reducer, l2_normalise(val_x)))
        val_counts = np.bincount(val_parent * f + val_sub, minlength=n_oc)
    else:
        val_counts = np.zeros(n_oc, dtype=np.int64)
    counts = np.bincount(oc, minlength=n_oc)

    # Step 4b: GEORGE's filter. Silhouettes of the same (subsampled) points before and after.
    new_sil = np.full(n_oc, np.nan)
    old_sil = np.full(n_oc, np.nan)
    if _can_score(oc[rows]):
        new_sil = _mean_by(silhouette_samples(zr[rows], oc[rows]), oc[rows], n_oc)
        old_sil = _mean_by(silhouette_samples(zr[rows], base_labels[rows]), oc[rows], n_oc)
    oc_loss = _mean_by(loss, oc, n_oc)
    parent_loss = _mean_by(loss, parent, n_parents)
    with np.errstate(invalid="ignore"):  # nan silhouettes compare False: not kept
        keep = (
            (new_sil > np.maximum(old_sil, 0.0))
            & (oc_loss >= np.repeat(parent_loss, f))
            & (counts >= train_min)
            & (val_counts >= min_val)
        )
    keep &= counts > 0
    # An unsplit parent is a single over-cluster identical to the parent: never "kept".
    keep &= np.repeat([m is not None for m in sub_models], f)

    # Step 4c: GEORGE's label map, in its order (parent, then its kept over-clusters).
    label_map = np.full((n_parents, f), -1, dtype=np.int64)
    next_id = 0
    for i in range(n_parents):
        present = counts[i * f:(i + 1) * f] > 0
        kept = keep[i * f:(i + 1) * f]
        rejected = present & ~kept
        remnant_ok = (
            counts[i * f:(i + 1) * f][rejected].sum() >= train_min
            and val_counts[i * f:(i + 1) * f][rejected].sum() >= min_val
        )
        if rejected.any() and (remnant_ok or not kept.any()):
            label_map[i, rejected] = next_id  # the parent keeps an id for merged-back points
            next_id += 1
        for j in np.flatnonzero(kept):
            label_map[i, j] = next_id
            next_id += 1
        if rejected.any() and label_map[i, rejected][0] < 0:
            # The remnant is too small to be a group (deviation from GEORGE, see module doc):
            # each rejected over-cluster joins the kept sibling with the nearest centroid.
            kept_j = np.flatnonzero(kept)
            centres = np.array([zr[oc == i * f + j].mean(axis=0) for j in kept_j])
            for j in np.flatnonzero(rejected):
                centre = zr[oc == i * f + j].mean(axis=0)
                label_map[i, j] = label_map[i, kept_j[np.argmin(((centres - centre) ** 2).sum(1))]]
    groups = label_map[parent, sub]
    return GeorgeClassClustering(
        reducer=reducer, base_model=base_model, parents=parents, sub_models=tuple(sub_models),
        sub_allowed=tuple(sub_allowed), label_map=label_map, k=k, silhouette=score,
        n_kept=int(keep.sum()), n_groups=next_id,
        group_sizes=tuple(int(c) for c in np.bincount(groups, minlength=next_id)),
    )


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def george_discover(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_loss: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    reduction: str = "none",
    cluster_method: str = "gmm",
    k_max: int = 10,
    overcluster_factor: int = 5,
    min_size: int = 25,
    min_fraction: float = 0.005,
    min_val: int = 25,
    umap_neighbors: int = 10,
    umap_min_dist: float = 0.0,
    umap_components: int = 2,
    silhouette_sample: int = 2000,
    seed: int = 0,
) -> GeorgeDiscovery:
    """GEORGE's per-class clustering of (N, D) ``train_x`` with (N,) labels and ERM losses.

    ``train_loss`` is each training point's cross-entropy under the ERM model; (M, D)
    ``val_x`` with (M,) ``val_y`` only counts validation points per over-cluster (the
    ``min_val`` rule). The defaults ``min_size=25``, ``min_fraction=0.005`` and
    ``min_val=25`` are GEORGE's ``sz_threshold_abs`` / ``sz_threshold_pct``; lower them to
    find 20-30-point groups. A training class without validation points keeps no
    over-cluster unless ``min_val=0``. See the module docstring for the steps.
    """
    train_x = check_features(train_x, "train_x")
    if len(train_x) == 0:
        raise ValueError("train_x is empty; need points to cluster")
    train_y = check_labels(train_y, len(train_x), "train_y")
    train_loss = np.asarray(train_loss)
    if train_loss.shape != (len(train_x),):
        raise ValueError(
            f"train_loss must have shape ({len(train_x)},) to match train_x; got {train_loss.shape}"
        )
    if train_loss.dtype.kind not in "iuf" or not np.isfinite(train_loss).all():
        raise ValueError("train_loss must hold finite real per-point losses")
    train_loss = train_loss.astype(np.float64)
    val_x = check_features(val_x, "val_x")
    if val_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"val_x has {val_x.shape[1]} features but train_x has {train_x.shape[1]}"
        )
    val_y = check_labels(val_y, len(val_x), "val_y")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if cluster_method not in CLUSTER_METHODS:
        raise ValueError(f"cluster_method must be one of {CLUSTER_METHODS}; got {cluster_method!r}")
    k_max = _check_int(k_max, "k_max", 2)
    overcluster_factor = _check_int(overcluster_factor, "overcluster_factor", 1)
    min_size = _check_int(min_size, "min_size", 1)
    min_val = _check_int(min_val, "min_val", 0)
    umap_neighbors = _check_int(umap_neighbors, "umap_neighbors", 2)
    umap_components = _check_int(umap_components, "umap_components", 1)
    silhouette_sample = _check_int(silhouette_sample, "silhouette_sample", 3)
    seed = _check_int(seed, "seed", 0)
    if not (isinstance(min_fraction, (int, float)) and 0.0 <= min_fraction < 1.0):
        raise ValueError(f"min_fraction must be a number in [0, 1); got {min_fraction!r}")
    if not (isinstance(umap_min_dist, (int, float)) and 0.0 <= umap_min_dist):
        raise ValueError(f"umap_min_dist must be a number >= 0; got {umap_min_dist!r}")

    classes = np.unique(train_y)
    per_class = tuple(
        _cluster_class(
            train_x[train_y == label],
            train_loss[train_y == label],
            val_x[val_y == label],
            reduction=reduction,
            cluster_method=cluster_method,
            k_max=k_max,
            overcluster_factor=overcluster_factor,
            min_size=min_size,
            min_fraction=float(min_fraction),
            min_val=min_val,
            umap_neighbors=umap_neighbors,
            umap_min_dist=float(umap_min_dist),
            umap_components=umap_components,
            silhouette_sample=silhouette_sample,
            seed=seed,
        )
        for label in classes
    )
    return GeorgeDiscovery.of(classes, per_class)
