"""Which torch device a computation runs on: one rule for training and evaluation."""

from __future__ import annotations

import torch


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): the first GPU when one is present, else the CPU; ``"cuda"`` without a
    GPU is an error rather than a silent week on the CPU; anything else as torch reads it."""
    if preference is None or preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device
