"""Input checks and small helpers shared by the evaluation modules.

Everything here works on frozen embeddings held as numpy arrays: features ``x`` shaped
(N, D) float, labels shaped (N,) int.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.optim.adam import adam


def check_features(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 (N, D) array or raise naming the offending input."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) feature array; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} has {bad} row(s) with NaN or inf values")
    return x


def check_labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    """Return ``y`` as an int64 (n,) array or raise naming the offending input."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its features; got {y.shape}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            return y.astype(np.int64)
        raise ValueError(f"{name} must hold integer labels; got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def check_split(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (features, labels) pair; ``name`` prefixes the error messages."""
    x = check_features(x, f"{name}_x")
    if len(x) == 0:
        raise ValueError(f"{name}_x is empty; need at least one point")
    return x, check_labels(y, len(x), f"{name}_y")


def standardise(
    train_x: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Z-score every array with the mean and standard deviation of ``train_x`` only.

    Constant training dimensions keep scale 1 so they map to 0 rather than to NaN.
    """
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(train_x).max(initial=0.0))), std, 1.0)
    return tuple((a - mean) / std for a in (train_x, *others))


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    return float(np.mean(pred == y))


def encode_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Map labels to indices into the sorted ``classes``; labels not in ``classes`` become -1."""
    idx = np.searchsorted(classes, y).clip(0, len(classes) - 1)
    return np.where(classes[idx] == y, idx, -1)


class FunctionalAdam:
    """``torch.optim.Adam`` / ``AdamW`` (default betas and eps) on a fixed list of tensors.

    It calls torch's functional ``adam``, the very update the optimiser classes apply (bit
    for bit), without constructing an optimiser object: that imports ``torch._dynamo``, about
    0.8 s that every evaluate stage would pay. ``decoupled=True`` is AdamW.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float = 0.0,
                 decoupled: bool = False) -> None:
        self.params = params
        self.lr, self.weight_decay, self.decoupled = lr, weight_decay, decoupled
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.steps = [torch.tensor(0.0) for _ in params]  # float32 CPU counters, as the classes

    @torch.no_grad()
    def __call__(self, grads: Sequence[torch.Tensor]) -> None:
        """One update of every tensor from its gradient (same order as ``params``)."""
        adam(self.params, list(grads), self.exp_avgs, self.exp_avg_sqs, [], self.steps,
             decoupled_weight_decay=self.decoupled, amsgrad=False, beta1=0.9, beta2=0.999,
             lr=self.lr, weight_decay=self.weight_decay, eps=1e-8, maximize=False)
