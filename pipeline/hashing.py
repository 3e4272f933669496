"""File digests: the one md5 helper of the project (dataset checksums, fabricated copies, DVC outputs).

Imports nothing from the project, so any module may use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file's bytes, read in 1 MiB chunks: the digest publishers list for a download
    and ``dvc.lock`` records for a file output."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["file_md5"]
