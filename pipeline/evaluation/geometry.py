"""Geometry of frozen embeddings: does the representation keep within-class structure?

All metrics work on L2-normalised embeddings (the hypersphere contrastive losses live on)
unless said otherwise, and return plain floats.

- alignment / uniformity: Wang & Isola (2020). Alignment needs two embeddings of the *same*
  inputs (two augmented views), passed as paired (N, D) arrays; lower is better aligned.
  Uniformity is log E exp(-t ||u - v||^2) over distinct pairs; lower is more uniform.
- class spread: mean squared distance of points to their class centroid, relative to the mean
  squared distance between class centroids. Class collapse drives the ratio to 0.
- fine kNN purity: within each coarse class, the share of a point's k nearest neighbours (from
  the same coarse class, cosine) that share its fine label, next to the share expected from
  random same-coarse neighbours. Collapse within a coarse class brings it down to chance.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluation.common import check_features, check_labels


def _unit(x: np.ndarray, name: str) -> torch.Tensor:
    """(N, D) array -> float64 tensor with unit-norm rows."""
    t = torch.as_tensor(check_features(x, name))
    return torch.nn.functional.normalize(t, dim=1)


def alignment(view1: np.ndarray, view2: np.ndarray, *, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x')||^alpha over paired rows of two (N, D) view embeddings."""
    a, b = _unit(view1, "view1"), _unit(view2, "view2")
    if a.shape != b.shape:
        raise ValueError(f"view1 and view2 must be paired (same shape); got {a.shape}, {b.shape}")
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(
    x: np.ndarray, *, t: float = 2.0, max_points: int = 4096, seed: int = 0
) -> float:
    """log E_{i != j} exp(-t ||z_i - z_j||^2) of (N, D) embeddings.

    More than ``max_points`` rows are subsampled (seeded) to bound the O(N^2) pair count.
    """
    z = _unit(x, "x")
    if len(z) < 2:
        raise ValueError(f"uniformity needs at least 2 points; got {len(z)}")
    if len(z) > max_points:
        keep = np.random.default_rng(seed).choice(len(z), size=max_points, replace=False)
        z = z[torch.as_tensor(np.sort(keep))]
    sq = torch.pdist(z).square()
    return float(torch.logsumexp(-t * sq, dim=0) - np.log(len(sq)))


def class_spread(x: np.ndarray, y: np.ndarray, *, normalize: bool = True) -> dict[str, float]:
    """Within-class vs between-class squared distances of (N, D) embeddings with (N,) labels.

    Returns ``within`` = mean_i ||z_i - mu_{y_i}||^2, ``between`` = mean over class pairs of
    ||mu_a - mu_b||^2, and ``ratio`` = within / between. Needs at least two classes.
    """
    z = _unit(x, "x") if normalize else torch.as_tensor(check_features(x, "x"))
    y = check_labels(y, len(z), "y")
    classes, inverse = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"class_spread needs at least 2 classes; got {classes.tolist()}")
    inv = torch.as_tensor(inverse)
    counts = torch.bincount(inv, minlength=len(classes)).to(z.dtype)
    centroids = torch.zeros(len(classes), z.shape[1], dtype=z.dtype).index_add_(0, inv, z)
    centroids /= counts[:, None]
    within = (z - centroids[inv]).square().sum(dim=1).mean()
    between = torch.pdist(centroids).square().mean()
    return {
        "within": float(within),
        "between": float(between),
        "ratio": float(within / between) if between > 0 else float("inf"),
    }


def fine_knn_purity(
    x: np.ndarray, coarse: np.ndarray, fine: np.ndarray, *, k: int = 10, chunk_size: int = 2048
) -> dict[str, float]:
    """Fine-label purity of cosine k-nearest neighbours inside each coarse class.

    For each point, its neighbours are the ``min(k, n_c - 1)`` most similar *other* points of
    its coarse class c. ``purity`` is the mean over points of the share of neighbours with the
    same fine label; ``chance`` is the same mean for neighbours drawn uniformly from the other
    points of the coarse class. Coarse classes with one point are skipped.
    """
    z = _unit(x, "x").to(torch.float32)
    coarse = check_labels(coarse, len(z), "coarse")
    fine = check_labels(fine, len(z), "fine")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    purity, chance = [], []
    for c in np.unique(coarse):
        idx = np.flatnonzero(coarse == c)
        if len(idx) < 2:
            continue
        kk = min(k, len(idx) - 1)
        zc, fc = z[torch.as_tensor(idx)], torch.as_tensor(fine[idx])
        for start in range(0, len(idx), chunk_size):
            rows = torch.arange(start, min(start + chunk_size, len(idx)))
            sims = zc[rows] @ zc.T
            sims[torch.arange(len(rows)), rows] = -torch.inf  # a point is not its own neighbour
            nn = sims.topk(kk, dim=1).indices
            purity.append((fc[nn] == fc[rows, None]).double().mean(dim=1))
        # A point of fine class f sees n_f - 1 same-fine points among the n_c - 1 others.
        _, inverse, counts = np.unique(fine[idx], return_inverse=True, return_counts=True)
        chance.append(torch.as_tensor((counts[inverse] - 1) / (len(idx) - 1)))
    if not purity:
        raise ValueError("fine_knn_purity needs a coarse class with at least 2 points")
    return {"purity": float(torch.cat(purity).mean()), "chance": float(torch.cat(chance).mean())}


def geometry_metrics(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    fine: np.ndarray | None = None,
    views: tuple[np.ndarray, np.ndarray] | None = None,
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Flat dict of the metrics above for (N, D) embeddings ``x`` with (N,) class ``labels``.

    ``fine`` (N,) adds fine-label kNN purity inside each class of ``labels``; ``views``, the
    (M, D) embeddings of two augmented views of the same M inputs, adds alignment.
    """
    out = {"uniformity": uniformity(x, seed=seed)}
    out.update({f"class_spread_{key}": v for key, v in class_spread(x, labels).items()})
    if fine is not None:
        purity = fine_knn_purity(x, labels, fine, k=k)
        out.update({f"fine_knn_{key}": v for key, v in purity.items()})
    if views is not None:
        out["alignment"] = alignment(*views)
    return out
