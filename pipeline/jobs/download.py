"""Stage ``download``: raw files -> the prepared cache ``data/prepared/<dataset>``."""

from __future__ import annotations

from pipeline import paths
from pipeline.config import Params, check_names


def download_job(params: Params, dataset: str, *, download: bool = True, timeout: float = 30.0) -> None:
    """Download (or verify files placed by hand) and write the prepared cache of ``dataset``."""
    from pipeline.data.cache import read_cache
    from pipeline.data.registry import DATASETS, checked_options, dataset_statistics, prepare

    params.check_dataset(dataset)
    check_names(params, sources=DATASETS, datasets=[dataset])
    spec = params.datasets[dataset]
    checked_options(f"datasets.{dataset}.prepare", spec.source, spec.prepare)
    out = prepare(spec.source, params.data.raw_root, paths.prepared_path(dataset), spec.prepare, download, timeout,
                  fabricated=params.suite.smoke)
    stats = dataset_statistics(read_cache(out))
    table = stats.pivot_table(index=["label", "value", "name"], columns="split", values="count")
    print(f"{dataset}: prepared cache at {out}")
    print(table.reindex(columns=["train", "val", "test"]).to_string())
