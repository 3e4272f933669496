"""Linear and kNN probes: agreement with scikit-learn and with a slow loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.evaluation.common import FunctionalAdam
from pipeline.evaluation.probes import (
    fit_logistic,
    knn_accuracy,
    knn_predict,
    linear_probe,
    reference_head_probe,
)


def gaussian_classes(
    n: int, d: int, k: int, sep: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, size=n)
    return means[y] + rng.normal(size=(n, d)), y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("c", [0.01, 1.0])
def test_fit_logistic_matches_sklearn(n_classes: int, c: float) -> None:
    x, y = gaussian_classes(600, 20, n_classes, sep=0.5, seed=n_classes)
    x = StandardScaler().fit_transform(x)
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
    ours = fit_logistic(torch.as_tensor(x), torch.as_tensor(y), n_classes, c, tol=1e-10)
    # sklearn's binary model is one weight vector for class 1, like ours.
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_.T, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ours.bias.numpy(), ref.intercept_, atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(ours.predict(torch.as_tensor(x)).numpy(), ref.predict(x))


def test_fit_logistic_sample_weights_match_sklearn() -> None:
    x, y = gaussian_classes(400, 10, 3, sep=0.7, seed=5)
    w = np.random.default_rng(0).uniform(0.2, 3.0, size=len(y))
    w = w / w.mean()  # mean-one weights keep C's meaning (see the probes module docstring)
    ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=w)
    s = torch.as_tensor(w)
    ours = fit_logistic(torch.as_tensor(x), torch.as_tensor(y), 3, 0.3, sample_weight=s, tol=1e-10)
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_.T, atol=1e-5, rtol=1e-4)


def test_linear_probe_agrees_with_sklearn_path() -> None:
    x, y = gaussian_classes(1500, 64, 5, sep=0.25, seed=1)
    tr, va, te = slice(0, 900), slice(900, 1200), slice(1200, None)
    cs = (1e-3, 1e-2, 1e-1, 1.0)
    result = linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], cs=cs, device="cpu")
    scaler = StandardScaler().fit(x[tr])  # train statistics only, as the probe does
    val_acc = {}
    for c in cs:
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
        ref.fit(scaler.transform(x[tr]), y[tr])
        val_acc[c] = ref.score(scaler.transform(x[va]), y[va])
        if c == result.best_c:
            ref_test = ref.predict(scaler.transform(x[te]))
    for c in cs:
        assert result.val_accuracy_by_c[c] == pytest.approx(val_acc[c], abs=2 / 300)
    assert result.val_accuracy == max(result.val_accuracy_by_c.values())
    assert np.mean(result.test_predictions == ref_test) > 0.99
    assert result.test_accuracy == pytest.approx(np.mean(ref_test == y[te]), abs=0.01)
    assert result.test_accuracy == pytest.approx(np.mean(result.test_predictions == y[te]))


def test_separable_subclasses_give_near_perfect_fine_probe() -> None:
    # 2 coarse classes x 3 fine sub-classes each, every sub-class its own tight blob.
    x, fine = gaussian_classes(1800, 32, 6, sep=2.0, seed=2)
    tr, va, te = slice(0, 1000), slice(1000, 1400), slice(1400, None)
    result = linear_probe(x[tr], fine[tr], x[va], fine[va], x[te], fine[te], device="cpu")
    assert result.test_accuracy > 0.98
    assert set(result.per_class_accuracy) == set(range(6))
    assert min(result.per_class_accuracy.values()) > 0.95


def test_probe_keeps_original_label_values_and_per_class_accuracy() -> None:
    x, y = gaussian_classes(900, 16, 3, sep=0.6, seed=3)
    labels = np.array([3, 7, 11])[y]
    tr, va, te = slice(0, 500), slice(500, 700), slice(700, None)
    result = linear_probe(x[tr], labels[tr], x[va], labels[va], x[te], labels[te], cs=(0.1, 1.0))
    assert set(np.unique(result.test_predictions)) <= {3, 7, 11}
    assert result.test_predictions.dtype == np.int64
    for label, acc in result.per_class_accuracy.items():
        mask = labels[te] == label
        assert acc == pytest.approx(np.mean(result.test_predictions[mask] == label))


def test_probe_is_invariant_to_feature_affine_maps() -> None:
    # Standardisation with train statistics makes per-feature scale and shift irrelevant.
    x, y = gaussian_classes(800, 12, 3, sep=0.5, seed=4)
    scale = np.random.default_rng(1).uniform(0.1, 50.0, size=12)
    x2 = x * scale + 7.0
    split = lambda a: (a[:400], y[:400], a[400:600], y[400:600], a[600:], y[600:])  # noqa: E731
    r1 = linear_probe(*split(x), cs=(0.01, 1.0))
    r2 = linear_probe(*split(x2), cs=(0.01, 1.0))
    assert r1.best_c == r2.best_c
    assert np.mean(r1.test_predictions == r2.test_predictions) > 0.99


def test_probe_rejects_bad_input() -> None:
    x, y = gaussian_classes(100, 4, 2, sep=1.0, seed=0)
    with pytest.raises(ValueError, match="val_y"):
        linear_probe(x, y, x, y[:-1], x, y)
    with pytest.raises(ValueError, match="test_x"):
        linear_probe(x, y, x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, np.zeros_like(y), x, y, x, y)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(np.where(x > 2, np.nan, x), y, x, y, x, y)


def knn_oracle(train_x: np.ndarray, train_y: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Straight from the definition, one query at a time."""
    out = []
    for row in q:
        sims = [
            float(row @ t / (np.linalg.norm(row) * np.linalg.norm(t))) for t in train_x
        ]
        order = np.argsort(sims, kind="stable")[::-1][:k]
        neighbours = [int(train_y[i]) for i in order]
        counts = {lab: neighbours.count(lab) for lab in neighbours}
        top = max(counts.values())
        out.append(next(lab for lab in neighbours if counts[lab] == top))  # nearest tied label
    return np.array(out)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_loop_oracle(k: int) -> None:
    x, y = gaussian_classes(260, 6, 4, sep=0.4, seed=k)
    train_x, train_y, q = x[:200], y[:200] * 10 + 1, x[200:]  # non-contiguous labels
    np.testing.assert_array_equal(
        knn_predict(train_x, train_y, q, k=k, chunk_size=17), knn_oracle(train_x, train_y, q, k)
    )


