"""File digests: md5 (dataset checksums, fabricated copies, DVC outputs) and sha256 (the prepared
cache, pretrained weights files), the project's only file hashers.

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


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks into one buffer (memory stays flat for
    huge files): what the prepared cache records and torchvision's weights file names carry."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


__all__ = ["file_md5", "file_sha256"]
