"""Seconds per part of one evaluate stage, on real embedding files.

Each task runs in a fresh interpreter, as the evaluate stage does, so one-time costs (imports,
first use of an optimiser) land where a stage pays them. Parts run in the order of
:func:`pipeline.tasks.evaluate_embeddings`, then the whole suite runs again in
another fresh interpreter for the total. MLflow logging (pipeline/tracking.py) is not timed.

    python benchmarks/eval_speed.py [--digits PATH] [--spurious PATH] [--repeat N]

Set OMP_NUM_THREADS to match the machine the suite runs on (2 cores in CI).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside a fresh interpreter: argv = [task, embedding path]; prints one JSON line.
CHILD = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
times = {}
def lap(name, start):
    times[name] = round(time.perf_counter() - start, 3)
    return time.perf_counter()

import numpy as np
from pipeline.config import load_params
from pipeline.io import load_arrays
t = lap("import numpy+config", t0)
from pipeline.tasks import evaluate_embeddings
t = lap("import tasks", t)
task, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
a = load_arrays(path)
from pipeline.config import evaluate_options
params = load_params("params.yaml")
opts = evaluate_options(params, "spurious_digits") if task == "worst_group" else params.evaluate
t = time.perf_counter()
if mode == "total":
    metrics = evaluate_embeddings(a, task, opts, seed=0)
    t = lap("evaluate_embeddings", t)
    from pipeline.evaluation.projection import plot_projection
    t = lap("import projection", t)
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("coarse", "fine", "y", "group"):
            if f"test_{label}" in a:
                plot_projection(a["test_x"], a[f"test_{label}"], f"{tmp}/{label}.png", title=label)
    t = lap("projections", t)
    times["n_metrics"] = len(metrics)
elif task == "coarse_to_fine":
    from pipeline.evaluation.probes import knn_accuracy, linear_probe, reference_head_probe
    from pipeline.evaluation.geometry import geometry_metrics
    split = lambda lab: [a[f"{s}_{k}"] for s in ("train", "val", "test") for k in ("x", lab)]
    h = opts.head
    t = time.perf_counter()
    reference_head_probe(*split("fine"), epochs=h.epochs, lr=h.lr, weight_decay=h.weight_decay,
                         batch_size=h.batch_size)
    t = lap("reference head (fine)", t)
    linear_probe(*split("fine"), cs=opts.probe_cs)
    t = lap("logistic probe (fine)", t)
    linear_probe(*split("coarse"), cs=opts.probe_cs)
    t = lap("logistic probe (coarse)", t)
    knn_accuracy(a["train_x"], a["train_fine"], a["test_x"], a["test_fine"], k=opts.knn_k)
    t = lap("knn", t)
    geometry_metrics(a["test_x"], a["test_coarse"], fine=a["test_fine"])
    t = lap("geometry", t)
else:
    import torch
    from dataclasses import asdict
    from pipeline.evaluation import robustness as r
    from pipeline.evaluation.common import encode_labels, standardise
    from pipeline.evaluation.geometry import geometry_metrics
    from pipeline.evaluation.george import george_discover
    from pipeline.evaluation.grouping import discover_groups
    t = lap("import robustness", t)
    tr = [a[f"train_{k}"] for k in ("x", "y", "group")]
    va = [a[f"val_{k}"] for k in ("x", "y", "group")]
    classes = np.unique(tr[1])
    xs = [torch.as_tensor(v, dtype=torch.float64) for v in standardise(tr[0], va[0], a["test_x"])]
    ys = [torch.as_tensor(encode_labels(v, classes)) for v in (tr[1], va[1])]
    rules = {"average": np.zeros(len(va[1]), dtype=np.int64), "worst_class": ys[1].numpy(), "oracle": va[2]}
    path = r.logistic_path(xs[0], ys[0], len(classes), cs=opts.robustness_cs)
    erm = r.select_logistic(path, xs[1], ys[1], rules)
    t = lap("erm path + selection", t)
    losses = r.training_losses(erm["average"].model, xs[0], ys[0])
    george = asdict(opts.discovery.george)
    d = george_discover(tr[0], tr[1], losses, va[0], va[1], seed=0, **george)
    tr_c, va_c = d.assign(tr[0], tr[1]), d.assign(va[0], va[1])
    t = lap(f"GEORGE ({george['reduction']}, {george['cluster_method']})", t)
    umap = dict(george, reduction="umap", cluster_method="gmm")
    george_discover(tr[0], tr[1], losses, va[0], va[1], seed=0, **umap)
    t = lap("GEORGE (umap, gmm: the real datasets; not in the stage)", t)
    k = discover_groups(tr[0], tr[1], seed=0, **asdict(opts.discovery.kmeans))
    tr_k, va_k = k.assign(tr[0], tr[1]), k.assign(va[0], va[1])
    t = lap("k-means discovery", t)
    dro = asdict(opts.group_dro)
    r.fit_group_dro(xs[0], ys[0], tr_c, xs[1], ys[1], rules | {"discovered": va_c}, len(classes), **dro)
    t = lap("group DRO (GEORGE)", t)
    r.fit_group_dro(xs[0], ys[0], tr_k, xs[1], ys[1], rules | {"discovered": va_k}, len(classes), **dro)
    t = lap("group DRO (k-means)", t)
    r.fit_group_dro(xs[0], ys[0], tr[2], xs[1], ys[1], rules, len(classes), **dro)
    t = lap("group DRO (oracle)", t)
    r.select_logistic(r.logistic_path(xs[0], ys[0], len(classes), cs=opts.robustness_cs, train_g=tr[2]),
                      xs[1], ys[1], rules)
    t = lap("group-balanced logreg", t)
    geometry_metrics(a["test_x"], a["test_y"], fine=a.get("test_fine"))
    t = lap("geometry", t)
times["process total"] = round(time.perf_counter() - t0, 3)
print(json.dumps(times))
"""


def run_child(task: str, path: Path, mode: str) -> dict[str, float]:
    """One fresh interpreter; returns its {part: seconds}."""
    out = subprocess.run([sys.executable, "-c", CHILD, task, str(path), mode], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{task} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=Path,
                        default=ROOT / "artifacts/digits/seed0/embeddings/supcon.npz")
    parser.add_argument("--spurious", type=Path,
                        default=ROOT / "artifacts/spurious_digits/seed0/embeddings/supcon.npz")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    args = parser.parse_args()
    for task, path in (("coarse_to_fine", args.digits), ("worst_group", args.spurious)):
        if not path.exists():
            print(f"{task}: {path} missing; skipped")
            continue
        print(f"== {task}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        for mode in ("parts", "total"):
            runs = [run_child(task, path, mode) for _ in range(args.repeat)]
            for part in runs[0]:
                values = sorted(r[part] for r in runs)
                print(f"  {mode:5s} {part:28s} {values[len(values) // 2]:8.2f}")


if __name__ == "__main__":
    main()
