"""Stage ``evaluate``: frozen embeddings -> the metrics JSON (a DVC metrics file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.config import Params, evaluate_options
from pipeline.io import load_arrays, save_arrays, write_json


def evaluate_job(params: Params, dataset: str, method: str, seed: int) -> dict[str, float]:
    """Probe the frozen embeddings; write the metrics JSON and log it into the model's MLflow run.

    The model file is read only to find that run (its md5, :func:`pipeline.tracking.evaluation_run`),
    never for a number: the metrics depend on the embeddings alone, the stage's DVC input.
    """
    from pipeline.tasks import task_named
    from pipeline.tracking import evaluation_run, name_groups, run_params

    params.check_dataset(dataset)
    params.check_method(method)
    arrays = load_arrays(paths.embedding_path(dataset, method, seed))
    task = task_named(str(arrays["meta_task"]))
    task.check(params, dataset, arrays)
    stage = paths.stage_name(params.stage_kind("evaluate", dataset, method), dataset, method, seed)
    logged = run_params(params, "evaluate", dataset, method, seed)
    model = None if params.is_concat(method) else paths.model_path(dataset, method, seed)
    with evaluation_run(stage, dataset, method, seed, logged, model=model, headline=task.headline(params)) as run:
        metrics, per_image = task.evaluate(arrays, evaluate_options(params, dataset), seed)
        save_arrays(paths.predictions_path(dataset, method, seed), per_image)
        write_json(paths.metrics_path(dataset, method, seed), metrics)
        # Groups by name in the UI ("group_5-9_red_acc"): the embed stage stores the label names.
        run.log_metrics(name_groups(metrics, [str(n) for n in arrays.get("meta_names_group", [])]))
        _log_projections(run, arrays, task.picture_labels, f"{dataset} / {method} / seed {seed}")
    return metrics


def _log_projections(run: Any, arrays: dict[str, np.ndarray], labels: tuple[str, ...], title: str) -> None:
    """PCA pictures of the test embeddings, coloured by each of ``labels`` the file has, as MLflow artifacts."""
    import tempfile

    from pipeline.evaluation.projection import plot_projection

    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            if f"test_{label}" in arrays:
                names = arrays.get(f"meta_names_{label}")  # "5-9 / red": a legend by name where the file has them
                path = plot_projection(arrays["test_x"], arrays[f"test_{label}"],
                                       Path(tmp) / f"projection_{label}.png", title=f"{title}: {label}",
                                       label_names=None if names is None else [str(n) for n in names])
                run.log_artifact(path)
