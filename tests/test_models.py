"""Backbones (ResNet, ViT) and the reconstruction decoder: shapes, gradients, eval determinism,
drop-path, channels_last and bf16 autocast, architecture checks against the reference spec."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from pipeline.models.decoder import ConvDecoder, decoder_plan
from pipeline.models.resnet import ResNet18, ResNet50, ResNetEncoder
from pipeline.models.vit import Attention, ViT


def small_vit(in_channels: int, image_size: int, **kw: object) -> ViT:
    """A narrow ViT that keeps the option-level tests fast."""
    opts: dict = dict(patch_size=4, width=32, depth=2, heads=4, mlp_dim=64)
    opts.update(kw)
    return ViT(in_channels, image_size, **opts)


Ctor = Callable[..., nn.Module]
BACKBONES: list[tuple[str, Ctor, int]] = [
    ("resnet18", ResNet18, 512),
    ("resnet50", ResNet50, 2048),
    ("vit", small_vit, 32),
    ("vit_ref", ViT, 256),  # the reference width/depth, default options
]
# (name, ctor, embed_dim) x channels x size; ResNet-50 only on the cheap sizes.
SHAPE_CASES = [
    (name, ctor, dim, c, s)
    for name, ctor, dim in BACKBONES
    for c in (1, 3)
    for s in ((8, 28, 32) if name == "resnet50" else (8, 28, 32, 64))
]


def _images(b: int, c: int, s: int, seed: int = 0) -> Tensor:
    return torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def _check_all_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


# ---------------------------------------------------------------- encoders: shapes and gradients
@pytest.mark.parametrize(
    "name,ctor,dim,channels,size",
    SHAPE_CASES,
    ids=[f"{n}-{c}ch-{s}px" for n, _, _, c, s in SHAPE_CASES],
)
def test_encoder_maps_images_to_embeddings(
    name: str, ctor: Ctor, dim: int, channels: int, size: int
) -> None:
    torch.manual_seed(0)
    model = ctor(channels, size)
    assert model.embed_dim == dim
    out = model(_images(2, channels, size))
    assert out.shape == (2, dim)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name,ctor,dim", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_encoder_gradients_reach_every_parameter_and_pixel(name: str, ctor: Ctor, dim: int) -> None:
    torch.manual_seed(0)
    model = ctor(3, 16)
    x = _images(4, 3, 16).requires_grad_(True)
    model(x).square().sum().backward()
    _check_all_grads(model)
    # Every 4x4 patch influences the embedding (no dead region, e.g. a ViT ignoring tokens).
    per_patch = x.grad.abs().sum(dim=(0, 1)).view(4, 4, 4, 4).sum(dim=(1, 3))
    assert (per_patch > 0).all()


@pytest.mark.parametrize("name,ctor,dim", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_encoder_eval_is_deterministic_and_batch_independent(
    name: str, ctor: Ctor, dim: int
) -> None:
    torch.manual_seed(0)
    model = ctor(3, 16)
    model.train()
    model(_images(8, 3, 16, seed=1))  # move BN running stats off their init
    model.eval()
    x = _images(4, 3, 16, seed=2)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[:1])
    assert torch.equal(a, b)
    # In eval mode a sample's embedding cannot depend on the rest of the batch.
    torch.testing.assert_close(single, a[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,ctor,dim", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_encoder_channels_last_matches_contiguous(name: str, ctor: Ctor, dim: int) -> None:
    torch.manual_seed(0)
    model = ctor(3, 16).eval()
    x = _images(2, 3, 16)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)


@pytest.mark.parametrize("name,ctor,dim", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_encoder_runs_under_bf16_autocast_channels_last(name: str, ctor: Ctor, dim: int) -> None:
    torch.manual_seed(0)
    model = ctor(3, 16).eval().to(memory_format=torch.channels_last)
    x = _images(2, 3, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == (2, dim) and torch.isfinite(out.float()).all()
    # bf16 keeps ~3 significant digits: same direction, not the same bits.
    assert (_cosine_rows(out, ref) > 0.99).all()


def test_encoders_reject_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ResNet18(3, 32)(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        small_vit(1, 8)(torch.zeros(2, 3, 8, 8))


# ---------------------------------------------------------------------------------- ResNet
def _stage4_side(model: ResNetEncoder, size: int) -> int:
    seen: list[int] = []
    hook = model.net.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, model.in_channels, size, size))
    hook.remove()
    return seen[0]


def test_resnet_stem_follows_the_64px_threshold() -> None:
    small, large = ResNet18(3, 64), ResNet18(3, 96)
    assert small.stem == "cifar" and large.stem == "imagenet"
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, nn.Identity)
    assert large.net.conv1.kernel_size == (7, 7) and large.net.conv1.stride == (2, 2)
    assert isinstance(large.net.maxpool, nn.MaxPool2d)
    # Total downsampling before the pool: 8 with the CIFAR stem, 32 with the ImageNet stem.
    assert _stage4_side(ResNet18(3, 32), 32) == 4
    assert _stage4_side(large, 96) == 3
    assert ResNet18(1, 32, stem="imagenet").stem == "imagenet"


def test_resnet_embedding_is_the_pooled_stage4_map() -> None:
    torch.manual_seed(0)
    model = ResNet18(3, 32).eval()
    maps: list[Tensor] = []
    hook = model.net.layer4.register_forward_hook(lambda m, i, o: maps.append(o))
    with torch.no_grad():
        out = model(_images(2, 3, 32))
    hook.remove()
    torch.testing.assert_close(out, maps[0].mean(dim=(2, 3)))


def test_resnet_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNetEncoder(3, 32, depth=34)
    with pytest.raises(ValueError, match="stem"):
        ResNetEncoder(3, 32, stem="tiny")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- ViT
def _vit_param_count(c: int, s: int, p: int, d: int, depth: int, m: int) -> int:
    """Parameter count written from the architecture description."""
    patch = c * p * p * d + d
    tokens = d + ((s // p) ** 2 + 1) * d  # CLS + position embeddings
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    return patch + tokens + depth * block + 2 * d


def test_vit_defaults_are_the_reference_architecture() -> None:
    model = ViT(3, 32)
    assert model.embed_dim == 256
    assert len(model.blocks) == 7
    assert model.patch_embed.kernel_size == (4, 4) and model.patch_embed.stride == (4, 4)
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 256)
    assert all(b.attn.heads == 8 for b in model.blocks)
    assert all(isinstance(b.mlp[1], nn.GELU) for b in model.blocks)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _vit_param_count(3, 32, 4, 256, 7, 512)
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(p == 0.05 for p in dropouts)
    assert all(b.attn.dropout == 0.05 for b in model.blocks)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert rates == pytest.approx([0.05 * i / 6 for i in range(7)])


def test_vit_position_embeddings_follow_image_and_patch_size() -> None:
    assert ViT(1, 28, width=32, heads=4).pos_embed.shape == (1, 7 * 7 + 1, 32)
    assert ViT(1, 8, patch_size=2, width=32, heads=4).pos_embed.shape == (1, 17, 32)


def test_vit_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViT(3, 30)
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        ViT(3, 32, width=30, heads=8)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        small_vit(3, 32)(torch.zeros(1, 3, 16, 16))


def test_attention_matches_explicit_softmax_oracle() -> None:
    torch.manual_seed(0)
    dim, heads = 12, 3
    attn = Attention(dim, heads).eval()
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    attn.double()
    hd = dim // heads
    wq, wk, wv = attn.qkv.weight.split(dim)
    bq, bk, bv = attn.qkv.bias.split(dim)
    expected = torch.empty(2, 5, dim, dtype=torch.float64)
    for b in range(2):
        heads_out = []
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            q = x[b] @ wq[sl].T + bq[sl]
            k = x[b] @ wk[sl].T + bk[sl]
            v = x[b] @ wv[sl].T + bv[sl]
            w = torch.softmax(q @ k.T / math.sqrt(hd), dim=-1)
            heads_out.append(w @ v)
        expected[b] = torch.cat(heads_out, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected)


def test_vit_drop_path_and_dropout_active_in_train_off_in_eval() -> None:
    torch.manual_seed(0)
    noisy = small_vit(3, 16, dropout=0.0, drop_path=0.5)
    clean = small_vit(3, 16, dropout=0.0, drop_path=0.0)
    clean.load_state_dict(noisy.state_dict())
    x = _images(8, 3, 16)
    with torch.no_grad():
        noisy.train()
        assert not torch.equal(noisy(x), noisy(x))  # drop-path samples differ per call
        noisy.eval()
        clean.eval()
        # Eval mode: drop-path is the identity (no rescaling), so weights alone decide.
        torch.testing.assert_close(noisy(x), clean(x), rtol=0, atol=0)
        clean.train()  # no dropout, no drop-path: train mode equals eval mode
        torch.testing.assert_close(clean(x), noisy(x), rtol=0, atol=0)

    dropout_only = small_vit(3, 16, dropout=0.5, drop_path=0.0).train()
    with torch.no_grad():
        assert not torch.equal(dropout_only(x), dropout_only(x))


# ---------------------------------------------------------------------------------- decoder
def test_decoder_plan_reproduces_the_reference_at_32px() -> None:
    # Reference: linear to 512x4x4, then three doubling blocks to 32x32.
    assert decoder_plan(32) == (4, [512, 256, 128, 64])
    assert decoder_plan(8) == (4, [128, 64])
    assert decoder_plan(28) == (7, [256, 128, 64])
    assert decoder_plan(224) == (7, [512, 256, 128, 64, 64, 64])


@pytest.mark.parametrize("size", [3, 8, 9, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_decoder_output_shape(size: int, channels: int) -> None:
    s0, widths = decoder_plan(size)
    assert size <= s0 * 2 ** (len(widths) - 1) < 2 * size or size < 4
    torch.manual_seed(0)
    out = ConvDecoder(16, channels, size)(torch.randn(2, 16))
    assert out.shape == (2, channels, size, size)
    assert torch.isfinite(out).all()


def test_decoder_has_no_output_activation() -> None:
    # A normalised image has negative pixels; the decoder must be able to produce them.
    torch.manual_seed(0)
    out = ConvDecoder(16, 3, 8)(torch.randn(4, 16))
    assert (out < 0).any() and (out > 0).any()
    assert isinstance(ConvDecoder(16, 3, 8).head, nn.Conv2d)


def test_decoder_trains_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(0)
    dec = ConvDecoder(16, 3, 8)
    z, target = torch.randn(8, 16), torch.randn(8, 3, 8, 8)
    loss = (dec(z) - target).square().mean()
    loss.backward()
    _check_all_grads(dec)
    # A few Adam steps on one batch must lower the reconstruction error.
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        step_loss = (dec(z) - target).square().mean()
        step_loss.backward()
        opt.step()
        losses.append(step_loss.item())
    assert losses[-1] < 0.5 * losses[0]
    dec.eval()
    with torch.no_grad():
        assert torch.equal(dec(z), dec(z))


def test_decoder_runs_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    dec = ConvDecoder(16, 3, 32).eval().to(memory_format=torch.channels_last)
    z = torch.randn(2, 16)
    with torch.no_grad():
        ref = dec(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = dec(z)
    assert out.shape == ref.shape
    assert (_cosine_rows(out.flatten(1), ref.flatten(1)) > 0.99).all()


def test_decoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        ConvDecoder(16, 3, 8)(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="image_size"):
        ConvDecoder(16, 3, 0)
