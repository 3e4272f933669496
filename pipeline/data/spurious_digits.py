"""Spurious digits: the embedded suite's worst-group task (METHOD.md section 7).

The 8x8 digits become 3-channel images carrying a binary spurious attribute, red (attribute 0)
or blue (attribute 1), painted in one of the ``attribute`` kinds of :data:`ATTRIBUTES`:

- ``tint`` (default): a white digit on a tinted background, red-ish or blue-ish (:data:`TINTS`);
  the colour fills every pixel the strokes leave, so its signal is as large as the digit's.
- ``patch``: the digit stays white on black (its grey in all 3 channels) and only the 2x2 pixels
  of the top-left corner (:data:`PATCH`) hold the colour: a signal of 4 of the 64 pixels, small
  beside the digit. That corner is not ink-free: faint stroke edges reach it in about 42% of the
  images (746 of 1,797, nearly all at pixel (1, 1); 0.7% of all ink), and the patch covers them.
  No 2x2 block of the 8x8 digits is ink-free (the emptiest, bottom-left, holds ink in 488).

The task label y is the coarse label of ``coarse_map`` (default ``halves``: 0-4 vs 5-9; any map
with 2 coarse classes, pipeline/data/labels.py). In the training split the attribute agrees with
y for ``correlation`` (default 95%) of the images, so the colour is a shortcut; in validation and
test it is drawn independently of y (fair coin), so the four groups g = 2 y + attribute are about
equally common and a model that relies on the colour fails on the minority groups
(y, attribute) = (0, 1), (1, 0). The draw depends on ``attribute_seed`` only, not on the kind:
the same seed gives the same attribute and group labels for every kind. The fine label (the
digit) is kept as an extra label for pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.data.digits import FINE_NAMES, digits_as_uint8, digits_split
from pipeline.data.labels import HALVES, CoarseMaps, group_labels
from pipeline.data.options import option_checks
from pipeline.data.records import WORST_GROUP, Records, Split
from pipeline.schema import did_you_mean

# y is binary (the attribute agrees with y or with 1 - y), so only maps with 2 coarse classes fit.
COARSE_MAPS = CoarseMaps("spurious_digits", n_fine=10, default=HALVES, n_coarse=2)
# Colour (R, G, B) of each attribute value, named by COLOURS; the digit's strokes stay white.
TINTS = np.array([[110, 0, 0], [0, 0, 110]], dtype=np.float64)
COLOURS = ("red", "blue")
# The pixels (rows, columns) the ``patch`` kind colours: the 2x2 top-left corner.
PATCH = (slice(0, 2), slice(0, 2))


def download_spurious_digits(root: str | Path, timeout: float = 30.0) -> None:
    """Nothing to download: built from scikit-learn's digits."""


def tint(images: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """Grey digits (N, 1, H, W) uint8, attribute (N,) -> RGB (N, 3, H, W) uint8: white strokes over
    the tint."""
    ink = images.astype(np.float64) / 255.0  # (N, 1, H, W), 1 = stroke
    background = TINTS[attribute][:, :, None, None]  # (N, 3, 1, 1)
    rgb = ink * 255.0 + (1.0 - ink) * background
    return np.rint(rgb).astype(np.uint8)


def patch(images: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """Grey digits (N, 1, H, W) uint8, attribute (N,) -> RGB (N, 3, H, W) uint8: the grey digit in
    all 3 channels, with the :data:`PATCH` pixels set to the attribute's colour (any ink there is
    covered)."""
    rgb = np.repeat(images, 3, axis=1)  # (N, 3, H, W), R == G == B
    rows, cols = PATCH
    rgb[:, :, rows, cols] = TINTS[attribute].astype(np.uint8)[:, :, None, None]  # (N, 3, 1, 1)
    return rgb


class AttributeKind(NamedTuple):
    """How a kind paints the attribute, and the noun of its names ("red <noun>", "blue <noun>")."""
    paint: Callable[[np.ndarray, np.ndarray], np.ndarray]
    noun: str


# The kinds the ``attribute`` option allows; a new kind is a paint function and a line here.
ATTRIBUTES: dict[str, AttributeKind] = {
    "tint": AttributeKind(tint, "background"),
    "patch": AttributeKind(patch, "patch"),
}


def check_attribute(value: Any) -> None:
    """Raise ValueError, with a message starting ``attribute:``, unless ``value`` names a kind."""
    if not isinstance(value, str) or value not in ATTRIBUTES:
        hint = did_you_mean(value, ATTRIBUTES) if isinstance(value, str) else ""
        raise ValueError(f"attribute: {value!r} is not a kind of spurious attribute{hint}; "
                         f"allowed: {', '.join(ATTRIBUTES)}")


def spurious_attribute(y: np.ndarray, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Attribute equal to ``y`` with probability ``correlation`` (independent of y at 0.5)."""
    agree = rng.random(len(y)) < correlation
    return np.where(agree, y, 1 - y).astype(np.int64)


@option_checks(coarse_map=COARSE_MAPS.check, attribute=check_attribute)
def load_spurious_digits(root: str | Path | None = None, val_fraction: float = 0.15,
                         test_fraction: float = 0.25, split_seed: int = 0, correlation: float = 0.95,
                         attribute_seed: int = 0, coarse_map: str | Sequence[int] = COARSE_MAPS.default,
                         attribute: str = "tint") -> Records:
    """Digits with a red/blue attribute (painted as ``attribute``: tint or patch) correlated with
    the coarse label (y) in training only."""
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1]; got {correlation}")
    # Checked here too: a direct call does not pass through the params' option checks.
    check_attribute(attribute)
    kind = ATTRIBUTES[attribute]
    hierarchy = COARSE_MAPS.resolve(coarse_map)
    images, digits = digits_as_uint8()
    y = hierarchy(digits)
    rng = np.random.default_rng(attribute_seed)
    splits = {}
    # Splits in SPLITS order: they draw their attributes from one generator in turn; the kind only
    # paints, so every kind gets the same labels.
    for name, idx in digits_split(digits, val_fraction, test_fraction, split_seed).items():
        drawn = spurious_attribute(y[idx], correlation if name == "train" else 0.5, rng)
        labels = {**group_labels(y[idx], drawn), "fine": digits[idx]}
        splits[name] = Split(kind.paint(images[idx], drawn), labels)
    return Records(
        name="spurious_digits",
        task=WORST_GROUP,
        splits=splits,
        class_names={
            "y": list(hierarchy.names),
            "attribute": [f"{c} {kind.noun}" for c in COLOURS],
            "group": [f"{c} / {a}" for c in hierarchy.names for a in COLOURS],
            "fine": list(FINE_NAMES),
        },
    )
