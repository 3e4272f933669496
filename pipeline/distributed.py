"""torch.distributed helpers: the torchrun process group, and cross-rank means and gathers.

Every helper degrades to the single-process answer when no process group is initialised, so
library code can call them unconditionally. :func:`process_group` is the one place that starts
and ends a group: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it initialises
nccl on CUDA or gloo on CPU for the duration of a ``with`` block; without torchrun it does
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_sum",
    "gather_with_grad",
    "is_distributed",
    "launched_world_size",
    "mean_over_ranks",
    "process_group",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def launched_world_size() -> int:
    """The number of processes the launcher started (torchrun's ``WORLD_SIZE``; 1 without one)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable WORLD_SIZE={raw!r}: expected a positive integer") from None
    if n < 1:
        raise RuntimeError(f"environment variable WORLD_SIZE={raw!r}: expected a positive integer")
    return n


@contextmanager
def process_group(device_type: str) -> Iterator[None]:
    """The default process group of a torchrun launch, for the duration of the block.

    With ``WORLD_SIZE`` > 1 and no group yet: on ``device_type == "cuda"`` pins this process to
    GPU ``LOCAL_RANK`` (so ``torch.device("cuda")`` means its own GPU) and initialises nccl,
    otherwise gloo; rank, world size and rendezvous come from torchrun's environment
    (``env://``). The group is destroyed when the block exits, on error too. Without torchrun,
    or when the caller already initialised a group (tests), it does nothing.
    """
    if launched_world_size() == 1 or is_distributed():
        yield
        return
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set: "
                               "launch with `torchrun --nproc_per_node N ...`, which sets both")
    device_id = None
    if device_type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are "
                               "visible: use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        device_id = torch.device("cuda", local)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method="env://",
                            device_id=device_id)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks, as a new tensor (no gradient); ``t`` itself when not distributed."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_over_ranks(local_means: Tensor, n_local: int) -> Tensor:
    """Whole-batch means (T,) from this rank's means (T,) over its ``n_local`` rows, DDP-ready.

    For a per-row mean loss (cross-entropy, MSE) when ranks may hold unequal shares: the value
    is ``sum_r n_r * mean_r / sum_r n_r`` on every rank (the single-process loss, so every rank
    logs and NaN-checks the same number), and the gradient is that of
    ``world * n_local / n_total * local_means``, which DistributedDataParallel's gradient
    *average* over ranks turns into the whole-batch gradient. Not distributed: ``local_means``.
    """
    if not is_distributed():
        return local_means
    world = world_size()
    stats = torch.cat([local_means.detach() * n_local, local_means.new_tensor([float(n_local)])])
    stats = all_reduce_sum(stats)
    total_means, n_total = stats[:-1] / stats[-1], stats[-1]
    scaled = local_means * (world * n_local / n_total)
    return scaled + (total_means - scaled).detach()


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
