"""Reconstruction decoder of the class-conditional autoencoder (METHOD.md section 3).

The reference decodes a 32 px CIFAR image as: linear to 512x4x4, then ResNet-18-style upsampling
residual blocks (each doubles the resolution: 4 -> 8 -> 16 -> 32) and a 3x3 conv to the pixel
channels, with no output activation (the target is the *normalised* input, loss MSE).

For other sizes the same recipe is kept and only the number of doubling blocks changes:
``n = floor(log2(image_size / 4))`` blocks from a start grid ``s0 = ceil(image_size / 2**n)``,
so ``s0`` lies in [4, 8) and ``s0 * 2**n`` is the smallest such grid covering the image
(8 px -> 4x4 + 1 block; 28 px -> 7x7 + 2 blocks; 32 px -> 4x4 + 3 blocks; 224 px -> 7x7 + 5
blocks). When ``s0 * 2**n`` overshoots (e.g. 100 px -> 7 * 16 = 112) the output is centre-cropped,
which keeps every output pixel produced by the same convolutions (no interpolation blur).
Images smaller than 4 px use no block at all.

Channel widths halve at each block and end at ``base_width`` (64, as in ResNet-18's first
stage); the start width is ``base_width * 2**n`` capped at ``max_width`` (512). So 32 px gives
the reference 512 -> 256 -> 128 -> 64, while 8 px digits get a small 128 -> 64 decoder.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ConvDecoder", "UpBlock", "decoder_plan"]


class UpBlock(nn.Module):
    """ResNet basic block run backwards: doubles the resolution and changes the width.

    main path:  conv3x3 -> BN -> ReLU -> nearest x2 -> conv3x3 -> BN
    shortcut:   nearest x2 -> conv1x1 -> BN   (identity when neither size nor width changes)
    output:     ReLU(main + shortcut)

    Nearest upsampling followed by a conv (rather than a transposed conv) avoids checkerboard
    artefacts in the reconstruction.

    (B, in_ch, H, W) -> (B, out_ch, 2H, 2W), or (B, out_ch, H, W) when ``upsample=False``.
    """

    def __init__(self, in_ch: int, out_ch: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if upsample or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if self.upsample else x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self._up(out)))
        return F.relu(out + self.shortcut(self._up(x)))


def decoder_plan(
    image_size: int, base_width: int = 64, max_width: int = 512
) -> tuple[int, list[int]]:
    """Start grid and channel widths of the decoder for ``image_size``.

    Returns ``(s0, widths)``: the decoder starts at ``widths[0] x s0 x s0`` and each of the
    ``len(widths) - 1`` blocks doubles the grid and moves to the next width.
    Example: ``decoder_plan(32) == (4, [512, 256, 128, 64])``.
    """
    if image_size < 1:
        raise ValueError(f"decoder image_size must be >= 1, got {image_size}")
    if base_width < 1 or max_width < base_width:
        raise ValueError(
            f"decoder widths need 1 <= base_width <= max_width, got base_width={base_width}, "
            f"max_width={max_width}"
        )
    n_up = int(math.floor(math.log2(image_size / 4))) if image_size >= 4 else 0
    s0 = math.ceil(image_size / 2**n_up)
    widths = [min(max_width, base_width * 2**n_up)]
    for _ in range(n_up):
        widths.append(max(base_width, widths[-1] // 2))
    return s0, widths


class ConvDecoder(nn.Module):
    """Embedding -> image, for pixel reconstruction of the normalised input.

    Args:
        embed_dim: size of the input embedding.
        out_channels: pixel channels to produce (1 or 3).
        image_size: side of the square output image.
        base_width: width of the last block (64 in the reference).
        max_width: cap on the width of the start grid (512 in the reference).

    forward: (B, embed_dim) -> (B, out_channels, image_size, image_size), no output activation.
    """

    def __init__(
        self,
        embed_dim: int,
        out_channels: int,
        image_size: int,
        base_width: int = 64,
        max_width: int = 512,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or out_channels < 1:
            raise ValueError(
                f"ConvDecoder needs embed_dim >= 1 and out_channels >= 1, got "
                f"embed_dim={embed_dim}, out_channels={out_channels}"
            )
        self.embed_dim = embed_dim
        self.out_channels = out_channels
        self.image_size = image_size
        self.start_size, widths = decoder_plan(image_size, base_width, max_width)
        self.start_width = widths[0]

        self.fc = nn.Linear(embed_dim, widths[0] * self.start_size**2)
        self.blocks = nn.Sequential(*(UpBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        # Plain conv head: the target is a normalised image (unbounded), so no activation.
        self.head = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"ConvDecoder expects (B, {self.embed_dim}) embeddings, got {tuple(z.shape)}"
            )
        x = self.fc(z).view(z.shape[0], self.start_width, self.start_size, self.start_size)
        x = self.head(self.blocks(x))
        return _center_crop(x, self.image_size)


def _center_crop(x: Tensor, size: int) -> Tensor:
    """(B, C, S, S) -> (B, C, size, size), S >= size; a no-op view when S == size."""
    s = x.shape[-1]
    if s == size:
        return x
    top = (s - size) // 2
    return x[..., top : top + size, top : top + size]
