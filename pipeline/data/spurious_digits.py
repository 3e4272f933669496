"""Spurious digits: the embedded suite's worst-group task (METHOD.md section 7).

The 8x8 digits become 3-channel images: a white digit on a tinted background, red-ish
(attribute 0) or blue-ish (attribute 1). The task label y is the coarse label (0-4 vs 5-9).
In the training split the tint agrees with y for ``correlation`` (default 95%) of the
images, so the tint is a shortcut; in validation and test the tint is drawn independently
of y (fair coin), so the four groups g = 2 y + attribute are about equally common and a
model that relies on the tint fails on the minority groups (y, attribute) = (0, 1), (1, 0).
The fine label (the digit) is kept as an extra label for pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.digits import COARSE_NAMES, digits_as_uint8, stratified_split
from pipeline.data.download import group_labels
from pipeline.data.records import WORST_GROUP, Records, Split

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


def load_spurious_digits(root: str | Path | None = None, val_fraction: float = 0.15,
                         test_fraction: float = 0.25, split_seed: int = 0, correlation: float = 0.95,
                         attribute_seed: int = 0) -> Records:
    """Digits with a background tint correlated with the coarse label in training only."""
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1]; got {correlation}")
    images, digits = digits_as_uint8()
    y = (digits >= 5).astype(np.int64)
    rng = np.random.default_rng(attribute_seed)
    splits = {}
    for name, idx in stratified_split(digits, val_fraction, test_fraction, split_seed).items():
        attribute = spurious_attribute(y[idx], correlation if name == "train" else 0.5, rng)
        labels = {**group_labels(y[idx], attribute), "fine": digits[idx]}
        splits[name] = Split(tint(images[idx], attribute), labels)
    return Records(
        name="spurious_digits",
        task=WORST_GROUP,
        splits=splits,
        class_names={
            "y": COARSE_NAMES,
            "attribute": ATTRIBUTE_NAMES,
            "group": [f"{c} / {a}" for c in COARSE_NAMES for a in ("red", "blue")],
            "fine": [str(d) for d in range(10)],
        },
    )
