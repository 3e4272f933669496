"""Batched augmentation: shapes, dtype, range, independence of views and samples, reproducibility."""

from __future__ import annotations

import pytest
import torch

from pipeline.augment import BatchAugment, Normalize, channel_stats

RECIPES = ("digits", "cifar", "crop_flip", "none")


def _images(channels: int, size: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    """uint8 (n, C, H, W): smooth random blobs, so crops and jitter change pixel values."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


def _augment(recipe: str, images: torch.Tensor) -> BatchAugment:
    mean, std = channel_stats(images)
    return BatchAugment(recipe, images.shape[1], images.shape[-1], mean, std)


def _range(aug: BatchAugment) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds (1, C, 1, 1) of normalised [0, 1] values."""
    norm = aug.normalize
    return (0 - norm.mean) / norm.std, (1 - norm.mean) / norm.std


def test_channel_stats_are_the_per_channel_moments_on_the_unit_scale() -> None:
    x = _images(3, 8)
    mean, std = channel_stats(x)
    f = x.double() / 255
    for c in range(3):
        assert mean[c].item() == pytest.approx(f[:, c].mean().item(), rel=1e-5)
        assert std[c].item() == pytest.approx(f[:, c].std().item(), rel=1e-4)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_views_keep_shape_dtype_and_the_normalised_unit_range(recipe: str, channels: int, size: int) -> None:
    x = _images(channels, size)
    aug = _augment(recipe, x)
    torch.manual_seed(0)
    v = aug.views(x, 3)
    assert v.shape == (len(x), 3, channels, size, size) and v.dtype == torch.float32
    assert torch.isfinite(v).all()
    lo, hi = _range(aug)
    eps = 1e-5
    assert (v >= lo[:, None] - eps).all() and (v <= hi[:, None] + eps).all()


@pytest.mark.parametrize("recipe", ["digits", "cifar"])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_views_differ_and_samples_get_their_own_parameters(recipe: str, channels: int, size: int) -> None:
    one = _images(channels, size, n=1)
    x = one.expand(32, -1, -1, -1).contiguous()  # 32 copies of the same image
    aug = _augment(recipe, _images(channels, size))
    torch.manual_seed(0)
    v = aug.views(x, 2)
    # The two views of an image differ...
    assert (v[:, 0] - v[:, 1]).abs().amax(dim=(1, 2, 3)).min() > 0
    # ...and so do the copies of one image inside a view (per-sample, not per-batch, parameters).
    first = v[:, 0].flatten(1)
    distinct = {tuple(row.tolist()) for row in first}
    assert len(distinct) > 16


@pytest.mark.parametrize("recipe", ["digits", "cifar"])
def test_reproducible_with_torch_manual_seed(recipe: str) -> None:
    x = _images(3, 16)
    aug = _augment(recipe, x)
    torch.manual_seed(7)
    a = aug.views(x, 2)
    torch.manual_seed(7)
    b = aug.views(x, 2)
    torch.manual_seed(8)
    c = aug.views(x, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("channels", [1, 3])
def test_recipe_none_is_exactly_normalisation(channels: int) -> None:
    x = _images(channels, 8)
    mean, std = channel_stats(x)
    aug = BatchAugment("none", channels, 8, mean, std)
    expected = (x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(aug(x), expected, rtol=1e-6, atol=1e-6)
    v = aug.views(x, 2)
    assert torch.equal(v[:, 0], v[:, 1])
    torch.testing.assert_close(Normalize(mean, std)(x), expected, rtol=1e-6, atol=1e-6)
    # Normalised training data has zero mean and unit std per channel.
    torch.testing.assert_close(expected.mean(dim=(0, 2, 3)), torch.zeros(channels), atol=1e-5, rtol=0)
    torch.testing.assert_close(expected.std(dim=(0, 2, 3)), torch.ones(channels), atol=1e-4, rtol=0)


def test_cifar_recipe_turns_about_a_fifth_of_colour_images_grey() -> None:
    x = _images(3, 16, n=1024)
    aug = _augment("cifar", x)
    torch.manual_seed(0)
    v = aug(x)
    raw = v * aug.normalize.std + aug.normalize.mean  # back to [0, 1]
    grey = ((raw[:, 0] - raw[:, 1]).abs().amax(dim=(1, 2)) < 1e-5) & \
           ((raw[:, 1] - raw[:, 2]).abs().amax(dim=(1, 2)) < 1e-5)
    assert 0.14 < grey.float().mean().item() < 0.26  # RandomGrayscale(p=0.2); 1024 draws: sd 0.0125


def _ops(recipe: str, channels: int) -> set[str]:
    return {type(m).__name__ for m in _augment(recipe, _images(channels, 8)).augment.children()}


def test_digits_recipe_never_mirrors_and_grey_images_skip_colour_ops() -> None:
    """Mirrored digits are other symbols: the digits recipe has no flip, cifar has one."""
    assert "RandomHorizontalFlip" not in _ops("digits", 1)
    assert "RandomHorizontalFlip" in _ops("cifar", 1)
    assert "RandomGrayscale" in _ops("cifar", 3) and "RandomGrayscale" not in _ops("cifar", 1)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    x = _images(1, 8)
    aug = _augment("digits", x)
    with pytest.raises(TypeError, match=r"uint8 images of shape \(B, C, H, W\), got dtype torch.float32"):
        aug(x.float())
    with pytest.raises(ValueError, match="unknown augmentation recipe 'autoaugment'; allowed: digits, cifar, crop_flip, none"):
        _augment("autoaugment", x)


def test_crop_flip_keeps_colours_where_the_cifar_recipe_changes_them() -> None:
    """A flat-colour image stays that colour under crop_flip (the label may be a colour, CelebA's
    Blond_Hair); colour jitter and grayscale in the cifar recipe change it."""
    colours = torch.tensor([[230, 200, 40], [30, 90, 220]], dtype=torch.uint8)
    x = colours.repeat(32, 1)[:, :, None, None].expand(-1, -1, 32, 32).contiguous()  # (64, 3, 32, 32)
    torch.manual_seed(0)
    kept = _augment("crop_flip", x).views(x, 2)
    changed = _augment("cifar", x).views(x, 2)
    clean = _augment("none", x)(x)[:, None]
    assert torch.allclose(kept, clean.expand_as(kept), atol=1e-4)
    assert (changed - clean).abs().amax(dim=(2, 3, 4)).gt(0.1).float().mean() > 0.5
