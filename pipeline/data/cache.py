"""The prepared cache: a dataset's :class:`Records` as plain ``.npy`` files, written atomically.

Layout of a cache folder (the DVC out of the download stage)::

    OUT/meta.json              name, task, class_names, build parameters, shapes, statistics
    OUT/<split>.images.npy     (N, C, H, W) uint8
    OUT/<split>.<role>.npy     (N,) int64, one per label role
    OUT/COMPLETE               written last

Everything is written into a hidden sibling folder and renamed onto ``OUT`` only when
complete, so a crash never leaves a folder that looks finished. ``read_cache`` memory-maps
the arrays, so loading is instant and pages in on use.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.records import SPLITS, Records, Split

if TYPE_CHECKING:
    import pandas as pd

FORMAT = 1
MARKER = "COMPLETE"


class CacheError(RuntimeError):
    """A prepared cache is missing, incomplete, inconsistent or built with other parameters."""


def _normalise(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they round-trip through JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(params), default=str))


def dataset_statistics(records: Records) -> "pd.DataFrame":
    """Counts per split, label role and value (classes; groups for worst-group datasets).

    One row per (split, label, value) with columns split, label, value, name, count and
    fraction (of the split); values with no images appear with count 0.
    """
    import pandas as pd

    rows = []
    for split_name in SPLITS:
        split = records.splits[split_name]
        for role, values in split.labels.items():
            names = records.class_names.get(role) or [str(v) for v in range(int(values.max(initial=-1)) + 1)]
            counts = np.bincount(values, minlength=len(names))
            for value, count in enumerate(counts):
                rows.append({
                    "split": split_name,
                    "label": role,
                    "value": value,
                    "name": names[value] if value < len(names) else str(value),
                    "count": int(count),
                    "fraction": float(count) / max(len(split), 1),
                })
    return pd.DataFrame(rows, columns=["split", "label", "value", "name", "count", "fraction"])


def cache_params(path: str | Path) -> dict[str, Any] | None:
    """The build parameters of a complete cache at ``path``, or None if there is none."""
    path = Path(path)
    if not (path / MARKER).is_file() or not (path / "meta.json").is_file():
        return None
    return json.loads((path / "meta.json").read_text())["params"]


def is_cached(path: str | Path, params: Mapping[str, Any]) -> bool:
    """Whether ``path`` holds a complete cache built with exactly ``params``."""
    return cache_params(path) == _normalise(params)


def write_cache(records: Records, out: str | Path, params: Mapping[str, Any]) -> Path:
    """Write ``records`` to the folder ``out`` atomically, recording ``params``; return ``out``.

    An existing folder at ``out`` (a previous build) is replaced only after the new one is
    complete; it is derived data, rebuilt from the raw files.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        shapes = {}
        for split_name in SPLITS:
            split = records.splits[split_name]
            np.save(tmp / f"{split_name}.images.npy", np.ascontiguousarray(split.images))
            for role, values in split.labels.items():
                np.save(tmp / f"{split_name}.{role}.npy", np.ascontiguousarray(values, dtype=np.int64))
            shapes[split_name] = {"images": list(split.images.shape), "labels": list(split.labels)}
        meta = {
            "format": FORMAT,
            "name": records.name,
            "task": records.task,
            "class_names": records.class_names,
            "params": _normalise(params),
            "splits": shapes,
            "statistics": dataset_statistics(records).to_dict(orient="records"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        (tmp / MARKER).write_text("complete\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_cache(path: str | Path, params: Mapping[str, Any] | None = None, mmap: bool = True) -> Records:
    """Load a cache written by :func:`write_cache` as :class:`Records` (arrays memory-mapped).

    If ``params`` is given, the cache must have been built with exactly those parameters.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CacheError(
            f"{path}: no complete prepared cache ({MARKER} marker missing); "
            "run the download stage: python -m stages.download --dataset NAME --root RAW --out "
            f"{path}"
        )
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise CacheError(f"{path}/meta.json: cache format {meta.get('format')!r}, expected {FORMAT}; rebuild it")
    if params is not None and meta["params"] != _normalise(params):
        raise CacheError(f"{path}: built with params {meta['params']}, requested {_normalise(params)}; rebuild it")
    mode = "r" if mmap else None
    splits = {}
    for split_name, shape in meta["splits"].items():
        images = np.load(path / f"{split_name}.images.npy", mmap_mode=mode)
        if list(images.shape) != shape["images"]:
            raise CacheError(f"{path}/{split_name}.images.npy: shape {images.shape}, meta.json says {shape['images']}")
        labels = {role: np.load(path / f"{split_name}.{role}.npy", mmap_mode=mode) for role in shape["labels"]}
        splits[split_name] = Split(images, labels)
    return Records(meta["name"], meta["task"], splits, meta["class_names"])
