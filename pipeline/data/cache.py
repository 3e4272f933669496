"""The prepared cache: a dataset's :class:`Records` as plain ``.npy`` files, written atomically.

Layout of a cache folder (the DVC out of the download stage)::

    OUT/meta.json              name, task, class_names, build parameters, shapes, statistics,
                               and the size and sha256 of every .npy file ("files")
    OUT/<split>.images.npy     (N, C, H, W) uint8
    OUT/<split>.<role>.npy     (N,) int64, one per label role
    OUT/COMPLETE               written last: the sha256 of meta.json

Everything is written into a hidden sibling folder and renamed onto ``OUT`` only when
complete, so a crash never leaves a folder that looks finished. The same records and
parameters give byte-identical files (meta.json holds no timestamp).

The cache is trusted by its content, not by its marker alone:

* :func:`is_cached` (the download stage's "nothing to do" check) verifies every file's size
  and sha256 against meta.json, and meta.json's against COMPLETE; a damaged cache is rebuilt.
* :func:`read_cache` (every later stage; it memory-maps, so it stays instant) verifies
  meta.json's hash and every file's size, and raises :class:`CacheError` naming the file and
  the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.data.records import SPLITS, Records, Split
from pipeline.errors import StageError
from pipeline.hashing import file_sha256

if TYPE_CHECKING:
    import pandas as pd

# 2: meta.json records every file's size and sha256 and COMPLETE the sha256 of meta.json.
FORMAT = 2
MARKER = "COMPLETE"
META = "meta.json"
HASH = "sha256"


class CacheError(StageError):
    """A prepared cache is missing, incomplete, damaged or built with other parameters.

    The message names the file and the command that rebuilds the cache.
    """


class CacheProblem(NamedTuple):
    """Why a cache folder cannot be used: the file at fault and what is wrong with it."""

    file: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def rebuild_hint(dataset: str) -> str:
    """The commands that rebuild the prepared cache of ``dataset`` (``data/prepared/<dataset>``)."""
    return (f"rebuild it with `python -m stages.download --dataset {dataset}` or `dvc repro download@{dataset}` "
            f"(download_robust@{dataset} for a suite.robustness dataset)")


def _normalise(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they round-trip through JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(params), default=str))


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, HASH: file_sha256(path)}


def _marker_text(meta_bytes: bytes) -> str:
    return f"{META} {HASH} {hashlib.sha256(meta_bytes).hexdigest()}\n"


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


def _read_meta(path: Path) -> tuple[dict[str, Any] | None, bytes, CacheProblem | None]:
    """(meta.json parsed, its bytes, None) or (None, b"", the problem)."""
    meta_path = path / META
    try:
        text = meta_path.read_bytes()
    except FileNotFoundError:
        return None, b"", CacheProblem(meta_path, "missing")
    except OSError as err:
        return None, b"", CacheProblem(meta_path, f"unreadable ({err.strerror or err})")
    try:
        meta = json.loads(text)
    except ValueError:
        return None, text, CacheProblem(meta_path, "not valid JSON (damaged)")
    if not isinstance(meta, dict):
        return None, text, CacheProblem(meta_path, "not a JSON object (damaged)")
    return meta, text, None


def cache_params(path: str | Path) -> dict[str, Any] | None:
    """The build parameters of a complete cache at ``path``, or None if there is none (or its
    meta.json is unreadable: :func:`read_cache` then says why)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return None
    meta, _, problem = _read_meta(path)
    if problem is not None or not isinstance(meta.get("params"), dict):
        return None
    return meta["params"]


def _expected_files(meta: Mapping[str, Any]) -> list[str]:
    return [name for split_name, shape in meta["splits"].items()
            for name in (f"{split_name}.images.npy", *(f"{split_name}.{role}.npy" for role in shape["labels"]))]


