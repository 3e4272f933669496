"""Stage ``validate``: the whole params.yaml checked before any other stage works.

dvc.yaml puts this stage at the root of the graph (every download stage depends on its output)
and makes params.yaml itself one of its deps, so any edit of params.yaml, including a typo in a
key no stage reads, is validated by the next ``dvc repro``, also when every other stage is up to
date. Its output holds no information (the same bytes whenever it passes), so passing it never
reruns anything downstream.
"""

from __future__ import annotations

import sys

from pipeline import paths
from pipeline.config import Params, check_knn_k, check_names, sanity_warnings
from pipeline.io import write_text

VALIDATED_TEXT = "params.yaml passed validation (pipeline/config.py)\n"


def validate_job(params: Params) -> None:
    """Checks beyond the schema that ``load_params`` already ran: every name against the registry
    that implements it (sources, backbones, augmentations, GEORGE's reductions and clusterings),
    every dataset's loader options, bounds that depend on a prepared dataset's size, and warnings
    for settings that validate but are almost surely a mistake. Writes
    :data:`pipeline.paths.VALIDATED` when all pass."""
    from pipeline.augment import RECIPES
    from pipeline.data.cache import CacheError, read_cache
    from pipeline.data.records import COARSE_TO_FINE
    from pipeline.data.registry import DATASETS, checked_options
    from pipeline.evaluation.george import CLUSTER_METHODS, REDUCTIONS
    from pipeline.models import ENCODERS, PRETRAINED

    check_names(params, backbones=ENCODERS, augmentations=RECIPES, sources=DATASETS, reductions=REDUCTIONS,
                cluster_methods=CLUSTER_METHODS, pretrained=PRETRAINED)
    for name, spec in params.datasets.items():
        checked_options(f"datasets.{name}.prepare", spec.source, spec.prepare)
    for name in params.suite_datasets:
        try:  # memory-mapped: cheap. No cache yet (or a damaged one): the evaluate stage checks it.
            records = read_cache(paths.prepared_path(name))
        except CacheError:
            continue
        if records.task == COARSE_TO_FINE:
            check_knn_k(params, name, len(records.splits["train"]))
    for note in sanity_warnings(params):
        print(f"warning: {note}", file=sys.stderr)
    write_text(paths.VALIDATED, VALIDATED_TEXT)
