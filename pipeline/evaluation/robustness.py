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
All (eta, wd) pairs train at once as one batched model (:func:`group_dro_path`); checkpoints
every ``eval_every`` steps are candidates too (early stopping is part of the model selection).

Metrics (fractions in [0, 1]) are computed on the *true* test groups for every method.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.devices import select_device
from pipeline.evaluation.common import (
    FunctionalAdam,
    accuracy,
    check_split,
    encode_labels,
    standardise,
)
from pipeline.evaluation.grouping import discover_groups, discovery_scores
from pipeline.evaluation.probes import DEFAULT_CS, LogisticModel, fit_logistic, linear_probe

# One split's arrays for the robustness protocol: (x (N, D), y (N,), group (N,)).
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]

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


def group_dro_path(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_g: np.ndarray,
    n_classes: int,
    etas: Sequence[float],
    weight_decays: Sequence[float],
    *,
    steps: int = 1000,
    lr: float = 0.01,
    every: int = 50,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Online group DRO for every (eta, weight decay) pair at once; yields checkpoints.

    train_x (N, D) float, train_y (N,) long, train_g (N,) numpy group ids (-1: no group).
    Configuration h = (etas[i], weight_decays[j]) in ``itertools.product`` order. Yields
    (step, weight (D, H, K), bias (H, K)) after every ``every`` steps and after the last;
    the tensors are the live parameters (clone what you keep).

    Each step is Sagawa et al.'s: group losses L_hg; q_h <- q_h * exp(eta_h L_hg),
    normalised; then an Adam step on sum_g q_hg L_hg + wd_h / 2 ||W_h||^2. The gradient is
    written out (d CE / d logits = p - onehot, each point weighted q_h[g] / n_g) rather than
    taken by autograd, and the layout (N, H, K) keeps every reduction on contiguous memory:
    together about 3x fewer seconds per step, same arithmetic up to float rounding.
    """
    if steps < 1 or every < 1:
        raise ValueError(f"steps and eval_every must be >= 1; got {steps}, {every}")
    grid = list(itertools.product(etas, weight_decays))
    if not grid:
        raise ValueError("etas and weight_decays must be non-empty")
    dev, dtype = train_x.device, train_x.dtype
    n, h, d, k = len(train_x), len(grid), train_x.shape[1], n_classes
    eta = torch.tensor([e for e, _ in grid], device=dev, dtype=dtype)[:, None]  # (H, 1)
    wd = torch.tensor([w for _, w in grid], device=dev, dtype=dtype)[None, :, None]  # (1, H, 1)
    onehot = _onehot_present(train_g, dev)  # (N, G)
    group_mean = onehot / onehot.sum(dim=0)  # column g averages over group g
    targets = torch.nn.functional.one_hot(train_y, k).to(dtype)[:, None, :]  # (N, 1, K)
    y_idx = train_y[:, None, None].expand(n, h, 1)
    x_t = train_x.T.contiguous()

    weight = torch.zeros(d, h, k, device=dev, dtype=dtype)
    bias = torch.zeros(h, k, device=dev, dtype=dtype)
    log_q = torch.full((h, onehot.shape[1]), -np.log(onehot.shape[1]), device=dev, dtype=dtype)
    adam_step = FunctionalAdam([weight, bias], lr=lr)
    for step in range(1, steps + 1):
        logits = (train_x @ weight.view(d, h * k)).view(n, h, k) + bias  # (N, H, K)
        log_p = torch.log_softmax(logits, dim=2)
        ce = -log_p.gather(2, y_idx)[:, :, 0]  # (N, H)
        group_loss = (group_mean.T @ ce).T  # (H, G)
        log_q = log_q + eta * group_loss  # exponentiated-gradient ascent on the group weights
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        point_weight = group_mean @ log_q.exp().T  # (N, H): q_h[g(n)] / n_g(n)
        d_logits = (log_p.exp() - targets) * point_weight[:, :, None]  # (N, H, K)
        grad_weight = (x_t @ d_logits.view(n, h * k)).view(d, h, k) + wd * weight
        adam_step([grad_weight, d_logits.sum(dim=0)])
        if step % every == 0 or step == steps:
            yield step, weight, bias


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
    ids: only val accuracy per val group is used). Every checkpoint of
    :func:`group_dro_path` is a candidate. Zero start and full batches make it
    deterministic. Ties in (val worst-group, val mean) accuracy keep the earliest candidate.
    """
    grid = list(itertools.product(etas, weight_decays))
    dev = train_x.device
    val_oh = _onehot_present(val_g, dev)
    val_oh, val_keep = val_oh[val_g >= 0], torch.as_tensor(val_g >= 0, device=dev)
    vx, vy = val_x[val_keep], val_y[val_keep]
    best: tuple[float, float] = (-1.0, -1.0)
    chosen: SelectedHead | None = None
    path = group_dro_path(train_x, train_y, train_g, n_classes, etas, weight_decays,
                          steps=steps, lr=lr, every=eval_every)
    for step, weight, bias in path:
        d, h, k = weight.shape
        pred = ((vx @ weight.view(d, h * k)).view(len(vx), h, k) + bias).argmax(dim=2)
        worst, mean = _worst_and_mean(pred.T, vy, val_oh)
        for i in range(h):
            score = (float(worst[i]), float(mean[i]))
            if score > best:
                best = score
                chosen = SelectedHead(
                    model=LogisticModel(weight[:, i].clone(), bias[i].clone()),
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


def _check_triple(split: Triple, name: str) -> Triple:
    if len(split) != 3:
        raise ValueError(f"{name} must be an (x, y, group) triple; got {len(split)} items")
    x, y = check_split(split[0], split[1], name)
    _, g = check_split(split[0], split[2], f"{name}_group")
    return x, y, g


def evaluate_robustness(
    train: Triple,
    val: Triple,
    test: Triple,
    seed: int = 0,
    *,
    discovery: Mapping[str, Any] | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    etas: Sequence[float] = DEFAULT_ETAS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    steps: int = 1000,
    lr: float = 0.01,
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

    Settings: ``discovery``, keyword arguments of
    :func:`~pipeline.evaluation.grouping.discover_groups` (its defaults where absent); ``cs``,
    the C grid of the logistic heads (ERM, oracle_balanced); ``etas``, ``weight_decays``,
    ``steps``, ``lr`` and ``eval_every``, those of :func:`fit_group_dro` (both group-DRO heads).
    The evaluate stage passes params.yaml's ``evaluate`` section.
    """
    (tr_x, tr_y, tr_g), (va_x, va_y, va_g), (te_x, te_y, te_g) = (
        _check_triple(s, n) for s, n in ((train, "train"), (val, "val"), (test, "test"))
    )
    out: dict[str, float] = {}

    def record(method: str, pred: np.ndarray, extra: dict[str, float]) -> None:
        metrics = group_metrics(pred, te_y, te_g, tr_g) | extra
        out.update({f"{method}/{k}": float(v) for k, v in metrics.items()})

    erm = linear_probe(tr_x, tr_y, va_x, va_y, te_x, te_y, cs=cs, device=device)
    record("erm", erm.test_predictions, {"val_selection_acc": erm.val_accuracy, "c": erm.best_c})

    clusters = discover_groups(tr_x, tr_y, seed=seed, **(discovery or {}))
    tr_c, va_c = clusters.assign(tr_x, tr_y), clusters.assign(va_x, va_y)
    out.update({f"discovery/{k}": v for k, v in discovery_scores(tr_c, tr_g, tr_y).items()})

    classes = np.unique(tr_y)
    dev = select_device(device)
    xs = [torch.as_tensor(a, device=dev) for a in standardise(tr_x, va_x, te_x)]
    ys = [torch.as_tensor(encode_labels(a, classes), device=dev) for a in (tr_y, va_y)]
    gdro = dict(etas=etas, weight_decays=weight_decays, steps=steps, lr=lr, eval_every=eval_every)
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
