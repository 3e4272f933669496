"""The embedded suite's data: scikit-learn's bundled 8x8 handwritten digits (METHOD.md section 7).

Coarse label: the ``coarse_map`` option (default ``halves``: 0-4 -> 0, 5-9 -> 1, like the paper's
MNIST task; pipeline/data/labels.py); fine label: the digit. No download: the 1,797 images ship
inside scikit-learn. There is no official split, so a stratified (by digit) train/val/test split
is fixed by ``split_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.labels import HALVES, CoarseMaps
from pipeline.data.options import option_checks
from pipeline.data.records import COARSE_TO_FINE, SPLITS, Records, Split
from pipeline.data.splits import stratified_split

COARSE_MAPS = CoarseMaps("digits", n_fine=10, default=HALVES)
FINE_NAMES = [str(d) for d in range(10)]


def download_digits(root: str | Path, timeout: float = 30.0) -> None:
    """Nothing to download: the data ships with scikit-learn."""


def digits_as_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All digits as images (N, 1, 8, 8) uint8 in [0, 255] and digit labels (N,) int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The bundled pixels are integers 0..16; map them to the 0..255 range of real image data.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64)


def digits_split(digits: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Sorted indices of the digits' stratified train/val/test split, in SPLITS order: test is drawn
    first, then validation from the rest."""
    split = stratified_split(digits, {"test": test_fraction, "val": val_fraction}, seed)
    return {name: split[name] for name in SPLITS}


@option_checks(coarse_map=COARSE_MAPS.check)
def load_digits(root: str | Path | None = None, val_fraction: float = 0.15, test_fraction: float = 0.25,
                split_seed: int = 0, coarse_map: str | Sequence[int] = COARSE_MAPS.default) -> Records:
    """Digits coarse-to-fine: coarse by ``coarse_map`` (0-4 vs 5-9 by default), fine = 10 digits.
    ``root`` is unused."""
    hierarchy = COARSE_MAPS.resolve(coarse_map)
    images, digits = digits_as_uint8()
    coarse = hierarchy(digits)
    splits = {
        name: Split(images[idx], {"coarse": coarse[idx], "fine": digits[idx]})
        for name, idx in digits_split(digits, val_fraction, test_fraction, split_seed).items()
    }
    return Records(
        name="digits",
        task=COARSE_TO_FINE,
        splits=splits,
        class_names={"coarse": list(hierarchy.names), "fine": list(FINE_NAMES)},
    )
