"""The small CNN of the embedded suite: a few 3x3 conv blocks for tiny (8-32 px) images."""

from __future__ import annotations

from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """(B, C, H, W) -> (B, embed_dim). One conv block per stage, 2x2 max-pool between stages.

    An 8x8 input goes 8 -> 4 -> 2 px; global average pooling then makes the
    encoder size-agnostic, and a linear layer maps to the embedding.
    """

    def __init__(self, in_channels: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128),
                 embed_dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers.append(_block(c, w))
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c, embed_dim)
        self.embed_dim = embed_dim
        self.image_size = image_size

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.features(x))
