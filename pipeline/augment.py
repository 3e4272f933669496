"""Per-sample random augmentation applied to whole batches on the device (kornia).

Images stay uint8 (B, C, H, W) on the device; a batch is converted to float in
[0, 1], augmented with independent random parameters per sample, then
normalised with the training split's per-channel mean and std. The same code
runs on CPU and GPU; randomness comes from torch's generator for that device,
so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import Tensor, nn


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (C,) of uint8 images (N, C, H, W), on the [0, 1] scale."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean, std


class Normalize(nn.Module):
    """uint8 (B, C, H, W) -> float (B, C, H, W), standardised per channel."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return (x - self.mean) / self.std


# Crops use cropping_mode="resample": one batched affine warp for the whole batch. Kornia's default
# ("slice") crops and resizes image by image in a Python loop: 1 resize call per image, hundreds
# of small kernel launches per batch on a GPU (1.4x slower even on 8 px CPU).


def _no_augmentation(channels: int, size: int) -> list[nn.Module]:
    return []


def _digits(channels: int, size: int) -> list[nn.Module]:
    # 8x8 digits: geometry only changes a few pixels, so crops stay large, no flips (mirrored
    # digits are other symbols) and only brightness/contrast jitter (grayscale).
    return [
        K.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25), cropping_mode="resample"),
        K.RandomRotation(15.0),
        K.ColorJitter(brightness=0.3, contrast=0.3, p=0.8),
    ]


def _cifar(channels: int, size: int) -> list[nn.Module]:
    # The reference recipe (METHOD.md section 4).
    ops: list[nn.Module] = [
        K.RandomResizedCrop((size, size), scale=(0.2, 1.0), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
    ]
    if channels == 3:
        ops += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
    else:
        ops += [K.ColorJitter(0.4, 0.4, p=0.8)]
    return ops


def _crop_flip(channels: int, size: int) -> list[nn.Module]:
    # The reference geometry without colour changes: for labels that ARE a colour (CelebA's
    # Blond_Hair), colour jitter and grayscale would corrupt the very signal to learn.
    return [
        K.RandomResizedCrop((size, size), scale=(0.2, 1.0), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
    ]


# The registry of augmentation recipes (``recipe.augment`` in params.yaml): name -> the ops of a
# view, built for (channels, image size). The only place these names are defined.
RECIPES: dict[str, Callable[[int, int], list[nn.Module]]] = {
    "digits": _digits,
    "cifar": _cifar,
    "crop_flip": _crop_flip,
    "none": _no_augmentation,
}


def _ops(recipe: str, channels: int, size: int) -> list[nn.Module]:
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    return RECIPES[recipe](channels, size)


class BatchAugment(nn.Module):
    """Random augmentation of a uint8 batch (B, C, H, W) -> normalised float (B, C, H, W)."""

    def __init__(self, recipe: str, channels: int, size: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        ops = _ops(recipe, channels, size)
        self.augment = K.AugmentationSequential(*ops) if ops else nn.Identity()
        self.normalize = Normalize(mean, std)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"BatchAugment expects uint8 images of shape (B, C, H, W), got dtype "
                            f"{images.dtype}, shape {tuple(images.shape)}")
        x = images.float() / 255.0
        x = self.augment(x).clamp_(0.0, 1.0)
        return self.normalize(x)

    def views(self, images: Tensor, n_views: int) -> Tensor:
        """``n_views`` independent augmentations: (B, C, H, W) -> (B, V, C, H, W)."""
        return torch.stack([self(images) for _ in range(n_views)], dim=1)