def test_knn_accuracy_on_separable_classes() -> None:
    x, y = gaussian_classes(600, 8, 3, sep=3.0, seed=0)
    assert knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=5) > 0.97
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(x[:10], y[:10], x[400:], y[400:], k=11)


def logistic_objective(x: np.ndarray, y: np.ndarray, k: int, c: float, model) -> float:
    """The module docstring's objective, straight from the definition (numpy, per point)."""
    w, b = model.weight.numpy(), model.bias.numpy()
    total = 0.0
    for xi, yi in zip(x, y):
        z = xi @ w + b
        logits = np.concatenate([[0.0], z]) if k == 2 else z
        total += np.logaddexp.reduce(logits) - logits[yi]
    return total / len(x) + (w * w).sum() / (2 * c * len(x))


@pytest.mark.parametrize("n_classes", [2, 5])
def test_warm_start_path_reaches_the_cold_start_optimum(n_classes: int) -> None:
    # Nearly separable classes: large C is ill-conditioned, the hard case for a warm start.
    x, y = gaussian_classes(700, 24, n_classes, sep=1.5, seed=10 + n_classes)
    x = StandardScaler().fit_transform(x)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    held_out = torch.as_tensor(gaussian_classes(400, 24, n_classes, sep=1.5, seed=10 + n_classes)[0])
    n_params, tol = 25 * (1 if n_classes == 2 else n_classes), 1e-8
    warm = None
    for c in (1e-3, 1e-1, 10.0, 1000.0):
        warm = fit_logistic(xt, yt, n_classes, c, init=warm, tol=tol)
        cold = fit_logistic(xt, yt, n_classes, c, tol=tol)
        f_warm = logistic_objective(x, y, n_classes, c, warm)
        f_cold = logistic_objective(x, y, n_classes, c, cold)
        # With curvature mu >= 1 / (C N) (the penalty's, on the weights), a point whose max
        # |gradient| is <= tol is within P tol^2 / (2 mu) of the optimum: so are both ends.
        assert abs(f_warm - f_cold) <= n_params * tol**2 * c * len(x) / 2
        np.testing.assert_array_equal(warm.predict(held_out).numpy(), cold.predict(held_out).numpy())


