"""GEORGE-style sub-group discovery: cluster each class's frozen embeddings.

Sohoni et al. (2020) cluster the embeddings of a model trained on the task label, class by
class, and treat (class, cluster) pairs as groups for a group-robust classifier. Here, for
each class c of the training split:

1. project the class's points onto their top ``n_components`` principal directions, fitted
   on that class only (within-class variation is what the clusters must find). Features are
   *not* z-scored first: that would inflate noisy low-variance dimensions to the scale of the
   directions where the embedding actually puts its structure;
2. run k-means for k = 2..k_max and keep the k with the highest silhouette;
3. keep that clustering only if its silhouette beats, by ``min_gain``, the silhouette the same
   procedure reaches on a Gaussian sample with the class's own PCA variances. A single
   Gaussian blob still gets a positive silhouette when cut in two, so a fixed threshold would
   depend on dimension and sample size; the null reference does not. Otherwise: 1 cluster.

Validation (or any) points are assigned with their *known class label* to that class's
nearest centroid, as GEORGE does for model selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score

from pipeline.evaluation.common import check_features, check_labels


@dataclass(frozen=True)
class ClassClustering:
    """Clustering of one class: PCA (None when the class is too small) and k-means (None = 1)."""

    pca: PCA | None
    kmeans: KMeans | None
    silhouette: float  # best data silhouette over k >= 2 (nan when not computable)
    null_silhouette: float  # the Gaussian null's silhouette at the same k

    @property
    def n_clusters(self) -> int:
        return 1 if self.kmeans is None else int(self.kmeans.n_clusters)

    def assign(self, z: np.ndarray) -> np.ndarray:
        """(N, D) features of this class -> (N,) cluster index in [0, n_clusters)."""
        if self.kmeans is None or len(z) == 0:
            return np.zeros(len(z), dtype=np.int64)
        return self.kmeans.predict(self.pca.transform(z)).astype(np.int64)


@dataclass(frozen=True)
class GroupDiscovery:
    """Per-class clusterings of the training embeddings.

    Global cluster ids enumerate (class, cluster) pairs: class ``classes[i]``'s clusters are
    ``offsets[i] .. offsets[i] + n_clusters_i - 1``.
    """

    classes: np.ndarray  # (C,) sorted training labels
    per_class: tuple[ClassClustering, ...]
    offsets: np.ndarray  # (C,) first global id of each class

    @property
    def n_clusters(self) -> int:
        return int(sum(c.n_clusters for c in self.per_class))

    def assign(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N, D) features and (N,) class labels -> (N,) global cluster ids.

        Points whose label is not a training class get -1.
        """
        x = check_features(x, "x")
        y = check_labels(y, len(x), "y")
        out = np.full(len(x), -1, dtype=np.int64)
        for label, clustering, offset in zip(self.classes, self.per_class, self.offsets):
            mask = y == label
            out[mask] = offset + clustering.assign(x[mask])
        return out


def _best_kmeans(
    z: np.ndarray, k_max: int, seed: int, silhouette_sample: int
) -> tuple[KMeans | None, float, int]:
    """k-means for k = 2..k_max on (N, p) points; returns (model, silhouette, k) of the best."""
    best: tuple[KMeans | None, float, int] = (None, float("nan"), 1)
    for k in range(2, min(k_max, len(z) - 1) + 1):
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
        if len(np.unique(km.labels_)) < 2:
            continue  # duplicate points can leave k-means with a single occupied cluster
        sample = min(silhouette_sample, len(z))
        score = float(
            silhouette_score(z, km.labels_, sample_size=sample, random_state=seed)
            if sample < len(z)
            else silhouette_score(z, km.labels_)
        )
        if best[0] is None or score > best[1]:
            best = (km, score, k)
    return best


def cluster_class(
    z: np.ndarray,
    *,
    k_max: int = 5,
    n_components: int = 8,
    min_gain: float = 0.03,
    seed: int = 0,
    silhouette_sample: int = 2000,
) -> ClassClustering:
    """Cluster one class's (N, D) features; see the module docstring."""
    if len(z) < 4 or k_max < 2:
        return ClassClustering(None, None, float("nan"), float("nan"))
    p = min(n_components, z.shape[1], len(z) - 1)
    pca = PCA(n_components=p, random_state=seed).fit(z)
    zp = pca.transform(z)
    km, score, k = _best_kmeans(zp, k_max, seed, silhouette_sample)
    if km is None:
        return ClassClustering(pca, None, float("nan"), float("nan"))
    # Null reference: a Gaussian with the class's PCA variances, clustered the same way.
    rng = np.random.default_rng(seed)
    n_null = min(len(z), silhouette_sample)
    null = rng.normal(size=(n_null, p)) * np.sqrt(pca.explained_variance_)
    null_km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(null)
    null_score = float(silhouette_score(null, null_km.labels_))
    keep = score > null_score + min_gain
    return ClassClustering(pca, km if keep else None, score, null_score)


def discover_groups(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k_max: int = 5,
    n_components: int = 8,
    min_gain: float = 0.03,
    seed: int = 0,
) -> GroupDiscovery:
    """Cluster the (N, D) training embeddings within each class of the (N,) labels ``y``."""
    x = check_features(x, "train_x")
    y = check_labels(y, len(x), "train_y")
    if len(x) == 0:
        raise ValueError("train_x is empty; need points to cluster")
    classes = np.unique(y)
    per_class = tuple(
        cluster_class(
            x[y == label], k_max=k_max, n_components=n_components, min_gain=min_gain, seed=seed
        )
        for label in classes
    )
    sizes = np.array([c.n_clusters for c in per_class])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return GroupDiscovery(classes, per_class, offsets)


def smallest_group_recall(clusters: np.ndarray, groups: np.ndarray) -> float:
    """Share of the smallest true group's points that sit in clusters it is the majority of.

    A cluster "belongs" to the true group with the most points in it (ties: smaller group id).
    Recall 1 means every member of the rarest group landed in a cluster that a group-robust
    method would treat as that group; 0 means it was absorbed into majority clusters.
    """
    ids, counts = np.unique(groups, return_counts=True)
    smallest = ids[np.argmin(counts)]  # ties: smaller group id
    in_smallest = groups == smallest
    recalled = 0
    for cluster in np.unique(clusters[in_smallest]):
        members = groups[clusters == cluster]
        gids, gcounts = np.unique(members, return_counts=True)
        if gids[np.argmax(gcounts)] == smallest:
            recalled += int(np.sum(in_smallest & (clusters == cluster)))
    return recalled / int(in_smallest.sum())


def discovery_scores(clusters: np.ndarray, groups: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How well (N,) global cluster ids recover (N,) true groups nested in (N,) classes ``y``.

    - ``ari``: adjusted Rand index over all points. Clusters never cross classes, so this
      credits the class split too; a clustering with one cluster per class scores above 0.
    - ``ari_within_class``: mean over classes of the ARI inside the class (0 for a class that
      has several true groups but got one cluster; 1 if both sides have a single group).
    - ``smallest_group_recall``: see :func:`smallest_group_recall`.
    - ``n_clusters``: number of distinct cluster ids.
    """
    n = len(clusters)
    groups = check_labels(groups, n, "groups")
    y = check_labels(y, n, "y")
    within = [adjusted_rand_score(groups[y == c], clusters[y == c]) for c in np.unique(y)]
    return {
        "ari": float(adjusted_rand_score(groups, clusters)),
        "ari_within_class": float(np.mean(within)),
        "smallest_group_recall": smallest_group_recall(clusters, groups),
        "n_clusters": float(len(np.unique(clusters))),
    }
