"""Worst-group robustness of frozen embeddings: ERM, discovered-group DRO and oracles.

Every method is a linear head on the same z-scored (training statistics) embeddings of a model
trained on the task label y; groups are g = y * n_attributes + attribute. Each method chooses
its hyperparameters by validation worst-group accuracy over the groups it is allowed to see,
and only the chosen head touches the test split:

- ``erm``: the logistic-regression probe on y; C by plain validation accuracy.
- ``discovered_gdro``: GEORGE (Sohoni et al. 2020): training groups = (class, cluster) from
  :mod:`pipeline.evaluation.grouping`; validation points assigned to the same clusters.
- ``oracle_gdro``: the same group-DRO head on the true training and validation groups.
- ``oracle_balanced``: DFR-style group-balanced logistic regression (every true training group
  carries the same total weight); C by true validation worst-group accuracy.

Group DRO is the online algorithm of Sagawa et al. (2020), full batch: group weights
q <- q * exp(eta * L_g) (normalised) after each step, loss sum_g q_g L_g + wd/2 ||W||^2, Adam.
All (eta, wd) pairs train at once as one batched model; checkpoints every ``eval_every``
steps are candidates too (early stopping is part of the model selection).

Metrics (fractions in [0, 1]) are computed on the *true* test groups for every method.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluation.common import (
    accuracy,
    check_split,
    encode_labels,
    resolve_device,
    standardise,
)
from pipeline.evaluation.grouping import discover_groups, discovery_scores
from pipeline.evaluation.probes import DEFAULT_CS, LogisticModel, fit_logistic, linear_probe

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x (N, D), y (N,), group (N,))

DEFAULT_ETAS: tuple[float, ...] = (0.01, 0.1, 1.0)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


def group_accuracies(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """{group id: accuracy of ``pred`` against ``y`` on that group} for groups present."""
    return {int(g): accuracy(pred[groups == g], y[groups == g]) for g in np.unique(groups)}


def group_metrics(
    pred: np.ndarray, y: np.ndarray, groups: np.ndarray, train_groups: np.ndarray
) -> dict[str, float]:
    """Worst-group, mean-over-groups, plain and training-frequency-weighted accuracy.

    ``weighted_acc`` weights each test group's accuracy by that group's share of the training
    split (the Waterbirds "average accuracy" convention), renormalised over the groups present
    in the test split. Per-group accuracies come as ``group_{g}_acc``.
    """
    per_group = group_accuracies(pred, y, groups)
    ids, counts = np.unique(train_groups, return_counts=True)
    freq = dict(zip(ids.tolist(), counts.tolist()))
    weights = np.array([freq.get(g, 0) for g in per_group], dtype=np.float64)
    accs = np.array(list(per_group.values()))
    weighted = float(weights @ accs / weights.sum()) if weights.sum() > 0 else float("nan")
    out = {
        "worst_group_acc": float(accs.min()),
        "mean_group_acc": float(accs.mean()),
        "avg_acc": accuracy(pred, y),
        "weighted_acc": weighted,
    }
    out.update({f"group_{g}_acc": acc for g, acc in per_group.items()})
    return out


@dataclass(frozen=True)
class SelectedHead:
    """A linear head chosen on validation, with what chose it."""

    model: LogisticModel
    val_worst_group_acc: float
    val_mean_acc: float
    hyperparameters: dict[str, float]


def _worst_and_mean(
    pred: torch.Tensor, y: torch.Tensor, group_onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """pred (H, N), y (N,), group_onehot (N, G) with no empty column -> worst, mean acc (H,)."""
    correct = (pred == y).to(group_onehot.dtype)  # (H, N)
    per_group = correct @ group_onehot / group_onehot.sum(dim=0)  # (H, G)
    return per_group.min(dim=1).values, correct.mean(dim=1)


def _onehot_present(groups: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,) group ids -> (N, G) float64 one-hot over the groups that occur (-1 ignored)."""
    ids = np.unique(groups[groups >= 0])
    idx = encode_labels(groups, ids)
    onehot = np.zeros((len(groups), len(ids)))
    onehot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1.0
    return torch.as_tensor(onehot, device=device)


