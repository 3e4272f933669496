"""Stage ``train``: the prepared cache -> a frozen encoder (model file) and its loss history."""

from __future__ import annotations

import sys

from pipeline import paths
from pipeline.config import Params, check_names, sanity_warnings
from pipeline.io import write_json

TRAIN_ENTRY = "stages/train.py"  # the code a resume checkpoint must have been written by


def train_job(params: Params, dataset: str, method: str, seed: int, *, progress: bool = True) -> None:
    """Train ``method`` on ``dataset`` with ``seed``; write the model file and its history.

    The history (a DVC output) holds what the run computed: per-epoch losses and learning rate.
    How long it took (seconds and images/s per epoch) goes to MLflow and to
    ``logs/<dataset>/seed<k>/train/<method>.json``, which is not a DVC output: a retrain that
    reproduces the model byte for byte changes nothing downstream.

    Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) it trains with N DDP processes
    (see :mod:`pipeline.training`); only rank 0 logs to MLflow and writes the outputs.
    """
    from contextlib import nullcontext

    import torch

    from pipeline import distributed
    from pipeline.data import load_prepared
    from pipeline.figures import loss_curve_figure
    from pipeline.hardware import describe
    from pipeline.io import atomic_write
    from pipeline.provenance import code_fingerprint
    from pipeline.tracking import Run, run_params, start_run
    from pipeline.devices import select_device
    from pipeline.training import TIMING_KEYS, stalled_loss, train

    from pipeline.augment import RECIPES
    from pipeline.models import ENCODERS, PRETRAINED
    from pipeline.models.pretrained import load_pretrained

    params.check_dataset(dataset)
    params.check_trained(method)
    check_names(params, backbones=ENCODERS, augmentations=RECIPES, datasets=[dataset], pretrained=PRETRAINED)
    ds_params = params.datasets[dataset]
    weights = params.methods.trained[method]
    records = load_prepared(dataset, ds_params)
    init = None
    if ds_params.recipe.pretrained is not None:  # fetched (or found) and hash-checked before any work
        init = load_pretrained(ds_params.recipe.pretrained, ds_params.recipe.backbone, params.data.raw_root)
    stage = paths.stage_name(params.stage_kind("train", dataset, method), dataset, method, seed)
    logged = run_params(params, "train", dataset, method, seed)
    timings: list[dict[str, float]] = []

    def on_epoch(record: dict[str, float]) -> None:
        run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        timings.append({k: record[k] for k in ("epoch", *TIMING_KEYS)})

    with distributed.process_group(select_device(params.train.device).type):
        main = distributed.rank() == 0
        if distributed.world_size() > 1:
            logged["world_size"] = distributed.world_size()
        notes = sanity_warnings(params)
        if main:
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
        # Other ranks compute the same whole-batch losses; they log nothing and write nothing.
        tracked = start_run(stage, dataset, method, seed, logged) if main else nullcontext(Run(None, None))
        with tracked as run:
            outcome = train(records, ds_params, weights, params.train, seed,
                            resume_path=paths.resume_path(dataset, method, seed),
                            code=code_fingerprint(TRAIN_ENTRY), on_epoch=on_epoch, progress=progress, init=init)
            if not main:
                return
            stalled = stalled_loss(outcome.history)
            if stalled:
                notes.append(f"{stage}: {stalled}: this run learned nothing (check train.temperature and "
                             f"datasets.{dataset}.recipe.lr)")
                print(f"warning: {notes[-1]}", file=sys.stderr)
            if notes:
                run.set_tags({"warning": " | ".join(notes)[:5000]})
            model = dict(outcome.model, dataset=dataset, method=method, seed=seed,
                         hardware=describe(select_device(params.train.device).type))
            atomic_write(paths.model_path(dataset, method, seed), lambda f: torch.save(model, f))
            write_json(paths.history_path(dataset, method, seed), outcome.history)
            # Timings are a log, not an output: rewritten on every run, never read by a stage.
            write_json(paths.train_log_path(dataset, method, seed),
                       {"stage": stage, "hardware": model["hardware"], "epochs": timings})
            if outcome.history:  # (empty for the untrained baseline: every weight 0)
                run.log_metrics({f"final/{k}": v for k, v in outcome.history[-1].items() if k.startswith("loss/")})
                run.log_figure(loss_curve_figure(outcome.history, f"{dataset} / {method} / seed {seed}"),
                               "loss_curve.png")
        paths.resume_path(dataset, method, seed).unlink(missing_ok=True)
