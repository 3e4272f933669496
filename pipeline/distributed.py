"""torch.distributed helpers for contrastive losses: gathering embeddings with gradients.

Every helper degrades to the single-process answer when no process group is initialised, so
library code can call them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks, as a new tensor (no gradient); ``t`` itself when not distributed."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_with_grad(z: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None, int]:
    """Concatenate ``z`` (and ``labels``) of all ranks in rank order; gradients reach each rank's own rows.

    z: (n_r, ...) on rank r (ranks may hold different n_r); labels: (n_r,) or None.
    Returns ``(z_all, labels_all, offset)`` with z_all of shape (sum n_r, ...) and
    ``z_all[offset:offset + n_r]`` being this rank's rows. The backward pass *sums* the gradient of
    ``z_all`` over ranks before taking the own rows: rank r' scores its anchors against rank r's
    rows too, and that gradient must reach rank r. Not distributed: returns ``(z, labels, 0)``.
    """
    if not is_distributed():
        return z, labels, 0
    sizes = _all_gather_padded(torch.tensor([z.shape[0]], device=z.device), [1] * world_size())
    sizes = [int(s) for s in sizes]
    offset = sum(sizes[: rank()])
    z_all = _GatherWithGrad.apply(z, sizes, offset)
    labels_all = None if labels is None else _all_gather_padded(labels.detach(), sizes)
    return z_all, labels_all, offset


def _all_gather_padded(t: Tensor, sizes: list[int]) -> Tensor:
    """all_gather for first dimensions that differ between ranks (all_gather needs equal shapes)."""
    n_max = max(sizes)
    padded = torch.cat([t, t.new_zeros((n_max - t.shape[0], *t.shape[1:]))]) if t.shape[0] < n_max else t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward = all_reduce(SUM) then own slice.

    Written with all_reduce rather than reduce_scatter because the gloo backend (CPU tests) has
    no reduce_scatter.
    """

    @staticmethod
    def forward(ctx, z: Tensor, sizes: list[int], offset: int) -> Tensor:  # type: ignore[override]
        ctx.offset, ctx.n = offset, z.shape[0]
        return _all_gather_padded(z, sizes)

    @staticmethod
    def backward(ctx, grad_all: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad_all = grad_all.contiguous().clone()
        dist.all_reduce(grad_all, op=dist.ReduceOp.SUM)
        return grad_all[ctx.offset : ctx.offset + ctx.n], None, None