def cache_problem(path: str | Path, params: Mapping[str, Any] | None = None, *,
                  content: bool = True) -> CacheProblem | None:
    """What makes the cache at ``path`` unusable, or None if it is complete and intact.

    Checks, in order: the folder and its COMPLETE marker; meta.json (readable, this
    :data:`FORMAT`, the sha256 COMPLETE records for it); the build ``params`` (if given); every
    file meta.json lists (present, of the recorded size). With ``content`` every file is also
    hashed and compared with its recorded sha256 (reads the whole cache).
    """
    path = Path(path)
    if not path.is_dir():
        return CacheProblem(path, "no prepared cache (folder missing)")
    marker = path / MARKER
    if not marker.is_file():
        return CacheProblem(marker, f"missing: no complete prepared cache (the {MARKER} marker is written last)")
    meta, meta_bytes, problem = _read_meta(path)
    if problem is not None:
        return problem
    meta_path = path / META
    fmt = meta.get("format")
    if fmt != FORMAT:
        age = "an older" if isinstance(fmt, int) and fmt < FORMAT else "another"
        return CacheProblem(meta_path, f"cache format {fmt!r}, expected {FORMAT}: built by {age} version of "
                                       "this harness")
    try:
        recorded = marker.read_text()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if recorded != _marker_text(meta_bytes):
        return CacheProblem(meta_path, f"does not match the {HASH} recorded in {MARKER} (damaged)")
    absent = [key for key in ("name", "task", "class_names", "params", "splits", "files") if key not in meta]
    if absent:
        return CacheProblem(meta_path, f"lacks {', '.join(absent)} (damaged)")
    try:
        names = _expected_files(meta)
        files = {name: dict(record) for name, record in meta["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return CacheProblem(meta_path, f"malformed ({type(err).__name__}: {err}) (damaged)")
    if params is not None and meta["params"] != _normalise(params):
        return CacheProblem(path, f"built with params {meta['params']}, requested {_normalise(params)}")
    unlisted = [name for name in names if name not in files]
    if unlisted:
        return CacheProblem(meta_path, f"records no size for {unlisted[0]} (damaged)")
    for name in names:
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            return CacheProblem(path / name, "missing")
        if size != files[name].get("bytes"):
            return CacheProblem(path / name, f"{size} bytes, meta.json records {files[name].get('bytes')} "
                                             "(truncated or damaged)")
    if content:
        for name in names:
            if file_sha256(path / name) != files[name].get(HASH):
                return CacheProblem(path / name, f"content does not match the {HASH} recorded in meta.json "
                                                 "(damaged)")
    return None


def is_cached(path: str | Path, params: Mapping[str, Any]) -> bool:
    """Whether ``path`` holds a complete, intact cache built with exactly ``params`` (every
    file's size and sha256 verified)."""
    return cache_problem(path, params, content=True) is None


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
        names = []
        for split_name in SPLITS:
            split = records.splits[split_name]
            names.append(f"{split_name}.images.npy")
            np.save(tmp / names[-1], np.ascontiguousarray(split.images))
            for role, values in split.labels.items():
                names.append(f"{split_name}.{role}.npy")
                np.save(tmp / names[-1], np.ascontiguousarray(values, dtype=np.int64))
            shapes[split_name] = {"images": list(split.images.shape), "labels": list(split.labels)}
        meta = {
            "format": FORMAT,
            "name": records.name,
            "task": records.task,
            "class_names": records.class_names,
            "params": _normalise(params),
            "splits": shapes,
            "files": {name: _file_record(tmp / name) for name in names},  # hashed as written on disk
            "statistics": dataset_statistics(records).to_dict(orient="records"),
        }
        meta_bytes = json.dumps(meta, indent=1).encode()
        (tmp / META).write_bytes(meta_bytes)
        (tmp / MARKER).write_text(_marker_text(meta_bytes))
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


def read_cache(path: str | Path, params: Mapping[str, Any] | None = None, mmap: bool = True, *,
               dataset: str | None = None) -> Records:
    """Load a cache written by :func:`write_cache` as :class:`Records` (arrays memory-mapped).

    If ``params`` is given, the cache must have been built with exactly those parameters.
    Verifies meta.json's sha256 and every file's size (not the files' hashes: that would read
    the whole cache); any problem raises :class:`CacheError` naming the file and the command
    that rebuilds the cache of ``dataset`` (default: the folder's name, as in
    ``data/prepared/<dataset>``).
    """
    path = Path(path)
    hint = rebuild_hint(dataset or path.name)
    problem = cache_problem(path, params, content=False)
    if problem is not None:
        raise CacheError(f"{problem}; {hint}")
    meta = json.loads((path / META).read_bytes())
    mode = "r" if mmap else None
    splits = {}
    for split_name, shape in meta["splits"].items():
        arrays = {}
        for key in ("images", *shape["labels"]):
            file = path / f"{split_name}.{key}.npy"
            try:
                arrays[key] = np.load(file, mmap_mode=mode, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise CacheError(f"{file}: not a readable .npy array ({err}); {hint}") from None
        images = arrays.pop("images")
        if list(images.shape) != shape["images"]:
            raise CacheError(f"{path}/{split_name}.images.npy: shape {images.shape}, meta.json says "
                             f"{shape['images']}; {hint}")
        try:
            splits[split_name] = Split(images, arrays)
        except ValueError as err:
            raise CacheError(f"{path}/{split_name}.*.npy: {err}; {hint}") from None
    try:
        return Records(meta["name"], meta["task"], splits, meta["class_names"])
    except ValueError as err:
        raise CacheError(f"{path / META}: {err}; {hint}") from None
