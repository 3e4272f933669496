"""Stage ``embed``: a frozen encoder -> the embeddings of every split."""

from __future__ import annotations

import numpy as np

from pipeline import paths
from pipeline.config import Params, check_names
from pipeline.io import save_arrays


def embed_job(params: Params, dataset: str, method: str, seed: int) -> None:
    """Frozen embeddings of every split; for a concatenation, of each part, concatenated."""
    from pipeline.data import load_prepared
    from pipeline.embeddings import concat_embeddings, embed_records

    from pipeline.augment import RECIPES

    params.check_dataset(dataset)
    params.check_method(method)
    check_names(params, augmentations=RECIPES, datasets=[dataset])  # (the views for alignment)
    records = load_prepared(dataset, params.datasets[dataset])
    parts = params.methods.concat.get(method, [method])
    # Two augmented views of the test images (for alignment): the same images for every method,
    # part and seed (view_seed 0), so alignment compares like with like.
    augment = params.datasets[dataset].recipe.augment
    arrays = concat_embeddings([embed_records(paths.model_path(dataset, p, seed), records, augment=augment)
                                for p in parts])
    arrays["meta_task"] = np.array(records.task)
    for label, names in records.class_names.items():  # e.g. meta_names_group = ["0-4 / red", ...]
        arrays[f"meta_names_{label}"] = np.array([str(n) for n in names])
    save_arrays(paths.embedding_path(dataset, method, seed), arrays)
