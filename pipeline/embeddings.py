"""Frozen embeddings: load a trained encoder, embed every split in eval mode, concatenate methods.

An embedding file holds, for each split s in train/val/test, ``{s}_x`` (N, d)
float32 and one ``{s}_{label}`` (N,) int64 per label role of the dataset
(coarse/fine, or y/attribute/group).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.augment import Normalize
from pipeline.data.records import SPLITS, Records
from pipeline.models import build_encoder
from pipeline.training import MODEL_FORMAT


class ModelFileError(ValueError):
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
def embed_images(encoder: nn.Module, normalize: Normalize, images: np.ndarray,
                 batch_size: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 embeddings (N, d), encoder in eval mode."""
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)
        out.append(encoder(normalize(x)).float().cpu())
    return torch.cat(out).numpy()


def embed_records(model_path: str | Path, records: Records,
                  device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Embeddings and labels of every split, from one model file."""
    encoder, normalize = load_encoder(model_path, device)
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        split = records.splits[s]
        arrays[f"{s}_x"] = embed_images(encoder, normalize, split.images, device=device)
        for label, values in split.labels.items():
            arrays[f"{s}_{label}"] = values.astype(np.int64)
    return arrays


def concat_embeddings(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the features of several methods' embeddings of the same images (raw, unnormalised,
    as the reference does); the label arrays must agree."""
    first = parts[0]
    out = dict(first)
    for s in SPLITS:
        out[f"{s}_x"] = np.concatenate([p[f"{s}_x"] for p in parts], axis=1)
    for key in first:
        if not key.endswith("_x"):
            for p in parts[1:]:
                if not np.array_equal(p[key], first[key]):
                    raise ValueError(f"cannot concatenate: label array {key!r} differs between methods")
    return out