def test_fit_logistic_warns_when_out_of_iterations() -> None:
    x, y = gaussian_classes(300, 10, 3, sep=1.5, seed=0)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        fit_logistic(torch.as_tensor(x), torch.as_tensor(y), 3, 100.0, max_iter=3)


@pytest.mark.parametrize("decoupled", [False, True])
def test_functional_adam_is_torch_adam_bit_for_bit(decoupled: bool) -> None:
    torch.manual_seed(0)
    start = [torch.randn(8, 3), torch.randn(3)]
    ours = [p.clone() for p in start]
    ref = [p.clone().requires_grad_(True) for p in start]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    optimiser = cls(ref, lr=0.01, weight_decay=0.05)
    step = FunctionalAdam(ours, lr=0.01, weight_decay=0.05, decoupled=decoupled)
    for _ in range(200):
        grads = [torch.randn_like(p) for p in start]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        optimiser.step()
        step(grads)
    assert all(torch.equal(a, b.detach()) for a, b in zip(ours, ref))


def test_reference_head_matches_the_adamw_loop() -> None:
    """The paper's protocol written plainly with torch.optim.AdamW and .backward()."""
    x, y = gaussian_classes(500, 16, 4, sep=0.4, seed=6)
    x = x.astype(np.float32)
    tr, va, te = slice(0, 300), slice(300, 400), slice(400, None)
    got = reference_head_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], epochs=7, batch_size=64,
                               device="cpu", seed=3)
    gen = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 4)
    with torch.no_grad():
        bound = 1.0 / np.sqrt(16)
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=gen) * 2 * bound - bound)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    xt, yt = torch.as_tensor(x[tr]), torch.as_tensor(y[tr])
    for _ in range(7):
        order = torch.randperm(300, generator=gen)
        for start in range(0, 300, 64):
            idx = order[start:start + 64]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx]).backward()
            optimiser.step()
    with torch.no_grad():
        expected = head(torch.as_tensor(x[te])).argmax(dim=1).numpy()
    np.testing.assert_array_equal(got.test_predictions, expected)


def test_evaluation_avoids_slow_imports(tmp_path) -> None:
    """No torch optimiser object (it imports torch._dynamo, ~0.8 s) and, for coarse-to-fine,
    no scikit-learn: every evaluate stage would pay those imports."""
    code = """
import sys, numpy as np
from pipeline.config import DiscoveryParams, EvaluateParams, GeorgeParams, HeadParams, KMeansDiscoveryParams
from pipeline.tasks import evaluate_embeddings
from pipeline.evaluation.projection import plot_projection
rng = np.random.default_rng(0)
a = {}
for s, n in (("train", 120), ("val", 60), ("test", 60)):
    fine = rng.integers(0, 4, n)
    a[f"{s}_x"], a[f"{s}_fine"], a[f"{s}_coarse"] = rng.normal(size=(n, 8)) + fine[:, None], fine, fine // 2
discovery = DiscoveryParams(GeorgeParams("none", "kmeans"), KMeansDiscoveryParams())
opts = EvaluateParams(probe_cs=[0.1, 1.0], discovery=discovery, knn_k=5, head=HeadParams(epochs=2))
evaluate_embeddings(a, "coarse_to_fine", opts)
plot_projection(a["test_x"], a["test_fine"], sys.argv[1])
print(sorted(m for m in ("torch._dynamo", "sklearn") if m in sys.modules))
"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], cwd=root,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
