"""The spurious digits' ``attribute`` option: the kinds of attribute (tint, patch) and their checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.data.digits import load_digits
from pipeline.data.records import Records
from pipeline.data.registry import resolve_options
from pipeline.data.spurious_digits import ATTRIBUTES, PATCH, TINTS, load_spurious_digits


@pytest.fixture(scope="module")
def patched() -> Records:
    return load_spurious_digits(attribute="patch")


def _patch_mask(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: True on the :data:`PATCH` pixels."""
    mask = np.zeros(shape, dtype=bool)
    mask[PATCH] = True
    return mask


def test_default_is_byte_identical_to_explicit_tint() -> None:
    default, tinted = load_spurious_digits(), load_spurious_digits(attribute="tint")
    assert default.class_names == tinted.class_names
    assert default.class_names["attribute"] == ["red background", "blue background"]
    for name, split in default.splits.items():
        other = tinted.splits[name]
        assert split.images.dtype == other.images.dtype == np.uint8
        assert split.images.tobytes() == other.images.tobytes()
        assert split.labels.keys() == other.labels.keys()
        for key, values in split.labels.items():
            assert values.dtype == other.labels[key].dtype and values.tobytes() == other.labels[key].tobytes()


def test_patch_colours_the_corner_and_leaves_the_grey_digit(patched: Records) -> None:
    plain = load_digits()  # the same split of the same digits, grey (N, 1, 8, 8)
    for name, split in patched.splits.items():
        grey = plain.splits[name].images
        np.testing.assert_array_equal(split.labels["fine"], plain.splits[name].labels["fine"])
        assert split.images.shape == (len(grey), 3, *grey.shape[2:]) and split.images.dtype == np.uint8
        mask = _patch_mask(grey.shape[2:])
        # The corner holds exactly the attribute's colour, whatever ink was under it.
        corner = split.images[:, :, mask]  # (N, 3, 4)
        expected = TINTS[split.labels["attribute"]].astype(np.uint8)[:, :, None]  # (N, 3, 1)
        np.testing.assert_array_equal(corner, np.broadcast_to(expected, corner.shape))
        # Everywhere else: R == G == B == the plain digit's grey.
        rest = split.images[:, :, ~mask]  # (N, 3, 60)
        for channel in range(3):
            np.testing.assert_array_equal(rest[:, channel], grey[:, 0, ~mask])
    assert patched.class_names["attribute"] == ["red patch", "blue patch"]
    assert patched.class_names["group"] == ["0-4 / red", "0-4 / blue", "5-9 / red", "5-9 / blue"]


@pytest.mark.parametrize("options", [{}, {"attribute_seed": 7, "correlation": 0.8},
                                     {"split_seed": 3, "coarse_map": "parity"}])
def test_labels_are_the_same_for_every_kind(options: dict[str, Any]) -> None:
    loaded = {kind: load_spurious_digits(attribute=kind, **options) for kind in ATTRIBUTES}
    first, *others = loaded.values()
    for records in others:
        assert records.class_names["y"] == first.class_names["y"]
        assert records.class_names["group"] == first.class_names["group"]
        for name, split in first.splits.items():
            assert split.labels.keys() == records.splits[name].labels.keys()
            for key, values in split.labels.items():
                np.testing.assert_array_equal(values, records.splits[name].labels[key])
    # The draw itself: correlated with y in train only, and g = 2 y + attribute.
    train = first.splits["train"]
    np.testing.assert_array_equal(train.labels["group"], 2 * train.labels["y"] + train.labels["attribute"])
    assert np.mean(train.labels["attribute"] == train.labels["y"]) > 0.75
    assert 0.35 < np.mean(first.splits["test"].labels["attribute"] == first.splits["test"].labels["y"]) < 0.65


@pytest.mark.parametrize("value", ["pach", "Tint", "", 3, None, ["tint"]])
def test_bad_attribute_is_refused_with_a_clear_message(value: Any) -> None:
    for call in (lambda: load_spurious_digits(attribute=value),
                 lambda: resolve_options("spurious_digits", {"attribute": value})):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        # The option name first: the params check reports it as datasets.<name>.prepare.attribute.
        assert message.startswith("attribute: ")
        assert repr(value) in message
        assert all(kind in message for kind in ("tint", "patch"))
    assert resolve_options("spurious_digits", {})["attribute"] == "tint"


def test_patch_is_small_but_linearly_decodable(patched: Records) -> None:
    from sklearn.linear_model import LogisticRegression

    train, test = patched.splits["train"], patched.splits["test"]
    n, _, h, w = train.images.shape
    # Small: only the patch's pixels leave grey (4 of the 64), and they hold little of the intensity.
    mask = _patch_mask((h, w))
    coloured = train.images.min(axis=1) != train.images.max(axis=1)  # (N, H, W): not grey
    np.testing.assert_array_equal(coloured, np.broadcast_to(mask, coloured.shape))
    assert mask.sum() / (h * w) == 4 / 64
    patch_share = train.images[:, :, mask].sum(axis=(1, 2)) / train.images.sum(axis=(1, 2, 3))
    assert patch_share.mean() < 0.1
    # Yet decodable: a linear model on the raw pixels reads the attribute on the fair-coin test split.
    model = LogisticRegression(max_iter=2000)
    model.fit(train.images.reshape(n, -1) / 255.0, train.labels["attribute"])
    accuracy = np.mean(model.predict(test.images.reshape(len(test.images), -1) / 255.0) == test.labels["attribute"])
    assert accuracy > 0.95
