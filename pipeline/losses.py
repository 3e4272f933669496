"""Contrastive losses of the Thanos benchmark: SupCon, class-conditional InfoNCE, SimCLR, spread.

Shapes: ``z`` is ``(B, V, d)`` raw embeddings (B images, V augmented views, d features; the loss
normalises them itself), ``labels`` is ``(B,)`` integer classes.

For one ordered view pair (anchor view a, candidate view c) every term is read off one logit
matrix ``S[i, k] = cos(z[i, a], z[k, c]) / temperature`` of shape ``(B, B)`` with the masks
``P(i) = {k : y_k = y_i}`` (always holds ``k = i``, the anchor's own other view) and
``N(i) = not P(i)`` (METHOD.md section 2):

* SupCon (reference form, positives not in the denominator)
  ``l_sc(i) = mean_{p in P(i)} [ log(exp S_ip + sum_{n in N(i)} exp S_in) - S_ip ]``;
  with ``pos_in_denom=True``: ``l_sc(i) = logsumexp_k S_ik - mean_{p in P(i)} S_ip``.
* cNCE (instance discrimination inside the class): ``l_cnce(i) = logsumexp_{p in P(i)} S_ip - S_ii``.
* SimCLR: the SupCon term with every image its own class.
* spread: ``(1 - alpha) * l_sc + alpha * l_cnce``.

Each loss is the mean over anchors, averaged over the view pairs: pairs with ``c < a`` (the
reference, one direction) or, with ``symmetric=True``, all ordered pairs ``a != c``.

``reference_compat=True`` reproduces the official code's three quirks instead of true cosine
similarity, for bit-level comparisons with published runs only:

1. column k is divided by ``|z_k^a| * |z_k^c|`` (both norms of the *candidate*), so only the
   diagonal is a true cosine;
2. the positive logit in the SupCon numerator is clamped, ``min(S_ip, 1)`` (the denominator is
   not); this applies to the ``pos_in_denom`` form and to SimCLR too, which the reference
   computes with the same SupCon code;
3. one-directional view pairs only: ``symmetric`` is ignored (forced to False).

Arithmetic runs in float32 (float64 if ``z`` is float64) with autocast disabled, because
log-sum-exps over a bf16/fp16 batch lose the small differences the loss is made of.

Multi-process training: pass ``gather=True`` (see :mod:`pipeline.distributed`). Each rank then
scores its own anchors against the candidates of all ranks; with the model wrapped in
DistributedDataParallel (which averages gradients over ranks) the parameter gradients equal those
of one process holding the whole batch, and the returned value is the whole-batch loss on every
rank. Without an initialised process group ``gather=True`` changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline import distributed

__all__ = [
    "TERMS",
    "cnce_loss",
    "contrastive_losses",
    "simclr_loss",
    "spread_loss",
    "supcon_loss",
    "view_pairs",
]

TERMS: tuple[str, ...] = ("supcon", "cnce", "simclr")

# Norms are clamped to this before dividing, so a zero embedding gives cosine 0, not NaN.
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------- public API


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    *,
    pos_in_denom: bool = False,
    symmetric: bool = False,
    reference_compat: bool = False,
    gather: bool = False,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), reference "positives not in denominator" form.

    z: (B, V, d) raw embeddings; labels: (B,) int. Returns a scalar. See the module docstring for
    the formula and the meaning of the flags.
    """
    return contrastive_losses(
        z, labels, ("supcon",), temperature, pos_in_denom=pos_in_denom, symmetric=symmetric,
        reference_compat=reference_compat, gather=gather,
    )["supcon"]


def simclr_loss(
    z: Tensor,
    temperature: float = 0.5,
    *,
    symmetric: bool = False,
    reference_compat: bool = False,
    gather: bool = False,
) -> Tensor:
    """Self-supervised InfoNCE / NT-Xent (Chen et al. 2020): SupCon with every image its own class.

    z: (B, V, d) raw embeddings. Returns a scalar.
    """
    return contrastive_losses(
        z, None, ("simclr",), temperature, symmetric=symmetric,
        reference_compat=reference_compat, gather=gather,
    )["simclr"]


def cnce_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    *,
    symmetric: bool = False,
    reference_compat: bool = False,
    gather: bool = False,
) -> Tensor:
    """Class-conditional InfoNCE: the own other view against the other images of the same class.

    z: (B, V, d) raw embeddings; labels: (B,) int. Returns a scalar (0 when every class is a
    singleton: there is nothing to discriminate).
    """
    return contrastive_losses(
        z, labels, ("cnce",), temperature, symmetric=symmetric,
        reference_compat=reference_compat, gather=gather,
    )["cnce"]


