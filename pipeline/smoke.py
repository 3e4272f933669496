"""The smoke mode (``suite.smoke: true``): any params shrunk to a CPU wiring check in minutes.

:func:`pipeline.config.load_params` applies :func:`apply_smoke` before validation when
``suite.smoke`` is true, so every stage sees the same shrunk params; ``make paper SMOKE=1``
(:mod:`pipeline.suites`) turns it on. The fabricated copies the smoke mode loads instead of
downloads are written by :mod:`pipeline.data.fabricate`; this module only holds values, so the
params layer can import it without importing any data code.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# The ``datasets.<name>.prepare`` options of the smoke mode (set by pipeline.suites.apply_smoke):
# - val_fraction 0.5: a stratified split must put every class on both sides, which the tiny
#   copies below allow at 50% (CIFAR-100: 2 images per class, >= 100 on each side);
# - CIFAR-100-U counts (3, 2, 2, 2, 2): uneven like the paper's 500/250/100/50/50, and drawable
#   from the 3 images per class of its copy;
# - resolution 16 for the JPEG datasets: the decode/resize path runs all the same, and a
#   ResNet view at 16 px costs a quarter of one at 32 px.
SMOKE_RESOLUTION = 16
SMOKE_PREPARE: dict[str, dict[str, object]] = {
    "cifar10": {"val_fraction": 0.5},
    "cifar100": {"val_fraction": 0.5},
    "cifar100u": {"val_fraction": 0.5, "counts": [3, 2, 2, 2, 2]},
    "mnist": {"val_fraction": 0.5},
    "waterbirds": {"resolution": SMOKE_RESOLUTION},
    "celeba": {"resolution": SMOKE_RESOLUTION},
}

# One epoch runs the training loop's code once (views, every loss term, schedule, history).
SMOKE_EPOCHS = 1
# Small batches: a fabricated training split of 32-110 images still gives 2-6 optimiser steps.
SMOKE_BATCH_SIZE = 16
# The decoder of the class-conditional autoencoder at its narrowest sensible width: at 64 (the
# reference) it costs more than the encoder on a CPU; its layer structure does not change.
SMOKE_DECODER_WIDTH = 8
# The transfer head's epochs: two, so its epoch loop runs more than once.
SMOKE_HEAD_EPOCHS = 2
# kNN neighbours: the smallest fabricated training split has 32 images, and k must not exceed it.
SMOKE_MAX_KNN_K = 10


def apply_smoke(data: Mapping[str, Any]) -> dict[str, Any]:
    """The raw params dict shrunk to a CPU wiring check; ``data`` itself is not modified.

    Applied by ``load_params`` before validation when ``suite.smoke`` is true, so every stage
    sees the same shrunk params. Only values are changed, never which datasets, methods or
    seeds run (dvc.yaml expands those from params.yaml itself); keys it does not know and
    malformed entries are left for validation to report.

    - every recipe: ``epochs`` 1, ``batch_size`` at most 16, ``warmup_epochs`` 0, decoder
      width at most 8; the backbone and augmentation stay, so every model's code path runs;
      ``pretrained`` null (random initialisation: the weights cannot be downloaded offline, and
      ImageNet weights need the ImageNet stem, which 16 px images do not get);
    - the ``prepare`` options of datasets with a fabricated copy: ``SMOKE_PREPARE`` (50%
      validation splits that fit the tiny copies, 16 px images for the JPEG datasets);
    - ``evaluate.head.epochs`` 2, ``evaluate.knn_k`` at most 10; GEORGE's per-dataset choices
      dropped (``evaluate.discovery.datasets``: the UMAP reduction of the real worst-group
      datasets compiles ~25 s of numba code per stage; tests/test_george.py runs that path);
    - ``train``: CPU, fp32, no torch.compile (a GPU suite's settings, undone for CI).
    """
    out = copy.deepcopy(dict(data))
    datasets = out.get("datasets")
    for entry in datasets.values() if isinstance(datasets, dict) else ():
        if not isinstance(entry, dict):
            continue
        recipe = entry.get("recipe")
        if isinstance(recipe, dict):
            _shrink(recipe, "epochs", SMOKE_EPOCHS)
            _shrink(recipe, "batch_size", SMOKE_BATCH_SIZE)
            _shrink(recipe, "warmup_epochs", 0)
            recipe.setdefault("decoder_width", SMOKE_DECODER_WIDTH)  # its default (64) is not small
            _shrink(recipe, "decoder_width", SMOKE_DECODER_WIDTH)
            if recipe.get("pretrained") is not None:
                recipe["pretrained"] = None  # no download offline, and 16 px images take the CIFAR stem
        source = entry.get("source")
        if isinstance(source, str) and source in SMOKE_PREPARE:
            prepare = entry.get("prepare")
            if prepare is None:
                prepare = entry["prepare"] = {}
            if isinstance(prepare, dict):
                prepare.update(copy.deepcopy(SMOKE_PREPARE[source]))
    evaluate = out.get("evaluate")
    if isinstance(evaluate, dict):
        head = evaluate.setdefault("head", {})
        if isinstance(head, dict):
            head["epochs"] = SMOKE_HEAD_EPOCHS
        _shrink(evaluate, "knn_k", SMOKE_MAX_KNN_K)
        discovery = evaluate.get("discovery")
        per_dataset = discovery.get("datasets") if isinstance(discovery, dict) else None
        if isinstance(per_dataset, dict) and isinstance(discovery.get("george"), dict):
            # Every dataset gets GEORGE's global choices (no UMAP): a UMAP fit compiles numba
            # code in each process, ~25 s per evaluate stage on a CPU whatever the data size.
            per_dataset.clear()
    train = out.get("train")
    if isinstance(train, dict):
        train.update(device="cpu", precision="fp32", compile=False)
    return out


def _shrink(section: dict[str, Any], key: str, limit: int) -> None:
    """Cap ``section[key]`` at ``limit`` where it is a number; a missing key stays missing
    (validation names it), a wrong type stays wrong (validation names that too)."""
    value = section.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        section[key] = min(value, limit)