def _batched_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (N, D), weight (H, D, K), bias (H, 1, K) -> (H, N, K) logits with one matmul."""
    h, d, k = weight.shape
    flat = x @ weight.permute(1, 0, 2).reshape(d, h * k)  # (N, H * K)
    return flat.reshape(len(x), h, k).transpose(0, 1) + bias


def fit_group_dro(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_g: np.ndarray,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    val_g: np.ndarray,
    n_classes: int,
    *,
    etas: Sequence[float] = DEFAULT_ETAS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    steps: int = 1000,
    lr: float = 0.01,
    eval_every: int = 50,
) -> SelectedHead:
    """Online group DRO on standardised features, selected by validation worst-group accuracy.

    train_x (N, D) and val_x (M, D) float64 tensors on one device; train_y/val_y (N,)/(M,)
    long class indices; train_g/val_g (N,)/(M,) numpy group ids (val ids need not match train
    ids: only val accuracy per val group is used). Zero start and full batches make it
    deterministic. Ties in (val worst-group, val mean) accuracy keep the earliest candidate.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1; got {steps}, {eval_every}")
    grid = list(itertools.product(etas, weight_decays))
    if not grid:
        raise ValueError("etas and weight_decays must be non-empty")
    dev, dtype = train_x.device, train_x.dtype
    h, d = len(grid), train_x.shape[1]
    eta = torch.tensor([e for e, _ in grid], device=dev, dtype=dtype)[:, None]  # (H, 1)
    wd = torch.tensor([w for _, w in grid], device=dev, dtype=dtype)[:, None, None]
    train_oh = _onehot_present(train_g, dev)  # (N, G)
    train_mean = train_oh / train_oh.sum(dim=0)  # column g averages over group g
    val_oh = _onehot_present(val_g, dev)
    val_oh, val_keep = val_oh[val_g >= 0], torch.as_tensor(val_g >= 0, device=dev)

    weight = torch.zeros(h, d, n_classes, device=dev, dtype=dtype, requires_grad=True)
    bias = torch.zeros(h, 1, n_classes, device=dev, dtype=dtype, requires_grad=True)
    log_q = torch.full((h, train_oh.shape[1]), -np.log(train_oh.shape[1]), device=dev, dtype=dtype)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    best: tuple[float, float] = (-1.0, -1.0)
    chosen: SelectedHead | None = None
    for step in range(1, steps + 1):
        logits = _batched_logits(train_x, weight, bias)  # (H, N, K)
        ce = -torch.log_softmax(logits, dim=2).gather(
            2, train_y.expand(h, -1)[..., None]
        ).squeeze(2)  # (H, N)
        group_loss = ce @ train_mean  # (H, G)
        with torch.no_grad():  # exponentiated-gradient ascent on the group weights
            log_q = log_q + eta * group_loss
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        # Independent configurations: summing their objectives keeps Adam's updates separate.
        loss = (log_q.exp() * group_loss).sum() + 0.5 * (wd * weight.square()).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % eval_every and step != steps:
            continue
        with torch.no_grad():
            val_logits = _batched_logits(val_x[val_keep], weight, bias)
            worst, mean = _worst_and_mean(val_logits.argmax(dim=2), val_y[val_keep], val_oh)
        for i in range(h):
            score = (float(worst[i]), float(mean[i]))
            if score > best:
                best = score
                chosen = SelectedHead(
                    model=LogisticModel(weight[i].detach().clone(), bias[i, 0].detach().clone()),
                    val_worst_group_acc=score[0],
                    val_mean_acc=score[1],
                    hyperparameters={"eta": grid[i][0], "weight_decay": grid[i][1], "steps": step},
                )
    assert chosen is not None  # at least one evaluation happens (step == steps)
    return chosen


def fit_group_balanced(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_g: np.ndarray,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    val_g: np.ndarray,
    n_classes: int,
    *,
    cs: Sequence[float] = DEFAULT_CS,
) -> SelectedHead:
    """Logistic regression with every training group carrying equal total weight (DFR-style).

    Weights are N / (G * n_g), mean one, so C keeps its unweighted meaning. C is chosen by
    validation worst-group accuracy (ties: higher val mean accuracy, then smaller C).
    """
    ids, inverse, counts = np.unique(train_g, return_inverse=True, return_counts=True)
    weights = len(train_g) / (len(ids) * counts[inverse])
    s = torch.as_tensor(weights, device=train_x.device, dtype=train_x.dtype)
    val_oh = _onehot_present(val_g, train_x.device)
    model, best, chosen = None, (-1.0, -1.0), None
    for c in sorted({float(c) for c in cs}):
        model = fit_logistic(train_x, train_y, n_classes, c, sample_weight=s, init=model)
        worst, mean = _worst_and_mean(model.predict(val_x)[None], val_y, val_oh)
        score = (float(worst[0]), float(mean[0]))
        if score > best:
            best = score
            chosen = SelectedHead(model, score[0], score[1], {"c": c})
    assert chosen is not None
    return chosen


