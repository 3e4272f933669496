"""Atomic, deterministic output files.

Every stage output is written to a temporary file in the same folder and then
renamed over the final name, so an interrupted stage never leaves a partial
file that looks complete. Array files are written byte-for-byte
deterministically (fixed zip timestamps), so re-running a stage with the same
inputs gives the same hash and DVC skips everything downstream.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import DiskFullError, MissingOutputError, OutputFileError

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest timestamp a zip entry can hold


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: a unique new file, as mkstemp makes, but with the mode open() gives (0666 less
    # the umask) instead of mkstemp's 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on the device while writing it (nothing partial was "
                                "kept); free some space and rerun the stage") from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingOutputError(f"{path}: expected output of an earlier stage; run `dvc repro`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OutputFileError(f"{path}: not valid JSON ({err}); delete it and rerun its stage (`dvc repro`)") from None


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """An ``.npz`` readable by ``np.load``, with identical bytes for identical arrays."""

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                array = np.asarray(arrays[name])
                # (not np.ascontiguousarray: it turns a 0-d array into a 1-d one)
                np.lib.format.write_array(buf, array.copy(order="C"), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), buf.getvalue())

    return atomic_write(path, write)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`save_arrays` (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise MissingOutputError(f"{path}: expected output of an earlier stage; run `dvc repro`") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise OutputFileError(f"{path}: not a readable array file ({type(err).__name__}: {err}); delete it "
                              "and rerun its stage (`dvc repro`)") from None
