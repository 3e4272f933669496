"""Encoders and decoders by name.

Every encoder is an ``nn.Module`` with an int ``embed_dim``, built as
``cls(in_channels, image_size)``, mapping normalised images (B, C, H, W) to
embeddings (B, embed_dim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (no torch import to look a name up)
    from torch import nn


def _small_cnn(in_channels: int, image_size: int) -> nn.Module:
    from pipeline.models.cnn import SmallCNN

    return SmallCNN(in_channels, image_size)


def _resnet18(in_channels: int, image_size: int) -> nn.Module:
    from pipeline.models.resnet import ResNet18

    return ResNet18(in_channels, image_size)


def _resnet50(in_channels: int, image_size: int) -> nn.Module:
    from pipeline.models.resnet import ResNet50

    return ResNet50(in_channels, image_size)


def _vit(in_channels: int, image_size: int) -> nn.Module:
    from pipeline.models.vit import ViT

    return ViT(in_channels, image_size)


# The registry of encoders (``recipe.backbone`` in params.yaml): name -> builder
# ``(in_channels, image_size) -> nn.Module``. The only place these names are defined; each
# builder imports its module when called, so looking a name up costs nothing.
ENCODERS: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,
    "resnet50": _resnet50,
    "vit": _vit,
}


# Pretrained weights (``recipe.pretrained``): name -> {backbone: torchvision weights enum}; null
# (the default) trains from random initialisation. torchvision's IMAGENET1K_V1 is what
# ``pretrained=True`` gave, the start of every published worst-group anchor (group DRO, GEORGE, JTT,
# DFR). pipeline/models/pretrained.py fetches, verifies and loads them.
PRETRAINED: dict[str, dict[str, str]] = {
    "imagenet": {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"},
}


def build_encoder(name: str, in_channels: int, image_size: int) -> nn.Module:
    """An encoder from its ``recipe.backbone`` name."""
    if name not in ENCODERS:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(ENCODERS)}")
    return ENCODERS[name](in_channels, image_size)


def build_decoder(embed_dim: int, out_channels: int, image_size: int, width: int = 64) -> nn.Module:
    """The reconstruction decoder of the class-conditional autoencoder: (B, d) -> (B, C, H, W).

    ``width`` is the channel width of its last block (64 in the reference; widths double
    towards the start grid, capped at 512).
    """
    from pipeline.models.decoder import ConvDecoder

    return ConvDecoder(embed_dim, out_channels, image_size, base_width=width)
