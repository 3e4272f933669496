"""File digests: md5 (dataset checksums, fabricated copies, DVC outputs) and sha256 (the prepared
cache, pretrained weights files), the project's only file hashers.

Imports nothing from the project, so any module may use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def _file_digest(path: str | Path, digest: "hashlib._Hash") -> str:
    """Hex ``digest`` of a file's bytes, read in CHUNK-sized pieces into one buffer (memory stays
    flat for huge files)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file's bytes: the digest publishers list for a download and ``dvc.lock``
    records for a file output."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: what the prepared cache records and torchvision's weights
    file names carry."""
    return _file_digest(path, hashlib.sha256())


__all__ = ["file_md5", "file_sha256"]
