"""GEORGE-style sub-group discovery: cluster each class's frozen embeddings.

Sohoni et al. (2020) cluster the embeddings of a model trained on the task label, class by
class, and treat (class, cluster) pairs as groups for a group-robust classifier. Here, for
each class c of the training split:

1. L2-normalise every embedding (GEORGE's default ``normalize``). Contrastive losses only see
   directions (cosine similarities), so the norm is a nuisance that the classifier head sets;
   on real embeddings it varies by about 30% within a class and, left in, it is the largest
   within-class direction, which hides a small sub-group that differs by direction.
2. project onto the class's top ``n_components`` principal directions (fitted on that class
   only: within-class variation is what the clusters must find). No z-scoring: that would
   inflate noisy low-variance dimensions to the scale of the directions with the structure.
3. run k-means for k = 2..k_max and keep the k with the highest *cluster-averaged*
   silhouette (mean over clusters of each cluster's mean silhouette), GEORGE's selection
   score. The plain silhouette averages over points, so a minority sub-group of 5% of a
   class barely moves it and splitting the bulk of the class wins; averaging per cluster
   gives a small, well-separated cluster the weight of a large one, and a lone outlier
   (silhouette 0 by definition) drags the score down instead of up. Clusters of fewer than
   ``min_cluster_size`` training points are dissolved into the nearest remaining centroid:
   group DRO cannot use a group whose mean loss rests on a few points (it chases them: a
   1-point outlier cluster took spurious digits' discovered-group worst-group accuracy to
   28%). GEORGE drops over-clusters below max(0.5% of N, 25) points for the same reason;
   the default 10 sits below the 20-30-point minority groups of the embedded suite.
4. keep that clustering only if its score beats, by ``min_gain``, the score the *same
   procedure* (normalise, PCA, choice of k) reaches on a Gaussian sample with the class's
   own raw mean and covariance. k-means finds "clusters" in any blob, and how good they look
   depends on dimension, size and the normalisation; the null reference does not. Otherwise:
   one cluster.

Validation (or any) points are assigned with their *known class label* to that class's
nearest centroid, as GEORGE does for model selection.

Known limit: a sub-group is found only if it is the class's most cluster-like structure. An
embedding that keeps stronger within-class structure (spread and autoencoder embeddings keep
the digit identity) gets that structure's clusters instead, even when the minority is
linearly separable; GEORGE's loss-based over-clustering targets that case and is not
implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_samples

from pipeline.evaluation.common import check_features, check_labels


def l2_normalise(z: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def nearest_centroid(z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, p) points, (k, p) centroids -> (N,) index of the nearest centroid (ties: lowest)."""
    sq = (z * z).sum(axis=1)[:, None] - 2.0 * z @ centroids.T + (centroids * centroids).sum(axis=1)
    return np.argmin(sq, axis=1).astype(np.int64)


@dataclass(frozen=True)
class ClassClustering:
    """Clustering of one class: PCA (None when the class is too small) and centroids (None = 1)."""

    pca: PCA | None
    centroids: np.ndarray | None  # (k, p) in the PCA coordinates
    silhouette: float  # best cluster-averaged silhouette over k >= 2 (nan when not computable)
    null_silhouette: float  # the Gaussian null's best score, same procedure
    normalize: bool = True

    @property
    def n_clusters(self) -> int:
        return 1 if self.centroids is None else len(self.centroids)

    def assign(self, z: np.ndarray) -> np.ndarray:
        """(N, D) features of this class -> (N,) cluster index in [0, n_clusters)."""
        if self.centroids is None or len(z) == 0:
            return np.zeros(len(z), dtype=np.int64)
        z = l2_normalise(z) if self.normalize else z
        return nearest_centroid(self.pca.transform(z), self.centroids)


@dataclass(frozen=True)
class GroupDiscovery:
    """Per-class clusterings of the training embeddings.

    Global cluster ids enumerate (class, cluster) pairs: class ``classes[i]``'s clusters are
    ``offsets[i] .. offsets[i] + n_clusters_i - 1``.
    """

    classes: np.ndarray  # (C,) sorted training labels
    per_class: tuple[ClassClustering, ...]
    offsets: np.ndarray  # (C,) first global id of each class

    @classmethod
    def of(cls, classes: np.ndarray, per_class: tuple[Any, ...]) -> Any:
        """The discovery of per-class clusterings (each with ``n_clusters`` and ``assign``),
        global ids numbered class after class."""
        sizes = np.array([c.n_clusters for c in per_class])
        return cls(classes, per_class, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))

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


