"""Embedding files: augmented test views are deterministic, shared by concatenated parts, and
their alignment measures augmentation strength."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.augment import Normalize
from pipeline.data.digits import digits_as_uint8
from pipeline.data.records import WORST_GROUP, Records, Split
from pipeline.embeddings import (
    VIEW_KEYS,
    augmented_views,
    concat_embeddings,
    embed_images,
    embed_records,
    embed_views,
    load_encoder,
)
from pipeline.evaluation.geometry import alignment
from pipeline.models import build_encoder
from pipeline.formats import MODEL_FORMAT


def digit_records(n: int = 60) -> Records:
    """Real 8x8 digits as 3-channel images, a few per split, with worst-group labels."""
    images, digits = digits_as_uint8()
    images = np.repeat(images[: 3 * n], 3, axis=1)
    y = (digits[: 3 * n] >= 5).astype(np.int64)
    splits = {}
    for i, name in enumerate(("train", "val", "test")):
        sl = slice(i * n, (i + 1) * n)
        labels = {"y": y[sl], "attribute": y[sl] * 0, "group": 2 * y[sl]}
        splits[name] = Split(images[sl], labels)
    return Records("tiny", WORST_GROUP, splits)


def write_model(path: Path, seed: int) -> Path:
    """A model file as the train stage writes it, with a seeded random small CNN."""
    torch.manual_seed(seed)
    encoder = build_encoder("small_cnn", 3, 8)
    state = {
        "format": MODEL_FORMAT, "backbone": "small_cnn", "image_shape": [3, 8, 8],
        "embed_dim": 128, "mean": torch.full((3,), 0.3), "std": torch.full((3,), 0.4),
        "encoder": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return write_model(root / "a.pt", seed=1), write_model(root / "b.pt", seed=2)


def test_views_are_deterministic_and_leave_the_global_rng_alone(models) -> None:
    records = digit_records()
    before = torch.get_rng_state()
    (view1, _), = augmented_views(records.splits["test"].images, "digits", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert view1.dtype == torch.float32 and 0.0 <= view1.min() and view1.max() <= 1.0
    a = embed_records(models[0], records, augment="digits", view_seed=3)
    torch.manual_seed(12345)  # a different global state must not change the views
    b = embed_records(models[0], records, augment="digits", view_seed=3)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    v1, v2 = (a[k] for k in VIEW_KEYS)
    assert v1.shape == v2.shape == a["test_x"].shape and v1.dtype == np.float32
    # The views are random augmentations: different from each other and from the clean images.
    assert not np.allclose(v1, v2) and not np.allclose(v1, a["test_x"])
    other_seed = embed_records(models[0], records, augment="digits", view_seed=4)
    assert not np.allclose(other_seed[VIEW_KEYS[0]], v1)
    assert not any(k in embed_records(models[0], records) for k in VIEW_KEYS)


def test_concatenation_embeds_the_same_augmented_images_in_every_part(models) -> None:
    records = digit_records()
    parts = [embed_records(m, records, augment="digits", view_seed=0) for m in models]
    joined = concat_embeddings(parts)
    for key in ("train_x", "test_x", *VIEW_KEYS):
        np.testing.assert_array_equal(joined[key], np.hstack([p[key] for p in parts]))
    # Each part's views are its encoder applied to one shared set of augmented images.
    (view1, view2), = augmented_views(records.splits["test"].images, "digits", seed=0)
    for model, part in zip(models, parts):
        encoder, normalize = load_encoder(model)
        np.testing.assert_allclose(part[VIEW_KEYS[0]], embed_images(encoder, normalize, view1),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(part[VIEW_KEYS[1]], embed_images(encoder, normalize, view2),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        concat_embeddings([parts[0], embed_records(models[1], records)])


def test_alignment_is_zero_without_augmentation_and_grows_with_strength() -> None:
    images = digit_records(n=150).splits["test"].images
    # A transparent encoder (the pixels themselves), so only the augmentation matters.
    pixels, identity = nn.Flatten(), Normalize(torch.zeros(3), torch.ones(3))
    align = {}
    for recipe in ("none", "digits", "cifar"):
        v1, v2 = embed_views(pixels, identity, images, recipe, seed=0)
        align[recipe] = alignment(v1, v2)
    clean = embed_images(pixels, identity, images)
    none1, _ = embed_views(pixels, identity, images, "none", seed=0)
    np.testing.assert_allclose(none1, clean, rtol=1e-6)
    assert align["none"] == pytest.approx(0.0, abs=1e-12)
    # digits: crops >= 50%, rotation, brightness/contrast; cifar: crops >= 20%, flips, colour.
    assert 0.0 < align["digits"] < align["cifar"]
