"""The reference small pre-norm Vision Transformer (METHOD.md section 4).

Defaults: 4x4 patches, width 256, 8 heads, 7 layers, MLP 512, GELU, CLS-token output (256-d),
dropout 0.05, stochastic depth rising linearly from 0 (first block) to 0.05 (last block),
learned position embeddings for (image_size / patch_size)**2 patches + CLS.

Dropout (rate ``dropout``) is applied where the common small-ViT recipes put it: on the
token embeddings after adding positions, on the attention weights, after the attention output
projection, after the MLP activation and after the MLP output. Stochastic depth drops a whole
residual branch per sample (torchvision's ``StochasticDepth``, mode "row"); both are identities
in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import StochasticDepth

__all__ = ["Attention", "Block", "ViT"]


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    (B, N, D) -> (B, N, D); ``dropout`` applies to the attention weights and the output.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"ViT width {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # (B, N, 3D) -> 3 x (B, heads, N, D / heads)
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DP(Attn(LN x)), then x + DP(MLP(LN x)). (B, N, D) -> same."""

    def __init__(
        self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Pre-norm ViT returning the final-LayerNorm'd CLS token.

    Args:
        in_channels: input channels (1 or 3).
        image_size: side of the square input; must be divisible by ``patch_size``.
        patch_size, width, depth, heads, mlp_dim: architecture (reference 4, 256, 7, 8, 512).
        dropout: dropout rate (reference 0.05).
        drop_path: stochastic-depth rate of the last block; block i gets
            drop_path * i / (depth - 1) (reference 0.05).

    forward: (B, in_channels, image_size, image_size) -> (B, width); embed_dim = width.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 4,
        width: int = 256,
        depth: int = 7,
        heads: int = 8,
        mlp_dim: int = 512,
        dropout: float = 0.05,
        drop_path: float = 0.05,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size != 0:
            raise ValueError(
                f"ViT image_size {image_size} must be a positive multiple of patch_size "
                f"{patch_size}"
            )
        if in_channels < 1 or depth < 1 or width < 1 or mlp_dim < 1:
            raise ValueError(
                f"ViT needs positive in_channels, depth, width, mlp_dim; got in_channels="
                f"{in_channels}, depth={depth}, width={width}, mlp_dim={mlp_dim}"
            )
        for name, rate in (("dropout", dropout), ("drop_path", drop_path)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"ViT {name} must be in [0, 1), got {rate}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.embed_dim: int = width
        n_patches = (image_size // patch_size) ** 2

        # A stride-p conv with a p x p kernel is exactly a linear map of each flattened patch.
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        self.pos_drop = nn.Dropout(dropout)
        rates = torch.linspace(0.0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(
            *(Block(width, heads, mlp_dim, dropout, r) for r in rates)
        )
        self.norm = nn.LayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal(0.02) for embeddings and linear maps, as in timm/DeiT.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ViT expects (B, {expected[0]}, {expected[1]}, {expected[2]}) images "
                f"(position embeddings are sized for image_size), got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.norm(self.blocks(tokens))[:, 0]
