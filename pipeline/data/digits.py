"""The embedded suite's data: scikit-learn's bundled 8x8 handwritten digits (METHOD.md section 7).

Coarse label: 0-4 -> 0, 5-9 -> 1 (like the paper's MNIST task); fine label: the digit.
No download: the 1,797 images ship inside scikit-learn. There is no official split, so a
stratified (by digit) train/val/test split is fixed by ``split_seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.records import COARSE_TO_FINE, Records, Split

COARSE_NAMES = ["0-4", "5-9"]


def download_digits(root: str | Path, timeout: float = 30.0) -> None:
    """Nothing to download: the data ships with scikit-learn."""


def digits_as_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All digits as images (N, 1, 8, 8) uint8 in [0, 255] and digit labels (N,) int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The bundled pixels are integers 0..16; map them to the 0..255 range of real image data.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Sorted indices of a stratified train/val/test split of ``labels`` (N,), fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and sum to less than 1")
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction),
                                  stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_digits(root: str | Path | None = None, val_fraction: float = 0.15, test_fraction: float = 0.25,
                split_seed: int = 0) -> Records:
    """Digits coarse-to-fine: coarse 0-4 vs 5-9, fine = 10 digits. ``root`` is unused."""
    images, digits = digits_as_uint8()
    coarse = (digits >= 5).astype(np.int64)
    splits = {
        name: Split(images[idx], {"coarse": coarse[idx], "fine": digits[idx]})
        for name, idx in stratified_split(digits, val_fraction, test_fraction, split_seed).items()
    }
    return Records(
        name="digits",
        task=COARSE_TO_FINE,
        splits=splits,
        class_names={"coarse": COARSE_NAMES, "fine": [str(d) for d in range(10)]},
    )