def _check_triple(split: Split, name: str) -> Split:
    if len(split) != 3:
        raise ValueError(f"{name} must be an (x, y, group) triple; got {len(split)} items")
    x, y = check_split(split[0], split[1], name)
    _, g = check_split(split[0], split[2], f"{name}_group")
    return x, y, g


def evaluate_robustness(
    train: Split,
    val: Split,
    test: Split,
    seed: int = 0,
    *,
    k_max: int = 5,
    n_components: int = 8,
    cs: Sequence[float] = DEFAULT_CS,
    etas: Sequence[float] = DEFAULT_ETAS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    steps: int = 1000,
    eval_every: int = 50,
    device: str | None = None,
) -> dict[str, float]:
    """All four methods plus sub-group discovery scores, as one flat ``{name: float}`` dict.

    ``train``/``val``/``test`` are (x (N, D), y (N,), group (N,)) triples. Keys are
    ``"{method}/{metric}"`` with method in erm, discovered_gdro, oracle_gdro, oracle_balanced
    and metric from :func:`group_metrics` plus ``val_selection_acc`` (the validation score its
    model selection maximised: plain accuracy for ERM, worst-group accuracy over discovered
    clusters for discovered_gdro, over true groups for the oracles) and the chosen
    hyperparameters (``c``; or ``eta``, ``weight_decay``, ``steps``); and
    ``"discovery/{score}"`` from :func:`pipeline.evaluation.grouping.discovery_scores`,
    computed on the training split. ``seed`` drives the clustering (k-means and the null
    reference); the heads are deterministic.
    """
    (tr_x, tr_y, tr_g), (va_x, va_y, va_g), (te_x, te_y, te_g) = (
        _check_triple(s, n) for s, n in ((train, "train"), (val, "val"), (test, "test"))
    )
    out: dict[str, float] = {}

    def record(method: str, pred: np.ndarray, extra: dict[str, float]) -> None:
        metrics = group_metrics(pred, te_y, te_g, tr_g) | extra
        out.update({f"{method}/{k}": float(v) for k, v in metrics.items()})

    erm = linear_probe(tr_x, tr_y, va_x, va_y, te_x, te_y, cs=cs, device=device, seed=seed)
    record("erm", erm.test_predictions, {"val_selection_acc": erm.val_accuracy, "c": erm.best_c})

    discovery = discover_groups(tr_x, tr_y, k_max=k_max, n_components=n_components, seed=seed)
    tr_c, va_c = discovery.assign(tr_x, tr_y), discovery.assign(va_x, va_y)
    out.update({f"discovery/{k}": v for k, v in discovery_scores(tr_c, tr_g, tr_y).items()})

    classes = np.unique(tr_y)
    dev = resolve_device(device)
    xs = [torch.as_tensor(a, device=dev) for a in standardise(tr_x, va_x, te_x)]
    ys = [torch.as_tensor(encode_labels(a, classes), device=dev) for a in (tr_y, va_y)]
    gdro = dict(etas=etas, weight_decays=weight_decays, steps=steps, eval_every=eval_every)
    heads = {
        "discovered_gdro": fit_group_dro(
            xs[0], ys[0], tr_c, xs[1], ys[1], va_c, len(classes), **gdro
        ),
        "oracle_gdro": fit_group_dro(xs[0], ys[0], tr_g, xs[1], ys[1], va_g, len(classes), **gdro),
        "oracle_balanced": fit_group_balanced(
            xs[0], ys[0], tr_g, xs[1], ys[1], va_g, len(classes), cs=cs
        ),
    }
    for method, head in heads.items():
        pred = classes[head.model.predict(xs[2]).cpu().numpy()]
        extra = {"val_selection_acc": head.val_worst_group_acc, **head.hyperparameters}
        record(method, pred, extra)
    return out
