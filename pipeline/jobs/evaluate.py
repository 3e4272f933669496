"""Stage ``evaluate``: frozen embeddings -> the metrics JSON (a DVC metrics file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.config import Params, evaluate_options
from pipeline.io import load_arrays, write_json


def evaluate_job(params: Params, dataset: str, method: str, seed: int) -> dict[str, float]:
    """Probe the frozen embeddings; write the metrics JSON and log it."""
    from pipeline.tasks import task_named
    from pipeline.tracking import run_params, start_run

    params.check_dataset(dataset)
    params.check_method(method)
    arrays = load_arrays(paths.embedding_path(dataset, method, seed))
    task = task_named(str(arrays["meta_task"]))
    task.check(params, dataset, arrays)
    stage = paths.stage_name(params.stage_kind("evaluate", dataset, method), dataset, method, seed)
    logged = run_params(params, "evaluate", dataset, method)
    with start_run(stage, dataset, method, seed, logged) as run:
        metrics = task.metrics(arrays, evaluate_options(params, dataset), seed)
        write_json(paths.metrics_path(dataset, method, seed), metrics)
        run.log_metrics(metrics)
        _log_projections(run, arrays, task.picture_labels, f"{dataset} / {method} / seed {seed}")
    return metrics


def _log_projections(run: Any, arrays: dict[str, np.ndarray], labels: tuple[str, ...], title: str) -> None:
    """PCA pictures of the test embeddings, coloured by each of ``labels`` the file has, as MLflow artifacts."""
    import tempfile

    from pipeline.evaluation.projection import plot_projection

    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            if f"test_{label}" in arrays:
                path = plot_projection(arrays["test_x"], arrays[f"test_{label}"],
                                       Path(tmp) / f"projection_{label}.png", title=f"{title}: {label}")
                run.log_artifact(path)
