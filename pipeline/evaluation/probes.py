"""Linear and k-nearest-neighbour probes on frozen embeddings.

The linear probe is multinomial logistic regression with scikit-learn's convention for the
inverse regularisation strength C, solved full-batch by SciPy's L-BFGS-B on a float64 loss
and gradient computed by torch (on the GPU when there is one). It minimises, over weights W (D, K) and biases b (K,),

    sum_i s_i * CE(x_i W + b, y_i) / S  +  ||W||^2 / (2 C S),      S = sum_i s_i,

which is sklearn's ``C * sum_i s_i CE_i + ||W||^2 / 2`` divided by ``C * S`` (same minimiser;
s_i = 1 unless sample weights are given; the bias is not penalised). With two classes the
model has a single weight vector (class-0 logit fixed at 0), exactly as sklearn's binary case;
a two-column softmax with the same C would be regularised half as strongly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.devices import select_device
from pipeline.evaluation.common import (
    FunctionalAdam,
    accuracy,
    check_features,
    check_split,
    encode_labels,
    standardise,
)

# Decades from strong to nearly no regularisation on z-scored features.
DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`linear_probe`; accuracies are fractions in [0, 1]."""

    test_accuracy: float
    val_accuracy: float
    best_c: float
    per_class_accuracy: dict[int, float]  # test accuracy per true test label
    test_predictions: np.ndarray  # (N_test,) int64, in the original label values
    val_accuracy_by_c: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LogisticModel:
    """Fitted weights: ``weight`` (D, K') and ``bias`` (K',), K' = 1 for two classes else K."""

    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def n_classes(self) -> int:
        return 2 if self.weight.shape[1] == 1 else self.weight.shape[1]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, K) logits; the binary model's class-0 logit is the constant 0."""
        z = x @ self.weight + self.bias
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.weight.shape[1] == 1 else z

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) class indices in [0, K)."""
        return self.logits(x).argmax(dim=1)


@contextmanager
def single_threaded_on_cpu(device: torch.device) -> Iterator[None]:
    """torch on one intra-op thread inside the block when ``device`` is the CPU.

    The logistic solver alternates tiny torch products with SciPy's Fortran step: with 2 torch
    threads, the idle OpenMP worker spins between products and the probe ran ~9x slower on a
    2-core machine (53 s instead of 6 s for one digits probe, measured); one thread loses
    nothing at these sizes.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    c: float,
    *,
    sample_weight: torch.Tensor | None = None,
    init: LogisticModel | None = None,
    max_iter: int = 5000,
    tol: float = 1e-8,
) -> LogisticModel:
    """L2-regularised multinomial logistic regression (objective in the module docstring).

    x: (N, D) float; y: (N,) long in [0, n_classes); sample_weight: (N,) non-negative or None.
    ``init`` warm-starts the solver (used along a path of increasing C). The problem is
    strictly convex, so the solution does not depend on the start beyond the solver tolerance
    ``tol`` (max absolute gradient entry). The default is tight on purpose: at large C the
    problem is ill-conditioned, and at 1e-6 the validation predictions at C = 100 still
    depended on the start (and on the solver) on the digits embeddings; at 1e-8 they match
    a 1e-11 solution for every method, C and label of the embedded suite.

    The solver is SciPy's L-BFGS-B (scikit-learn's ``lbfgs``) driving a loss and gradient
    computed by torch on x's device. Not ``torch.optim.LBFGS``: constructing any torch
    optimiser imports ``torch._dynamo`` (about 0.8 s, paid by every evaluate stage).
    """
    from scipy.optimize import minimize  # only the probes need SciPy

    if n_classes < 2:
        raise ValueError(f"logistic regression needs at least 2 classes; got {n_classes}")
    if not c > 0 or not np.isfinite(c):
        raise ValueError(f"C must be a positive finite number; got {c!r}")
    n, d = x.shape
    k_free = 1 if n_classes == 2 else n_classes
    total = float(n) if sample_weight is None else float(sample_weight.sum())
    s = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device) if sample_weight is None \
        else sample_weight / total  # the objective's s_i / S
    # Augment with a column of ones so one matmul gives logits and one gives both gradients;
    # the transpose is made contiguous once because every gradient evaluation uses it.
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)
    xa_t = xa.T.contiguous()
    targets = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)[:, -k_free:]
    reg = torch.full((d + 1, 1), 1.0 / (c * total), dtype=x.dtype, device=x.device)
    reg[d] = 0.0  # the bias is not penalised

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        # Hand-written gradient: cheaper than autograd for this tiny graph, and exact.
        theta = torch.from_numpy(flat).to(x.device, x.dtype).view(d + 1, k_free)
        z = xa @ theta  # (N, K') free logits
        if k_free == 1:  # logits (0, z): log-sum-exp is log(1 + e^z), d CE / dz = sigmoid - t
            ce = torch.logaddexp(torch.zeros_like(z[:, 0]), z[:, 0]) - z[:, 0] * targets[:, 0]
            resid = torch.sigmoid(z) - targets
        else:
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            ce = (lse - z.gather(1, y[:, None]))[:, 0]
            resid = torch.exp(z - lse) - targets
        loss = s @ ce + 0.5 * (reg * theta * theta).sum()
        grad = torch.addmm(reg * theta, xa_t, resid * s[:, None])
        return float(loss), grad.cpu().numpy().astype(np.float64).ravel()

    theta0 = np.zeros((d + 1, k_free))
    if init is not None:
        theta0[:d] = init.weight.cpu().numpy()
        theta0[d] = init.bias.cpu().numpy()
    # A long history (100 pairs; memory 200 (D + 1) K' floats) suits these ill-conditioned
    # but cheap problems: on the digits embeddings it needs about 1.5x fewer evaluations
    # than 20 pairs to reach the same tolerance.
    with single_threaded_on_cpu(x.device):
        result = minimize(
            loss_and_grad,
            theta0.ravel(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "maxfun": 2 * max_iter, "gtol": tol, "ftol": 1e-14,
                     "maxcor": 100},
        )
    if result.status == 1:  # iteration or evaluation budget spent before the tolerance
        warnings.warn(f"logistic regression (C={c}) stopped after {result.nit} iterations with "
                      f"max |gradient| above {tol}: raise max_iter", RuntimeWarning, stacklevel=2)
    theta = torch.as_tensor(result.x.reshape(d + 1, k_free), dtype=x.dtype, device=x.device)
    return LogisticModel(weight=theta[:d].clone(), bias=theta[d].clone())


