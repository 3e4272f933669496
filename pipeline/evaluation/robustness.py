"""Worst-group robustness of frozen embeddings: ERM, discovered-group DRO and oracles.

Every head is linear, on the same z-scored (training statistics) embeddings of a model trained
on the task label y; groups are g = y * n_attributes + attribute. The heads:

- ``erm``: logistic regression on y (the C grid).
- ``discovered_gdro``: GEORGE (Sohoni et al. 2020): group DRO on (class, cluster) groups from
  :mod:`pipeline.evaluation.george` (over-clustering guided by the ERM head's training losses).
- ``kmeans_gdro``: the same on the simpler k-means groups of :mod:`pipeline.evaluation.grouping`.
- ``oracle_gdro``: group DRO on the true training groups.
- ``oracle_balanced``: DFR-style group-balanced logistic regression on the true groups.

Model selection is explicit (SubpopBench): each head is chosen on validation under every rule
of :data:`HEAD_RULES` that it allows, and every result names its rule: ``average`` (plain
accuracy), ``worst_class`` (worst class; no group information), ``discovered`` (worst
discovered group; no group labels) and ``oracle`` (worst true group). Only chosen heads touch
the test split.

Group DRO is the online algorithm of Sagawa et al. (2020), full batch: group weights
q <- q * exp(eta * (L_g + C / sqrt(n_g))) (normalised) after each step, loss
sum_g q_g L_g + wd/2 ||W||^2, Adam. All (eta, wd) pairs train at once as one batched model
(:func:`group_dro_path`); checkpoints every ``eval_every`` steps are candidates too (early
stopping is part of the model selection).

Metrics (fractions in [0, 1]) are computed on the *true* test groups for every head.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from pipeline.evaluation.george import george_discover
from pipeline.evaluation.grouping import discover_groups, discovery_scores
from pipeline.evaluation.probes import DEFAULT_CS, LogisticModel, fit_logistic

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
    """Worst-group, mean-over-groups, plain, training-frequency-weighted, worst-class and
    balanced (mean per-class) accuracy.

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
    per_class = np.array(list(group_accuracies(pred, y, y).values()))  # accuracy (recall) per class
    out = {
        "worst_group_acc": float(accs.min()),
        "mean_group_acc": float(accs.mean()),
        "avg_acc": accuracy(pred, y),
        "weighted_acc": weighted,
        "worst_class_acc": float(per_class.min()),
        "balanced_acc": float(per_class.mean()),
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
    adjustment: float = 0.0,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Online group DRO for every (eta, weight decay) pair at once; yields checkpoints.

    train_x (N, D) float, train_y (N,) long, train_g (N,) numpy group ids (-1: no group).
    Configuration h = (etas[i], weight_decays[j]) in ``itertools.product`` order. Yields
    (step, weight (D, H, K), bias (H, K)) after every ``every`` steps and after the last;
    the tensors are the live parameters (clone what you keep).

    Each step is Sagawa et al.'s: group losses L_hg; q_h <- q_h * exp(eta_h (L_hg + C / sqrt(n_g))),
    normalised (C = ``adjustment``, their group-size adjustment; it enters the weights only);
    then an Adam step on sum_g q_hg L_hg + wd_h / 2 ||W_h||^2. The gradient is
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
    size_bonus = adjustment / onehot.sum(dim=0).sqrt()  # (G,) C / sqrt(n_g)
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
        # Exponentiated-gradient ascent on the group weights (the bonus is 0 without adjustment,
        # and adding 0.0 changes no bit).
        log_q = log_q + eta * (group_loss + size_bonus)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        point_weight = group_mean @ log_q.exp().T  # (N, H): q_h[g(n)] / n_g(n)
        d_logits = (log_p.exp() - targets) * point_weight[:, :, None]  # (N, H, K)
        grad_weight = (x_t @ d_logits.view(n, h * k)).view(d, h, k) + wd * weight
        adam_step([grad_weight, d_logits.sum(dim=0)])
        if step % every == 0 or step == steps:
            yield step, weight, bias


# Model-selection rules, SubpopBench's way: each names the validation grouping whose worst-group
# accuracy a head maximises (ties: higher mean validation accuracy, then the earlier candidate).
# "average" sees one group (plain accuracy), "worst_class" the class labels (no group information),
# "discovered" the discovered groups (no group labels), "oracle" the true groups.
RULES: tuple[str, ...] = ("average", "worst_class", "discovered", "oracle")
# Which rules each head is selected by. The heads: ERM (plain logistic head), group DRO on GEORGE's
# groups (discovered_gdro) and on the simpler k-means groups (kmeans_gdro), and the oracles that
# train on the true groups (group DRO; group-balanced logistic head, DFR-style).
HEAD_RULES: dict[str, tuple[str, ...]] = {
    "erm": ("average", "worst_class", "discovered", "oracle"),
    "discovered_gdro": ("discovered", "worst_class", "oracle"),
    "kmeans_gdro": ("discovered", "worst_class", "oracle"),
    "oracle_gdro": ("oracle", "worst_class"),
    "oracle_balanced": ("oracle", "worst_class"),
}


class RuleSelector:
    """Keeps, for each rule, the best candidate head seen so far.

    ``val_groupings`` maps a rule to (M,) validation group ids (-1: not scored by that rule);
    candidates come as (H, M) predicted class indices of H heads at once.
    """

    def __init__(self, val_y: torch.Tensor, val_groupings: Mapping[str, np.ndarray]) -> None:
        self.val_y = val_y
        self.masks = {r: torch.as_tensor(g >= 0, device=val_y.device) for r, g in val_groupings.items()}
        self.onehots = {r: _onehot_present(g, val_y.device)[g >= 0] for r, g in val_groupings.items()}
        self.best: dict[str, tuple[tuple[float, float], SelectedHead | None]] = {
            r: ((-1.0, -1.0), None) for r in val_groupings}

    def consider(self, pred: torch.Tensor, head: Callable[[int], tuple[LogisticModel, dict[str, float]]]) -> None:
        """pred (H, M); ``head(i)`` builds candidate i's (model, hyperparameters) when one is kept."""
        for rule, onehot in self.onehots.items():
            keep = self.masks[rule]
            worst, mean = _worst_and_mean(pred[:, keep], self.val_y[keep], onehot)
            for i in range(len(pred)):
                score = (float(worst[i]), float(mean[i]))
                if score > self.best[rule][0]:
                    model, hyper = head(i)
                    self.best[rule] = (score, SelectedHead(model, score[0], score[1], hyper))

    def chosen(self) -> dict[str, SelectedHead]:
        out = {rule: head for rule, (_, head) in self.best.items()}
        assert all(h is not None for h in out.values())  # at least one candidate was considered
        return out  # type: ignore[return-value]


def fit_group_dro(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_g: np.ndarray,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    val_groupings: Mapping[str, np.ndarray],
    n_classes: int,
    *,
    etas: Sequence[float] = DEFAULT_ETAS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    steps: int = 1000,
    lr: float = 0.01,
    eval_every: int = 50,
    adjustment: float = 0.0,
) -> dict[str, SelectedHead]:
    """Online group DRO on standardised features; the head each rule of ``val_groupings`` selects.

    train_x (N, D) and val_x (M, D) float64 tensors on one device; train_y/val_y (N,)/(M,)
    long class indices; train_g (N,) numpy group ids to train on; ``val_groupings`` {rule:
    (M,) group ids} (see :class:`RuleSelector`). Every checkpoint of :func:`group_dro_path`
    is a candidate. Zero start and full batches make it deterministic.
    """
    grid = list(itertools.product(etas, weight_decays))
    selector = RuleSelector(val_y, val_groupings)
    path = group_dro_path(train_x, train_y, train_g, n_classes, etas, weight_decays,
                          steps=steps, lr=lr, every=eval_every, adjustment=adjustment)
    for step, weight, bias in path:
        d, h, k = weight.shape
        pred = ((val_x @ weight.view(d, h * k)).view(len(val_x), h, k) + bias).argmax(dim=2)

        def head(i: int, weight: torch.Tensor = weight, bias: torch.Tensor = bias,
                 step: int = step) -> tuple[LogisticModel, dict[str, float]]:
            hyper = {"eta": grid[i][0], "weight_decay": grid[i][1], "steps": step}
            return LogisticModel(weight[:, i].clone(), bias[i].clone()), hyper

        selector.consider(pred.T, head)
    return selector.chosen()


def logistic_path(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    n_classes: int,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    train_g: np.ndarray | None = None,
) -> list[tuple[float, LogisticModel]]:
    """Logistic heads along the C grid, increasing C, each warm-started from the previous.

    Unweighted (ERM) when ``train_g`` is None; otherwise every training group carries equal
    total weight (DFR-style group balancing): weights N / (G * n_g), mean one, so C keeps its
    unweighted meaning.
    """
    weight = None
    if train_g is not None:
        ids, inverse, counts = np.unique(train_g, return_inverse=True, return_counts=True)
        weight = torch.as_tensor(len(train_g) / (len(ids) * counts[inverse]),
                                 device=train_x.device, dtype=train_x.dtype)
    path: list[tuple[float, LogisticModel]] = []
    model = None
    for c in sorted({float(c) for c in cs}):
        model = fit_logistic(train_x, train_y, n_classes, c, sample_weight=weight, init=model)
        path.append((c, model))
    return path


def select_logistic(
    path: Sequence[tuple[float, LogisticModel]],
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    val_groupings: Mapping[str, np.ndarray],
) -> dict[str, SelectedHead]:
    """The head of :func:`logistic_path` each rule selects (ties: the smaller C)."""
    selector = RuleSelector(val_y, val_groupings)
    for c, model in path:
        selector.consider(model.predict(val_x)[None], lambda _, m=model, c=c: (m, {"c": c}))
    return selector.chosen()


def training_losses(model: LogisticModel, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-point cross-entropy (N,) of a head on (N, D) features and (N,) class indices."""
    return torch.nn.functional.cross_entropy(model.logits(x), y, reduction="none").cpu().numpy()


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
    george: Mapping[str, Any] | None = None,
    kmeans: Mapping[str, Any] | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    etas: Sequence[float] = DEFAULT_ETAS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    steps: int = 1000,
    lr: float = 0.01,
    eval_every: int = 50,
    adjustment: float = 0.0,
    device: str | None = None,
    test_predictions: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every head under every rule of :data:`HEAD_RULES`, plus discovery scores, as ``{name: float}``.

    ``train``/``val``/``test`` are (x (N, D), y (N,), group (N,)) triples. Keys are
    ``"{head}.{rule}/{metric}"`` with metric from :func:`group_metrics` plus
    ``val_selection_acc`` (the validation worst-group accuracy under the rule's grouping that
    the selection maximised) and the chosen hyperparameters (``c``; or ``eta``,
    ``weight_decay``, ``steps``); and ``"discovery/{score}"`` (GEORGE) and
    ``"discovery_kmeans/{score}"`` from :func:`discovery_scores` on the training split.

    GEORGE's over-clustering needs each training point's ERM loss: the loss of the ERM head
    selected by validation accuracy. ``seed`` drives the clusterings; the heads are
    deterministic. Settings: ``george`` and ``kmeans``, keyword arguments of
    :func:`~pipeline.evaluation.george.george_discover` and
    :func:`~pipeline.evaluation.grouping.discover_groups`; ``cs``, the C grid of the logistic
    heads; ``etas`` .. ``adjustment``, those of :func:`fit_group_dro`. ``test_predictions``, when
    given, receives each chosen head's (N_test,) predicted labels under ``"{head}.{rule}"`` (the
    per-image results the report's bootstrap resamples).
    """
    (tr_x, tr_y, tr_g), (va_x, va_y, va_g), (te_x, te_y, te_g) = (
        _check_triple(s, n) for s, n in ((train, "train"), (val, "val"), (test, "test"))
    )
    classes = np.unique(tr_y)
    dev = select_device(device)
    xs = [torch.as_tensor(a, device=dev) for a in standardise(tr_x, va_x, te_x)]
    ys = [torch.as_tensor(encode_labels(a, classes), device=dev) for a in (tr_y, va_y)]
    rules = {"average": np.zeros(len(va_y), dtype=np.int64), "worst_class": encode_labels(va_y, classes),
             "oracle": va_g}
    heads: dict[str, dict[str, SelectedHead]] = {}
    out: dict[str, float] = {}

    # ERM first: the head selected by validation accuracy gives GEORGE its training losses.
    erm_path = logistic_path(xs[0], ys[0], len(classes), cs=cs)
    erm_average = select_logistic(erm_path, xs[1], ys[1], {"average": rules["average"]})["average"]
    losses = training_losses(erm_average.model, xs[0], ys[0])

    discovered = george_discover(tr_x, tr_y, losses, va_x, va_y, seed=seed, **(george or {}))
    simple = discover_groups(tr_x, tr_y, seed=seed, **(kmeans or {}))
    clusters = {name: (d.assign(tr_x, tr_y), d.assign(va_x, va_y))
                for name, d in (("discovered_gdro", discovered), ("kmeans_gdro", simple))}
    for prefix, name in (("discovery", "discovered_gdro"), ("discovery_kmeans", "kmeans_gdro")):
        scores = discovery_scores(clusters[name][0], tr_g, tr_y)
        out.update({f"{prefix}/{k}": v for k, v in scores.items()})
    rules["discovered"] = clusters["discovered_gdro"][1]  # the default discovery's groups
    heads["erm"] = select_logistic(erm_path, xs[1], ys[1], rules)

    gdro = dict(etas=etas, weight_decays=weight_decays, steps=steps, lr=lr, eval_every=eval_every,
                adjustment=adjustment)
    for name, (tr_c, va_c) in clusters.items():
        heads[name] = fit_group_dro(xs[0], ys[0], tr_c, xs[1], ys[1], rules | {"discovered": va_c},
                                    len(classes), **gdro)
    oracle_rules = {r: rules[r] for r in ("worst_class", "oracle")}
    heads["oracle_gdro"] = fit_group_dro(xs[0], ys[0], tr_g, xs[1], ys[1], oracle_rules, len(classes), **gdro)
    balanced_path = logistic_path(xs[0], ys[0], len(classes), cs=cs, train_g=tr_g)
    heads["oracle_balanced"] = select_logistic(balanced_path, xs[1], ys[1], oracle_rules)

    for name, rule_list in HEAD_RULES.items():
        for rule in rule_list:
            head = heads[name][rule]
            pred = classes[head.model.predict(xs[2]).cpu().numpy()]
            if test_predictions is not None:
                test_predictions[f"{name}.{rule}"] = pred
            metrics = group_metrics(pred, te_y, te_g, tr_g) | {
                "val_selection_acc": head.val_worst_group_acc, **head.hyperparameters}
            out.update({f"{name}.{rule}/{k}": float(v) for k, v in metrics.items()})
    return out
