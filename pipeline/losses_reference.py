"""Slow per-anchor oracle of :mod:`pipeline.losses`, written straight from METHOD.md section 2.

Plain Python loops over view pairs, anchors and positives; no masks, no log-sum-exp tricks,
nothing shared with the vectorised code. Differentiable (torch autograd), so tests compare
gradients as well as values; benchmarks time it against the vectorised losses. Runs in the
input's dtype: pass float64 for 1e-10 comparisons. Do not train with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cnce_loss_ref", "logit_row_ref", "simclr_loss_ref", "spread_loss_ref", "supcon_loss_ref"]


def _view_pairs(n_views: int, symmetric: bool) -> list[tuple[int, int]]:
    pairs = []
    for a in range(n_views):
        for c in range(n_views):
            if c < a or (symmetric and c > a):
                pairs.append((a, c))
    return pairs


def logit_row_ref(z: Tensor, i: int, a: int, c: int, temperature: float, reference_compat: bool) -> Tensor:
    """S_i. = cos(z_i^a, z_k^c) / tau for all k, shape (B,).

    reference_compat: the official code's "cosine" z_i^a . z_k^c / (|z_k^a| |z_k^c|).
    """
    anchor = z[i, a]
    dots = z[:, c] @ anchor
    if reference_compat:
        return dots / (z[:, a].norm(dim=1) * z[:, c].norm(dim=1)) / temperature
    return dots / (anchor.norm() * z[:, c].norm(dim=1)) / temperature


def supcon_loss_ref(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    *,
    pos_in_denom: bool = False,
    symmetric: bool = False,
    reference_compat: bool = False,
) -> Tensor:
    """SupCon: mean over anchors of l_sc(i), averaged over view pairs. z: (B, V, d); labels: (B,)."""
    n, n_views, _ = z.shape
    pairs = _view_pairs(n_views, symmetric and not reference_compat)
    y = labels.tolist()
    total = z.new_zeros(())
    for a, c in pairs:
        for i in range(n):
            s = logit_row_ref(z, i, a, c, temperature, reference_compat)
            positives = [k for k in range(n) if y[k] == y[i]]
            negatives = [k for k in range(n) if y[k] != y[i]]
            if pos_in_denom:
                loss_i = torch.log(torch.exp(s).sum())
                for p in positives:
                    num = torch.clamp(s[p], max=1.0) if reference_compat else s[p]
                    loss_i = loss_i - num / len(positives)
            else:
                neg_sum = z.new_zeros(())
                for k in negatives:
                    neg_sum = neg_sum + torch.exp(s[k])
                loss_i = z.new_zeros(())
                for p in positives:
                    num = torch.clamp(s[p], max=1.0) if reference_compat else s[p]
                    loss_i = loss_i + (torch.log(torch.exp(s[p]) + neg_sum) - num) / len(positives)
            total = total + loss_i / (n * len(pairs))
    return total


def simclr_loss_ref(
    z: Tensor, temperature: float = 0.5, *, symmetric: bool = False, reference_compat: bool = False
) -> Tensor:
    """SimCLR: SupCon with every image its own class."""
    own_class = torch.arange(z.shape[0])
    return supcon_loss_ref(z, own_class, temperature, symmetric=symmetric, reference_compat=reference_compat)


def cnce_loss_ref(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    *,
    symmetric: bool = False,
    reference_compat: bool = False,
) -> Tensor:
    """cNCE: l(i) = log sum_{p in P(i)} exp S_ip - S_ii, mean over anchors, averaged over view pairs."""
    n, n_views, _ = z.shape
    pairs = _view_pairs(n_views, symmetric and not reference_compat)
    y = labels.tolist()
    total = z.new_zeros(())
    for a, c in pairs:
        for i in range(n):
            s = logit_row_ref(z, i, a, c, temperature, reference_compat)
            pos_sum = z.new_zeros(())
            for p in range(n):
                if y[p] == y[i]:
                    pos_sum = pos_sum + torch.exp(s[p])
            total = total + (torch.log(pos_sum) - s[i]) / (n * len(pairs))
    return total


def spread_loss_ref(
    z: Tensor,
    labels: Tensor,
    alpha: float = 0.5,
    temperature: float = 0.5,
    *,
    pos_in_denom: bool = False,
    symmetric: bool = False,
    reference_compat: bool = False,
) -> Tensor:
    """(1 - alpha) * SupCon + alpha * cNCE."""
    flags = dict(symmetric=symmetric, reference_compat=reference_compat)
    return (1 - alpha) * supcon_loss_ref(z, labels, temperature, pos_in_denom=pos_in_denom, **flags) + (
        alpha * cnce_loss_ref(z, labels, temperature, **flags)
    )
