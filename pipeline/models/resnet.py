"""ResNet-18 / ResNet-50 encoders (METHOD.md section 4), torchvision's body with a chosen stem.

Stem rule (``stem="auto"``): images of at most ``CIFAR_STEM_MAX_SIZE`` = 64 px get the CIFAR stem
(3x3 conv, stride 1, no max-pool), larger ones the ImageNet stem (7x7 conv, stride 2, 3x3
max-pool stride 2). The ImageNet stem divides the resolution by 4 before the first stage, which
would leave a 32 px image as a 1x1 map at stage 4; the CIFAR stem keeps 32 px -> 4x4 at stage 4,
the usual choice for CIFAR (and for 64 px TinyImageNet, where it gives 8x8). 8 px digits reach
1x1 at stage 4 with the CIFAR stem, which still works.

The classifier ``fc`` is removed: forward returns the globally average-pooled features,
(B, 512) for ResNet-18 and (B, 2048) for ResNet-50. Weights are randomly initialised
(the reference trains from scratch).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn
from torchvision import models as tvm

__all__ = ["CIFAR_STEM_MAX_SIZE", "ResNet18", "ResNet50", "ResNetEncoder"]

#: Largest image side (px) that gets the CIFAR stem under ``stem="auto"``.
CIFAR_STEM_MAX_SIZE = 64

Stem = Literal["auto", "cifar", "imagenet"]

_DEPTHS = {18: tvm.resnet18, 50: tvm.resnet50}


class ResNetEncoder(nn.Module):
    """ResNet trunk + global average pool.

    Args:
        in_channels: input channels (1 or 3).
        image_size: side of the (square) input; only used to choose the stem.
        depth: 18 or 50.
        stem: "cifar", "imagenet", or "auto" (CIFAR stem iff image_size <= 64).
        zero_init_residual: zero the last BN of each residual block (torchvision option).

    forward: (B, in_channels, H, W) -> (B, embed_dim), embed_dim = 512 (R18) or 2048 (R50).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        depth: int = 18,
        stem: Stem = "auto",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if stem not in ("auto", "cifar", "imagenet"):
            raise ValueError(f"ResNet stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
        if in_channels < 1 or image_size < 1:
            raise ValueError(
                f"ResNet needs in_channels >= 1 and image_size >= 1, got "
                f"in_channels={in_channels}, image_size={image_size}"
            )
        if stem == "auto":
            stem = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
        self.in_channels = in_channels
        self.stem = stem

        net = _DEPTHS[depth](weights=None, zero_init_residual=zero_init_residual)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # Same init torchvision gives its own conv1 (the replacement would get PyTorch's default).
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.embed_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNetEncoder expects (B, {self.in_channels}, H, W) images, got {tuple(x.shape)}"
            )
        return self.net(x)


class ResNet18(ResNetEncoder):
    """ResNet-18 encoder, embed_dim 512. ``options`` as in :class:`ResNetEncoder` (not depth)."""

    def __init__(self, in_channels: int, image_size: int, **options: Any) -> None:
        super().__init__(in_channels, image_size, depth=18, **options)


class ResNet50(ResNetEncoder):
    """ResNet-50 encoder, embed_dim 2048. ``options`` as in :class:`ResNetEncoder` (not depth)."""

    def __init__(self, in_channels: int, image_size: int, **options: Any) -> None:
        super().__init__(in_channels, image_size, depth=50, **options)