def cluster_averaged_silhouette(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean over clusters of the mean silhouette of the cluster's points; (N, p), (N,) -> float.

    Singleton clusters have silhouette 0 (sklearn's convention), so they count as no structure.
    """
    s = silhouette_samples(z, labels)
    return float(np.mean([s[labels == c].mean() for c in np.unique(labels)]))


def _reduce(z: np.ndarray, n_components: int, normalize: bool, seed: int) -> tuple[PCA, np.ndarray]:
    """Steps 1-2 of the module docstring: (N, D) -> fitted PCA and (N, p) coordinates."""
    z = l2_normalise(z) if normalize else z
    pca = PCA(n_components=min(n_components, z.shape[1], len(z) - 1), random_state=seed).fit(z)
    return pca, pca.transform(z)


def kmeans_partition(
    z: np.ndarray, k: int, min_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """k-means on (N, p) points with clusters of fewer than ``min_size`` points dissolved.

    Returns ((k', p) centroids, (N,) nearest-centroid labels) for the k' >= 2 clusters that
    keep at least ``min_size`` points (their points join the nearest kept centroid), or None
    when fewer than two clusters are that large.
    """
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
    counts = np.bincount(km.labels_, minlength=k)
    centroids = km.cluster_centers_[counts >= min_size]
    if len(centroids) < 2:
        return None
    labels = nearest_centroid(z, centroids)
    if len(np.unique(labels)) < 2:
        return None
    return centroids, labels


def _best_partition(
    z: np.ndarray, k_max: int, min_size: int, seed: int, silhouette_sample: int
) -> tuple[np.ndarray | None, float]:
    """Step 3: the best :func:`kmeans_partition` over k = 2..k_max of (N, p) points.

    Returns ((k', p) centroids, cluster-averaged silhouette), or (None, nan) when no k gives
    two clusters of ``min_size`` points. The score is computed on a seeded subsample of at
    most ``silhouette_sample`` points (its cost is quadratic in N).
    """
    rows = np.arange(len(z))
    if len(z) > silhouette_sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(z), silhouette_sample, replace=False))
    best: tuple[np.ndarray | None, float] = (None, float("nan"))
    for k in range(2, min(k_max, len(z) - 1) + 1):
        partition = kmeans_partition(z, k, min_size, seed)
        if partition is None or len(np.unique(partition[1][rows])) < 2:
            continue
        score = cluster_averaged_silhouette(z[rows], partition[1][rows])
        if best[0] is None or score > best[1]:
            best = (partition[0], score)
    return best


def gaussian_like(z: np.ndarray, seed: int) -> np.ndarray:
    """A Gaussian sample of len(z) points with the sample mean and covariance of (N, D) ``z``.

    Drawn in the span of the centred data (rank <= N - 1), so it needs no D x D matrix.
    """
    mean = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    scale = s / np.sqrt(max(len(z) - 1, 1))  # standard deviations along the principal axes
    noise = np.random.default_rng(seed).normal(size=(len(z), len(s)))
    return mean + (noise * scale) @ vt


def cluster_class(
    z: np.ndarray,
    *,
    k_max: int = 5,
    n_components: int = 8,
    normalize: bool = True,
    min_gain: float = 0.03,
    min_cluster_size: int = 10,
    seed: int = 0,
    silhouette_sample: int = 2000,
) -> ClassClustering:
    """Cluster one class's (N, D) features; see the module docstring."""
    if len(z) < max(4, 2 * min_cluster_size) or k_max < 2:
        return ClassClustering(None, None, float("nan"), float("nan"), normalize)
    pca, zp = _reduce(z, n_components, normalize, seed)
    centroids, score = _best_partition(zp, k_max, min_cluster_size, seed, silhouette_sample)
    if centroids is None:
        return ClassClustering(pca, None, float("nan"), float("nan"), normalize)
    _, null_zp = _reduce(gaussian_like(z, seed), n_components, normalize, seed)
    null_centroids, null_score = _best_partition(
        null_zp, k_max, min_cluster_size, seed, silhouette_sample
    )
    if null_centroids is None:
        null_score = 0.0  # the null has no two clusters of min_cluster_size: no structure
    keep = score > null_score + min_gain
    return ClassClustering(pca, centroids if keep else None, score, null_score, normalize)


def discover_groups(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k_max: int = 5,
    n_components: int = 8,
    normalize: bool = True,
    min_gain: float = 0.03,
    min_cluster_size: int = 10,
    seed: int = 0,
    silhouette_sample: int = 2000,
) -> GroupDiscovery:
    """Cluster the (N, D) training embeddings within each class of the (N,) labels ``y``.

    The settings are :func:`cluster_class`'s, for every class (params.yaml ``evaluate.discovery``).
    """
    x = check_features(x, "train_x")
    y = check_labels(y, len(x), "train_y")
    if len(x) == 0:
        raise ValueError("train_x is empty; need points to cluster")
    classes = np.unique(y)
    per_class = tuple(
        cluster_class(
            x[y == label],
            k_max=k_max,
            n_components=n_components,
            normalize=normalize,
            min_gain=min_gain,
            min_cluster_size=min_cluster_size,
            seed=seed,
            silhouette_sample=silhouette_sample,
        )
        for label in classes
    )
    return GroupDiscovery.of(classes, per_class)


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


def minority_identification(
    clusters: np.ndarray, groups: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Mean precision and recall of each true minority group's best-matching cluster.

    (N,) global cluster ids, true groups and classes. A minority group is every true group of
    a class but the class's largest (ties: smaller id). Its best-matching cluster is the
    cluster of the same class with the highest F1 against it (ties: smaller cluster id);
    precision = |cluster and group| / |cluster|, recall = |cluster and group| / |group|.
    Means over all minority groups; (nan, nan) when no class has two groups.
    """
    precisions, recalls = [], []
    for c in np.unique(y):
        in_class = y == c
        ids, counts = np.unique(groups[in_class], return_counts=True)
        for g in ids[np.arange(len(ids)) != np.argmax(counts)]:
            member = in_class & (groups == g)
            best = (-1.0, 0.0, 0.0)
            for k in np.unique(clusters[in_class]):
                cluster = in_class & (clusters == k)
                hit = float(np.sum(member & cluster))
                precision, recall = hit / cluster.sum(), hit / member.sum()
                f1 = 2 * hit / (cluster.sum() + member.sum())
                if f1 > best[0]:
                    best = (f1, precision, recall)
            precisions.append(best[1])
            recalls.append(best[2])
    if not precisions:
        return float("nan"), float("nan")
    return float(np.mean(precisions)), float(np.mean(recalls))


def discovery_scores(clusters: np.ndarray, groups: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How well (N,) global cluster ids recover (N,) true groups nested in (N,) classes ``y``.

    - ``ari``: adjusted Rand index over all points. Clusters never cross classes, so this
      credits the class split too; a clustering with one cluster per class scores above 0.
    - ``ari_within_class``: mean over classes of the ARI inside the class (0 for a class that
      has several true groups but got one cluster; 1 if both sides have a single group).
    - ``smallest_group_recall``: see :func:`smallest_group_recall`.
    - ``minority_precision``, ``minority_recall``: see :func:`minority_identification`.
    - ``n_clusters``: number of distinct cluster ids.
    """
    n = len(clusters)
    groups = check_labels(groups, n, "groups")
    y = check_labels(y, n, "y")
    within = [adjusted_rand_score(groups[y == c], clusters[y == c]) for c in np.unique(y)]
    precision, recall = minority_identification(clusters, groups, y)
    return {
        "ari": float(adjusted_rand_score(groups, clusters)),
        "ari_within_class": float(np.mean(within)),
        "smallest_group_recall": smallest_group_recall(clusters, groups),
        "minority_precision": precision,
        "minority_recall": recall,
        "n_clusters": float(len(np.unique(clusters))),
    }
