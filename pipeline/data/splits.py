"""Seeded stratified splits: the one way a dataset without an official split gets one.

The real datasets without an official validation set (CIFAR, MNIST) hold out a stratified
``val_fraction`` of their official training set; the embedded digits, which have no official
split at all, hold out a test and then a validation share. Both are :func:`stratified_split`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.model_selection import train_test_split


def stratified_split(labels: np.ndarray, held_out: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Sorted indices of a seeded stratified split of ``labels`` (N,): ``{"train": ..., **held_out}``.

    ``held_out`` maps split names to shares of all N, drawn in its order: each is split off
    what earlier draws left (``sklearn.model_selection.train_test_split(..., stratify=...,
    random_state=seed)`` with the share rescaled to the remainder); ``train`` is what is left.
    Stratify on the finest label, so coarser ones follow.
    """
    fractions = dict(held_out)
    bad = {k: v for k, v in fractions.items() if not 0.0 < v < 1.0}
    if bad or not fractions or sum(fractions.values()) >= 1.0:
        shares = " and ".join(f"{k}_fraction ({v!r})" for k, v in fractions.items())
        raise ValueError(f"{shares} must be in (0, 1)" + (" and sum to less than 1" if len(fractions) > 1 else ""))
    rest, left = np.arange(len(labels)), 1.0
    drawn = {}
    for name, fraction in fractions.items():
        rest, drawn[name] = train_test_split(rest, test_size=fraction / left, stratify=labels[rest],
                                             random_state=seed)
        left -= fraction
    return {"train": np.sort(rest), **{name: np.sort(index) for name, index in drawn.items()}}


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices 0..N-1 into (kept, held_out), both sorted: the
    validation split of a dataset whose official training set is ``labels`` (N,)."""
    split = stratified_split(labels, {"val": fraction}, seed)
    return split["train"], split["val"]


__all__ = ["holdout_split", "stratified_split"]
