"""What each DVC stage does, as one function per stage; ``stages/`` only parses arguments.

Every job validates params first, writes its outputs atomically at the very end, and
logs to MLflow as a side channel (see :mod:`pipeline.tracking`).
"""

from __future__ import annotations


import numpy as np

from pipeline import paths
from pipeline.config import Params, ParamsError
from pipeline.io import load_arrays, save_arrays, write_json


def _trained_method(params: Params, method: str) -> None:
    params.check_method(method)
    if params.is_concat(method):
        raise ParamsError(f"method {method!r} is a concatenation (methods.concat): it has no train stage")


def download_job(params: Params, dataset: str, *, download: bool = True, timeout: float = 30.0) -> None:
    """Download (or verify files placed by hand) and write the prepared cache of ``dataset``."""
    from pipeline.data import prepared_path
    from pipeline.data.registry import dataset_statistics, prepare, resolve_options
    from pipeline.data.cache import read_cache

    params.check_dataset(dataset)
    spec = params.datasets[dataset]
    try:
        resolve_options(spec.source, spec.prepare)
    except ValueError as err:
        raise ParamsError(f"datasets.{dataset}.prepare: {err}") from None
    out = prepare(spec.source, params.data.raw_root, prepared_path(dataset), spec.prepare, download, timeout,
                  fabricated=params.suite.smoke)
    stats = dataset_statistics(read_cache(out))
    table = stats.pivot_table(index=["label", "value", "name"], columns="split", values="count")
    print(f"{dataset}: prepared cache at {out}")
    print(table.reindex(columns=["train", "val", "test"]).to_string())


def train_job(params: Params, dataset: str, method: str, seed: int, *, progress: bool = True) -> None:
    """Train ``method`` on ``dataset`` with ``seed``; write the model file and its history.

    Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) it trains with N DDP processes
    (see :mod:`pipeline.training`); only rank 0 logs to MLflow and writes the outputs.
    """
    from contextlib import nullcontext

    import torch

    from pipeline import distributed
    from pipeline.data import load_prepared
    from pipeline.hardware import describe
    from pipeline.io import atomic_write
    from pipeline.reports import loss_curve_figure
    from pipeline.tracking import Run, run_params, start_run
    from pipeline.training import select_device, train

    params.check_dataset(dataset)
    _trained_method(params, method)
    ds_params = params.datasets[dataset]
    weights = params.methods.trained[method]
    records = load_prepared(dataset, ds_params)
    stage = paths.stage_name(params.stage_kind("train", dataset, method), dataset, method, seed)
    logged = run_params(params, "train", dataset, method)
    with distributed.process_group(select_device(params.train.device).type):
        main = distributed.rank() == 0
        if distributed.world_size() > 1:
            logged["world_size"] = distributed.world_size()
        # Other ranks compute the same whole-batch losses; they log nothing and write nothing.
        tracked = start_run(stage, dataset, method, seed, logged) if main else nullcontext(Run(None, None))
        with tracked as run:
            outcome = train(records, ds_params, weights, params.train, seed,
                            resume_path=paths.resume_path(dataset, method, seed),
                            on_epoch=lambda rec: run.log_metrics(
                                {k: v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"])),
                            progress=progress)
            if not main:
                return
            model = dict(outcome.model, dataset=dataset, method=method, seed=seed,
                         hardware=describe(select_device(params.train.device).type))
            atomic_write(paths.model_path(dataset, method, seed), lambda f: torch.save(model, f))
            write_json(paths.history_path(dataset, method, seed), outcome.history)
            run.log_metrics({f"final/{k}": v for k, v in outcome.history[-1].items() if k.startswith("loss/")})
            run.log_figure(loss_curve_figure(outcome.history, f"{dataset} / {method} / seed {seed}"),
                           "loss_curve.png")
        paths.resume_path(dataset, method, seed).unlink(missing_ok=True)


def embed_job(params: Params, dataset: str, method: str, seed: int) -> None:
    """Frozen embeddings of every split; for a concatenation, of each part, concatenated."""
    from pipeline.data import load_prepared
    from pipeline.embeddings import concat_embeddings, embed_records

    params.check_dataset(dataset)
    params.check_method(method)
    records = load_prepared(dataset, params.datasets[dataset])
    parts = params.methods.concat.get(method, [method])
    # Two augmented views of the test images (for alignment): the same images for every method,
    # part and seed (view_seed 0), so alignment compares like with like.
    augment = params.datasets[dataset].recipe.augment
    arrays = concat_embeddings([embed_records(paths.model_path(dataset, p, seed), records, augment=augment)
                                for p in parts])
    arrays["meta_task"] = np.array(records.task)
    save_arrays(paths.embedding_path(dataset, method, seed), arrays)


def evaluate_job(params: Params, dataset: str, method: str, seed: int) -> dict[str, float]:
    """Probe the frozen embeddings; write the metrics JSON and log it."""
    from pipeline.evaluation.suite import evaluate_embeddings
    from pipeline.tracking import run_params, start_run

    params.check_dataset(dataset)
    params.check_method(method)
    arrays = load_arrays(paths.embedding_path(dataset, method, seed))
    stage = paths.stage_name(params.stage_kind("evaluate", dataset, method), dataset, method, seed)
    logged = run_params(params, "evaluate", dataset, method)
    with start_run(stage, dataset, method, seed, logged) as run:
        metrics = evaluate_embeddings(arrays, str(arrays["meta_task"]), params.evaluate, seed)
        write_json(paths.metrics_path(dataset, method, seed), metrics)
        run.log_metrics(metrics)
        _log_projections(run, arrays, f"{dataset} / {method} / seed {seed}")
    return metrics


def _log_projections(run, arrays: dict[str, np.ndarray], title: str) -> None:
    """PCA pictures of the test embeddings, coloured by each label, as MLflow artifacts."""
    import tempfile
    from pathlib import Path

    from pipeline.evaluation.projection import plot_projection

    with tempfile.TemporaryDirectory() as tmp:
        for label in ("coarse", "fine", "group"):  # (worst-group: "group" already shows y)
            if f"test_{label}" in arrays:
                path = plot_projection(arrays["test_x"], arrays[f"test_{label}"],
                                       Path(tmp) / f"projection_{label}.png", title=f"{title}: {label}")
                run.log_artifact(path)


def report_job(params: Params) -> None:
    """Compile reports/ from every (dataset, method, seed) metrics file of the suite."""
    from pipeline.reports import write_report

    write_report(params, paths.REPORTS)