def per_class_accuracy(pred: np.ndarray, y: np.ndarray) -> dict[int, float]:
    """{true label: accuracy on the points with that label} for every label present in ``y``."""
    return {int(label): accuracy(pred[y == label], y[y == label]) for label in np.unique(y)}


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    device: str | None = None,
) -> ProbeResult:
    """Fit a logistic-regression probe on train, pick C by validation accuracy, score test.

    Features (N, D) are z-scored with training statistics only. Every C is fitted on the
    training split alone (warm-started along increasing C); the C with the highest validation
    accuracy wins, ties going to the smaller C (stronger regularisation). Validation or test
    labels never seen in training count as errors. No seed: the problem is convex and solved
    deterministically from a zero start.
    """
    train_x, train_y = check_split(train_x, train_y, "train")
    val_x, val_y = check_split(val_x, val_y, "val")
    test_x, test_y = check_split(test_x, test_y, "test")
    if not (train_x.shape[1] == val_x.shape[1] == test_x.shape[1]):
        raise ValueError(
            "train_x, val_x and test_x must share their feature dimension; got "
            f"{train_x.shape[1]}, {val_x.shape[1]}, {test_x.shape[1]}"
        )
    cs = sorted({float(c) for c in cs})
    if not cs or any(not (c > 0 and np.isfinite(c)) for c in cs):
        raise ValueError(f"cs must be a non-empty list of positive finite numbers; got {cs}")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(f"train_y must contain at least 2 classes; got {classes.tolist()}")

    dev = select_device(device)
    tr, va, te = (
        torch.as_tensor(a, dtype=torch.float64, device=dev)
        for a in standardise(train_x, val_x, test_x)
    )
    ytr = torch.as_tensor(encode_labels(train_y, classes), device=dev)
    val_idx = encode_labels(val_y, classes)

    model, best, best_acc, by_c = None, None, -1.0, {}
    for c in cs:
        model = fit_logistic(tr, ytr, len(classes), c, init=model)
        acc = accuracy(model.predict(va).cpu().numpy(), val_idx)
        by_c[c] = acc
        if acc > best_acc:
            best, best_c, best_acc = model, c, acc

    test_pred = classes[best.predict(te).cpu().numpy()]
    return ProbeResult(
        test_accuracy=accuracy(test_pred, test_y),
        val_accuracy=best_acc,
        best_c=best_c,
        per_class_accuracy=per_class_accuracy(test_pred, test_y),
        test_predictions=test_pred.astype(np.int64),
        val_accuracy_by_c=by_c,
    )


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    *,
    k: int = 20,
    device: str | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Majority vote of the ``k`` most cosine-similar training points; returns (N_query,) labels.

    Ties in the vote go to the tied label whose best-ranked neighbour is nearest (so k = 1 and
    any unanimous vote behave as expected); the neighbour ranking itself is torch.topk's, which
    is deterministic on a given device.
    """
    train_x = check_features(train_x, "train_x")
    query_x = check_features(query_x, "query_x")
    train_y = np.asarray(train_y)
    if train_y.shape != (len(train_x),):
        raise ValueError(f"train_y must have shape ({len(train_x)},); got {train_y.shape}")
    if train_x.shape[1] != query_x.shape[1]:
        raise ValueError(
            f"train_x and query_x dimensions differ: {train_x.shape[1]} vs {query_x.shape[1]}"
        )
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k must be in [1, {len(train_x)}] (the training set size); got {k}")
    classes, train_idx = np.unique(train_y, return_inverse=True)
    dev = select_device(device)

    def unit(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(a, dtype=torch.float32, device=dev)
        return torch.nn.functional.normalize(t, dim=1)

    bank, labels = unit(train_x), torch.as_tensor(train_idx, device=dev)
    # Vote score = votes * (k + 1) + (k - rank of the label's first neighbour): the second
    # term is < k + 1, so it only decides between labels with equal votes.
    rank_bonus = torch.arange(k, 0, -1, device=dev, dtype=torch.float32)
    preds = []
    for start in range(0, len(query_x), chunk_size):
        q = unit(query_x[start : start + chunk_size])
        nn_idx = (q @ bank.T).topk(k, dim=1).indices  # (B, k), nearest first
        nn_labels = labels[nn_idx]
        votes = torch.zeros(len(q), len(classes), device=dev)
        votes.scatter_add_(1, nn_labels, torch.ones_like(nn_labels, dtype=votes.dtype))
        first = torch.zeros(len(q), len(classes), device=dev)
        first.scatter_reduce_(1, nn_labels, rank_bonus.expand(len(q), k), reduce="amax")
        preds.append((votes * (k + 1) + first).argmax(dim=1).cpu())
    return classes[torch.cat(preds).numpy()] if preds else classes[:0]


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    k: int = 20,
    device: str | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` (cosine similarity, majority of k) on test."""
    test_x = check_features(test_x, "test_x")
    test_y = np.asarray(test_y)
    if test_y.shape != (len(test_x),):
        raise ValueError(f"test_y must have shape ({len(test_x)},); got {test_y.shape}")
    if len(test_x) == 0:
        raise ValueError("test_x is empty; need at least one point")
    return accuracy(knn_predict(train_x, train_y, test_x, k=k, device=device), test_y)


