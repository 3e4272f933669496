"""Spurious digits: the embedded suite's worst-group task (METHOD.md section 7).

The 8x8 digits become 3-channel images: a white digit on a tinted background, red-ish
(attribute 0) or blue-ish (attribute 1). The task label y is the coarse label of ``coarse_map``
(default ``halves``: 0-4 vs 5-9; any map with 2 coarse classes, pipeline/data/labels.py).
In the training split the tint agrees with y for ``correlation`` (default 95%) of the
images, so the tint is a shortcut; in validation and test the tint is drawn independently
of y (fair coin), so the four groups g = 2 y + attribute are about equally common and a
model that relies on the tint fails on the minority groups (y, attribute) = (0, 1), (1, 0).
The fine label (the digit) is kept as an extra label for pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.digits import FINE_NAMES, digits_as_uint8, digits_split
from pipeline.data.labels import HALVES, CoarseMaps, group_labels
from pipeline.data.options import option_checks
from pipeline.data.records import WORST_GROUP, Records, Split

# y is binary (the tint agrees with y or with 1 - y), so only maps with 2 coarse classes fit.
COARSE_MAPS = CoarseMaps("spurious_digits", n_fine=10, default=HALVES, n_coarse=2)
# Background colour (R, G, B) of each attribute value; the digit's strokes stay white.
TINTS = np.array([[110, 0, 0], [0, 0, 110]], dtype=np.float64)
ATTRIBUTE_NAMES = ["red background", "blue background"]


def download_spurious_digits(root: str | Path, timeout: float = 30.0) -> None:
    """Nothing to download: built from scikit-learn's digits."""


def tint(images: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """Grey digits (N, 1, H, W) uint8 -> RGB (N, 3, H, W) uint8: white strokes over the tint."""
    ink = images.astype(np.float64) / 255.0  # (N, 1, H, W), 1 = stroke
    background = TINTS[attribute][:, :, None, None]  # (N, 3, 1, 1)
    rgb = ink * 255.0 + (1.0 - ink) * background
    return np.rint(rgb).astype(np.uint8)


def spurious_attribute(y: np.ndarray, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Attribute equal to ``y`` with probability ``correlation`` (independent of y at 0.5)."""
    agree = rng.random(len(y)) < correlation
    return np.where(agree, y, 1 - y).astype(np.int64)


@option_checks(coarse_map=COARSE_MAPS.check)
def load_spurious_digits(root: str | Path | None = None, val_fraction: float = 0.15,
                         test_fraction: float = 0.25, split_seed: int = 0, correlation: float = 0.95,
                         attribute_seed: int = 0, coarse_map: str | Sequence[int] = COARSE_MAPS.default) -> Records:
    """Digits with a background tint correlated with the coarse label (y) in training only."""
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1]; got {correlation}")
    hierarchy = COARSE_MAPS.resolve(coarse_map)
    images, digits = digits_as_uint8()
    y = hierarchy(digits)
    rng = np.random.default_rng(attribute_seed)
    splits = {}
    # Splits in SPLITS order: they draw their attributes from one generator in turn.
    for name, idx in digits_split(digits, val_fraction, test_fraction, split_seed).items():
        attribute = spurious_attribute(y[idx], correlation if name == "train" else 0.5, rng)
        labels = {**group_labels(y[idx], attribute), "fine": digits[idx]}
        splits[name] = Split(tint(images[idx], attribute), labels)
    return Records(
        name="spurious_digits",
        task=WORST_GROUP,
        splits=splits,
        class_names={
            "y": list(hierarchy.names),
            "attribute": ATTRIBUTE_NAMES,
            "group": [f"{c} / {a}" for c in hierarchy.names for a in ("red", "blue")],
            "fine": list(FINE_NAMES),
        },
    )
