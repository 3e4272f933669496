"""Datasets: every loader returns :class:`pipeline.data.records.Records`.

The download stage (:func:`pipeline.jobs.download.download_job`) writes each dataset's prepared
cache to ``data/prepared/<name>``; every later stage reads that cache (memory-mapped,
no loader code imported), so the raw files are read and checked once.
"""

from __future__ import annotations

from pipeline.config import DatasetParams, ParamsError
from pipeline.data.cache import cache_params, read_cache, rebuild_hint
from pipeline.data.records import Records
from pipeline.paths import prepared_path


def load_prepared(name: str, params: DatasetParams) -> Records:
    """The prepared cache of dataset ``name``, checked against its params entry.

    A missing, incomplete or damaged cache raises :class:`pipeline.data.cache.CacheError` (a
    StageError: one ``error:`` line naming the file and the command that rebuilds it).
    """
    path = prepared_path(name)
    built = cache_params(path)
    if built is not None:
        mismatch = {k: (v, built.get(k)) for k, v in params.prepare.items() if built.get(k) != v}
        if built.get("dataset") != params.source or mismatch:
            raise ParamsError(
                f"{path}: prepared cache was built for {built.get('dataset')!r} with {built}, but "
                f"datasets.{name} asks for source {params.source!r} with prepare {params.prepare}; "
                f"{rebuild_hint(name)}")
    return read_cache(path, dataset=name)