def reference_head_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 128,
    device: str | None = None,
    seed: int = 0,
) -> ProbeResult:
    """The paper's transfer protocol (METHOD.md section 4) on frozen, pre-extracted embeddings.

    A new linear head on the *raw* (not standardised) embeddings, trained with cross-entropy and
    AdamW (lr 1e-3, weight decay 0.01) for a fixed 100 epochs of shuffled mini-batches, as the
    reference does on top of its frozen encoder. Unlike :func:`linear_probe`, nothing rescales
    the features and nothing is optimised to convergence, so a class whose embeddings collapsed
    to a tiny within-class spread cannot be split by fine label: this is the measurement the
    paper's coarse-to-fine numbers come from. Deterministic for a ``seed``; ``best_c`` is NaN.
    """
    train_x, train_y = check_split(train_x, train_y, "train")
    val_x, val_y = check_split(val_x, val_y, "val")
    test_x, test_y = check_split(test_x, test_y, "test")
    if epochs < 1 or batch_size < 1 or not lr > 0 or weight_decay < 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0; got "
                         f"{epochs}, {batch_size}, {lr}, {weight_decay}")
    classes = np.unique(train_y)
    dev = select_device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(encode_labels(train_y, classes), device=dev)
    head = torch.nn.Linear(x.shape[1], len(classes)).to(dev)
    with torch.no_grad():  # seeded init (nn.Linear's default scheme, drawn from our generator)
        bound = 1.0 / np.sqrt(x.shape[1])
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=gen) * 2 * bound - bound)
    params = list(head.parameters())
    step = FunctionalAdam(params, lr=lr, weight_decay=weight_decay, decoupled=True)  # = AdamW
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(dev)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            step(torch.autograd.grad(loss, params))

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = head(torch.as_tensor(a, dtype=torch.float32, device=dev))
        return classes[logits.argmax(dim=1).cpu().numpy()]

    test_pred = predict(test_x)
    return ProbeResult(
        test_accuracy=accuracy(test_pred, test_y),
        val_accuracy=accuracy(predict(val_x), val_y),
        best_c=float("nan"),
        per_class_accuracy=per_class_accuracy(test_pred, test_y),
        test_predictions=test_pred.astype(np.int64),
    )