def spread_loss(
    z: Tensor,
    labels: Tensor,
    alpha: float = 0.5,
    temperature: float = 0.5,
    *,
    pos_in_denom: bool = False,
    symmetric: bool = False,
    reference_compat: bool = False,
    gather: bool = False,
) -> Tensor:
    """Thanos "spread" loss ``(1 - alpha) * SupCon + alpha * cNCE`` (reference alpha = 0.5).

    z: (B, V, d) raw embeddings; labels: (B,) int. Returns a scalar.
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"spread_loss: alpha must be a number in [0, 1], got {alpha!r}")
    terms = contrastive_losses(
        z, labels, ("supcon", "cnce"), temperature, pos_in_denom=pos_in_denom,
        symmetric=symmetric, reference_compat=reference_compat, gather=gather,
    )
    return (1.0 - alpha) * terms["supcon"] + alpha * terms["cnce"]


def contrastive_losses(
    z: Tensor,
    labels: Tensor | None,
    terms: Iterable[str],
    temperature: float = 0.5,
    *,
    pos_in_denom: bool = False,
    symmetric: bool = False,
    reference_compat: bool = False,
    gather: bool = False,
) -> dict[str, Tensor]:
    """Any subset of ``{"supcon", "cnce", "simclr"}`` from one similarity matrix per view pair.

    z: (B, V, d) raw embeddings, V >= 2; labels: (B,) int, may be None if only "simclr" is asked.
    Returns ``{term: scalar}``, each the mean over anchors averaged over the view pairs, in float32
    (float64 for float64 input) whatever the autocast state. ``pos_in_denom`` selects the SupCon
    form; it does not affect cNCE, and SimCLR is the same either way.
    """
    wanted = _check_terms(terms)
    _check_inputs(z, labels, temperature, needs_labels=bool({"supcon", "cnce"} & set(wanted)))
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32

    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(dtype)
        if labels is not None:
            labels = labels.to(z.device)

        # Anchors are this rank's rows; candidates are every rank's rows (the same rows when
        # not distributed). ``self_idx[i]`` is the column of anchor i among the candidates.
        if gather and distributed.is_distributed():
            cands, cand_labels, offset = distributed.gather_with_grad(z, labels)
        else:
            cands, cand_labels, offset = z, labels, 0
        n_anchor, n_cand = z.shape[0], cands.shape[0]
        self_idx = torch.arange(offset, offset + n_anchor, device=z.device)
        if "simclr" in wanted:  # every image its own class: the only positive is the own view
            self_mask = torch.arange(n_cand, device=z.device)[None, :] == self_idx[:, None]  # (A, B)
        if "supcon" in wanted or "cnce" in wanted:
            pos_mask = labels[:, None] == cand_labels[None, :]  # (A, B), P(i)

        pairs = view_pairs(z.shape[1], symmetric=symmetric and not reference_compat)
        per_anchor = {t: z.new_zeros(n_anchor) for t in wanted}  # summed over view pairs
        for a, c in pairs:
            s = _logits(z, cands, a, c, temperature, reference_compat)  # (A, B)
            if "supcon" in wanted:
                per_anchor["supcon"] += _supcon_rows(s, pos_mask, pos_in_denom, reference_compat)
            if "cnce" in wanted:
                per_anchor["cnce"] += _cnce_rows(s, pos_mask, self_idx)
            if "simclr" in wanted:
                per_anchor["simclr"] += _supcon_rows(s, self_mask, False, reference_compat)

        sums = torch.stack([per_anchor[t].sum() for t in wanted]) / len(pairs)  # (T,)
        if gather and distributed.is_distributed():
            means = _distributed_mean(sums, n_anchor)
        else:
            means = sums / n_anchor
    return dict(zip(wanted, means.unbind()))


def view_pairs(n_views: int, *, symmetric: bool) -> list[tuple[int, int]]:
    """Ordered (anchor view, candidate view) pairs: ``c < a`` (reference) or all ``a != c``."""
    return [(a, c) for a in range(n_views) for c in range(n_views) if c < a or (symmetric and c > a)]


# --------------------------------------------------------------------------- per-anchor terms


def _logits(
    anchors: Tensor, cands: Tensor, a: int, c: int, temperature: float, reference_compat: bool
) -> Tensor:
    """S of shape (A, B): anchors (A, V, d) in view a against candidates (B, V, d) in view c."""
    za, zc = anchors[:, a], cands[:, c]
    if reference_compat:
        # Quirk 1: both norms of the candidate, none of the anchor.
        norms = cands.norm(dim=-1).clamp_min(_NORM_EPS)  # (B, V)
        return (za @ zc.T) / (norms[:, a] * norms[:, c] * temperature)
    return (F.normalize(za, dim=-1, eps=_NORM_EPS) @ F.normalize(zc, dim=-1, eps=_NORM_EPS).T) / temperature


def _masked_logsumexp(s: Tensor, keep: Tensor) -> Tensor:
    """Row-wise log-sum-exp over ``keep`` entries; an all-dropped row gives ~finfo.min, not NaN.

    The lowest finite float instead of -inf keeps every exp at 0 and every gradient finite
    (logsumexp of an all -inf row has a NaN gradient).
    """
    return torch.logsumexp(s.masked_fill(~keep, torch.finfo(s.dtype).min), dim=1)


def _supcon_rows(s: Tensor, pos: Tensor, pos_in_denom: bool, clamp_numerator: bool) -> Tensor:
    """Per-anchor SupCon (A,) from logits s (A, B) and positives pos (A, B), each row non-empty."""
    numerator = s.clamp(max=1.0) if clamp_numerator else s  # quirk 2 of the reference
    n_pos = pos.sum(dim=1)
    mean_pos = torch.where(pos, numerator, 0.0).sum(dim=1) / n_pos
    if pos_in_denom:
        return torch.logsumexp(s, dim=1) - mean_pos
    # log(exp S_ip + sum_n exp S_in) for every (i, p); an anchor without negatives gets 0.
    lse_neg = _masked_logsumexp(s, ~pos)  # (A,)
    denom = torch.logaddexp(s, lse_neg[:, None])  # (A, B)
    return torch.where(pos, denom, 0.0).sum(dim=1) / n_pos - mean_pos


def _cnce_rows(s: Tensor, pos: Tensor, self_idx: Tensor) -> Tensor:
    """Per-anchor cNCE (A,): log-sum-exp over same-class candidates minus the own-view logit."""
    return _masked_logsumexp(s, pos) - s.gather(1, self_idx[:, None]).squeeze(1)


def _distributed_mean(local_sums: Tensor, n_local: int) -> Tensor:
    """Whole-batch means (T,) from this rank's per-term sums, with DDP-correct gradients.

    DDP averages gradients over W ranks, so this rank's gradient must come from
    ``W * local_sum / B_total``; the gathered candidates' gradients are summed over ranks by
    :func:`pipeline.distributed.gather_with_grad`. The returned *value* is the whole-batch mean,
    identical on every rank, via a detached correction.
    """
    world = distributed.world_size()
    stats = torch.cat([local_sums.detach(), local_sums.new_tensor([float(n_local)])])
    stats = distributed.all_reduce_sum(stats)
    total_sums, n_total = stats[:-1], stats[-1]
    scaled = local_sums * (world / n_total)
    return scaled + (total_sums / n_total - scaled).detach()


# --------------------------------------------------------------------------- validation


def _check_terms(terms: Iterable[str]) -> list[str]:
    if isinstance(terms, str):
        raise TypeError(f"contrastive_losses: terms must be an iterable of names, got the string {terms!r}")
    wanted = list(dict.fromkeys(terms))  # de-duplicate, keep order
    unknown = [t for t in wanted if t not in TERMS]
    if unknown or not wanted:
        raise ValueError(f"contrastive_losses: terms must be a non-empty subset of {TERMS}, got {wanted!r}")
    return wanted


def _check_inputs(z: Tensor, labels: Tensor | None, temperature: float, *, needs_labels: bool) -> None:
    if not isinstance(z, Tensor) or z.dim() != 3 or not z.is_floating_point():
        got = f"shape {tuple(z.shape)}, dtype {z.dtype}" if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"contrastive loss: z must be a float tensor of shape (B, V, d), got {got}")
    b, v, d = z.shape
    if b < 1 or v < 2 or d < 1:
        raise ValueError(
            f"contrastive loss: z of shape (B, V, d) needs B >= 1, V >= 2 views, d >= 1; got {tuple(z.shape)}"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"contrastive loss: temperature must be a finite number > 0, got {temperature!r}")
    if labels is None:
        if needs_labels:
            raise ValueError("contrastive loss: labels are required for the 'supcon' and 'cnce' terms, got None")
        return
    if not isinstance(labels, Tensor) or labels.shape != (b,) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"contrastive loss: labels must be an integer tensor of shape ({b},) to match z, got {got}")
