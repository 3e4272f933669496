"""2-D pictures of embeddings: PCA or t-SNE, coloured by a label, saved as a PNG.

PCA is an exact SVD in numpy (scikit-learn's PCA, sign convention included, without importing
scikit-learn); t-SNE and matplotlib are imported only when used, because the evaluate stage
pays every import on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.evaluation.common import check_features, check_labels

METHODS = ("pca", "tsne")
# At most this many labels get a colour each and a legend entry; more get a continuous map.
MAX_CATEGORIES = 20


def categorical_colours(n: int, paired: bool = False) -> list[tuple[float, float, float, float]] | None:
    """n distinct RGBA colours (tab10, or tab20 beyond 10); None beyond :data:`MAX_CATEGORIES`.

    ``paired``: tab20's pairs, a hue per two consecutive categories, dark then light: for groups
    numbered label x 2 + attribute, a hue per label and a shade per attribute value.
    """
    import matplotlib

    if n > MAX_CATEGORIES:
        return None
    cmap = matplotlib.colormaps["tab10" if n <= 10 and not paired else "tab20"]
    return [cmap(i) for i in range(n)]


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) scores on the top two principal axes (zero-padded when D < 2).

    Each axis is signed so that its largest-magnitude loading is positive, as scikit-learn's
    PCA does, so the pictures do not flip between runs or libraries.
    """
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    p = min(2, vt.shape[0])
    signs = np.sign(vt[np.arange(p), np.argmax(np.abs(vt[:p]), axis=1)])
    signs[signs == 0] = 1.0
    coords = u[:, :p] * s[:p] * signs
    return np.pad(coords, ((0, 0), (0, 2 - p)))  # 1-D input: y = 0


def project_2d(x: np.ndarray, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) coordinates by PCA or t-SNE (PCA initialisation)."""
    x = check_features(x, "x")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if len(x) < 3:
        raise ValueError(f"a 2-D projection needs at least 3 points; got {len(x)}")
    if method == "pca":
        return pca_2d(x)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(x) - 1) / 3)  # t-SNE requires perplexity < N
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x)


def plot_projection(
    x: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    method: str = "pca",
    max_points: int = 500,
    seed: int = 0,
    title: str | None = None,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Scatter a 2-D projection of (N, D) embeddings coloured by (N,) labels; return the PNG path.

    At most ``max_points`` points are drawn (a seeded subsample, also fed to the projection).
    Up to 20 distinct labels get a categorical palette and a legend beside the plot (entries
    ``label_names[label]``, indexed by label value, when given: "5-9 / red"); more get a
    continuous map with a colour bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = check_features(x, "x")
    labels = check_labels(labels, len(x), "labels")
    if label_names is not None and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(
            f"label_names has {len(label_names)} entries but labels span "
            f"[{labels.min()}, {labels.max()}]; names are indexed by label value"
        )
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, labels = x[keep], labels[keep]
    coords = project_2d(x, method=method, seed=seed)

    # Constrained layout keeps the title, the plot and the legend outside it from overlapping.
    fig = Figure(figsize=(6.4, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # attaches a non-interactive canvas: no global backend switch
    ax = fig.add_subplot()
    values = np.unique(labels)
    colours = categorical_colours(len(values))
    if colours is not None:
        for value, colour in zip(values, colours):
            mask = labels == value
            name = str(label_names[value]) if label_names is not None else str(value)
            ax.scatter(*coords[mask].T, s=8, color=colour, label=name, alpha=0.8, linewidths=0)
        fig.legend(fontsize=7, markerscale=2, loc="outside right upper", frameon=False)
    else:
        points = ax.scatter(*coords.T, s=8, c=labels, cmap="turbo", alpha=0.8, linewidths=0)
        fig.colorbar(points, ax=ax, fraction=0.046)
    ax.set_xticks([])
    ax.set_yticks([])
    default_title = f"{'PCA' if method == 'pca' else 't-SNE'} of {len(x)} embeddings"
    ax.set_title(title or default_title, fontsize=9, wrap=True)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
