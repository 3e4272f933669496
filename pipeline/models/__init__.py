"""Encoders and decoders by name.

Every encoder is an ``nn.Module`` with an int ``embed_dim``, built as
``cls(in_channels, image_size)``, mapping normalised images (B, C, H, W) to
embeddings (B, embed_dim).
"""

from __future__ import annotations

from torch import nn


def build_encoder(name: str, in_channels: int, image_size: int) -> nn.Module:
    """An encoder from its ``recipe.backbone`` name."""
    if name == "small_cnn":
        from pipeline.models.cnn import SmallCNN

        return SmallCNN(in_channels, image_size)
    if name == "resnet18":
        from pipeline.models.resnet import ResNet18

        return ResNet18(in_channels, image_size)
    if name == "resnet50":
        from pipeline.models.resnet import ResNet50

        return ResNet50(in_channels, image_size)
    if name == "vit":
        from pipeline.models.vit import ViT

        return ViT(in_channels, image_size)
    raise ValueError(f"unknown backbone {name!r}; allowed: small_cnn, resnet18, resnet50, vit")


def build_decoder(embed_dim: int, out_channels: int, image_size: int, width: int = 64) -> nn.Module:
    """The reconstruction decoder of the class-conditional autoencoder: (B, d) -> (B, C, H, W).

    ``width`` is the channel width of its last block (64 in the reference; widths double
    towards the start grid, capped at 512).
    """
    from pipeline.models.decoder import ConvDecoder

    return ConvDecoder(embed_dim, out_channels, image_size, base_width=width)
