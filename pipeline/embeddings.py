"""Frozen embeddings: load a trained encoder, embed every split in eval mode, concatenate methods.

An embedding file holds, for each split s in train/val/test, ``{s}_x`` (N, d)
float32 and one ``{s}_{label}`` (N,) int64 per label role of the dataset
(coarse/fine, or y/attribute/group). With an augmentation recipe it also holds
``test_view1_x`` and ``test_view2_x`` (N_test, d): the embeddings of two random
augmentations of every test image (the training recipe), for alignment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.augment import BatchAugment, Normalize
from pipeline.data.records import SPLITS, VIEW_KEYS, Records
from pipeline.models import build_encoder
from pipeline.errors import OutputFileError
from pipeline.formats import MODEL_FORMAT

VIEW_CHUNK = 1024  # images per random draw: the views depend on it, so it is a constant


class ModelFileError(OutputFileError):
    """A model file is missing, truncated or not one this harness wrote."""


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Normalize]:
    """The frozen encoder (eval mode) and its input normalisation from a train-stage model file.

    Loaded with ``weights_only=True``: a model file can hold tensors and plain data, never code.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found; run its train stage (`dvc repro`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFileError(
            f"{path}: not a readable model file ({type(err).__name__}: {err}); "
            "it may be truncated or foreign: delete it and rerun its train stage") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a {MODEL_FORMAT} model file")
    c, h, _ = state["image_shape"]
    encoder = build_encoder(state["backbone"], c, h)
    encoder.load_state_dict(state["encoder"])
    return encoder.to(device).eval(), Normalize(state["mean"], state["std"]).to(device)


@torch.no_grad()
def embed_images(encoder: nn.Module, normalize: Normalize, images: np.ndarray | torch.Tensor,
                 batch_size: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Images (N, C, H, W) -> float32 embeddings (N, d), encoder in eval mode.

    ``images`` are uint8, or float already on the [0, 1] scale (augmented views).
    """
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch))
        out.append(encoder(normalize(x.to(device))).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def augmented_views(images: np.ndarray, recipe: str, seed: int = 0,
                    n_views: int = 2) -> Iterator[tuple[torch.Tensor, ...]]:
    """Two (``n_views``) random augmentations of uint8 images (N, C, H, W), chunk by chunk.

    Yields, per chunk of at most ``VIEW_CHUNK`` images, ``n_views`` float32 CPU tensors
    (B, C, H, W) on the [0, 1] scale, before any model's normalisation: every model of a
    concatenation normalises the *same* augmented images its own way. The random parameters
    come from torch's CPU generator seeded with ``seed`` inside a forked RNG state, so the
    views depend only on (images, recipe, seed), never on the device or on earlier draws.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {images.shape}")
    _, c, h, _ = images.shape
    # Mean 0 and std 1: the augmentation's own normalisation becomes the identity.
    augment = BatchAugment(recipe, c, h, torch.zeros(c), torch.ones(c))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(images), VIEW_CHUNK):
            chunk = torch.from_numpy(np.array(images[start:start + VIEW_CHUNK]))
            yield tuple(augment(chunk).float() for _ in range(n_views))


def embed_views(encoder: nn.Module, normalize: Normalize, images: np.ndarray, recipe: str,
                seed: int = 0, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, d) of two seeded augmentations of every uint8 image (N, C, H, W)."""
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for view1, view2 in augmented_views(images, recipe, seed):
        first.append(embed_images(encoder, normalize, view1, device=device))
        second.append(embed_images(encoder, normalize, view2, device=device))
    return np.concatenate(first), np.concatenate(second)


def embed_records(model_path: str | Path, records: Records, device: str | torch.device = "cpu", *,
                  augment: str | None = None, view_seed: int = 0) -> dict[str, np.ndarray]:
    """Embeddings and labels of every split, from one model file.

    ``augment`` (a recipe of :mod:`pipeline.augment`, normally the dataset's training recipe)
    adds ``test_view1_x`` / ``test_view2_x``: two augmented views of the test images, drawn
    with ``view_seed`` (see :func:`augmented_views`); None adds nothing.
    """
    encoder, normalize = load_encoder(model_path, device)
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        split = records.splits[s]
        arrays[f"{s}_x"] = embed_images(encoder, normalize, split.images, device=device)
        for label, values in split.labels.items():
            arrays[f"{s}_{label}"] = values.astype(np.int64)
    if augment is not None:
        views = embed_views(encoder, normalize, records.splits["test"].images, augment,
                            view_seed, device)
        arrays.update(zip(VIEW_KEYS, views))
    return arrays


def concat_embeddings(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the features (every ``*_x`` array) of several methods' embeddings of the same
    images (raw, unnormalised, as the reference does); the label arrays must agree."""
    first = parts[0]
    for p in parts[1:]:
        if set(p) != set(first):
            raise ValueError(f"cannot concatenate: arrays differ between methods "
                             f"({sorted(set(p) ^ set(first))})")
    out = dict(first)
    for key in first:
        if key.endswith("_x"):
            out[key] = np.concatenate([p[key] for p in parts], axis=1)
            continue
        for p in parts[1:]:
            if not np.array_equal(p[key], first[key]):
                raise ValueError(f"cannot concatenate: label array {key!r} differs between methods")
    return out
