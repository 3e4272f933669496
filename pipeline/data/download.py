"""Getting dataset files onto disk safely and verifying them.

- Errors that say which dataset, which file, what was expected, which URL was tried and
  how to place the files by hand (:class:`DatasetFileError`, :class:`DownloadError`).
- :func:`fetch`: download to a temporary name, verify the md5, then rename, so an
  interrupted download never looks complete and nothing already on disk is deleted.
- :func:`safe_extract`: unpack a tar/zip into a temporary folder after checking that no
  member escapes the target, then move the files into place without overwriting any.
- :func:`verify_md5s`: every file of a dataset present with its md5 (before a loader reads it).

Loader helpers that have nothing to do with downloading live elsewhere: splits in
pipeline/data/splits.py, label roles in pipeline/data/labels.py, JPEG decoding in
pipeline/data/images.py.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.request
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import StageError
from pipeline.hashing import file_md5

USER_AGENT = "thanos-bench/0.1 (dataset download)"
CHUNK = 1 << 20


class DatasetError(StageError):
    """Base class of every dataset acquisition/loading error."""


class DatasetFileError(DatasetError):
    """A dataset file is missing, truncated, corrupted or malformed."""

    def __init__(
        self,
        dataset: str,
        path: str | Path,
        problem: str,
        expected: str,
        layout: str = "",
        url: str | None = None,
    ) -> None:
        self.dataset, self.path, self.problem, self.expected = dataset, Path(path), problem, expected
        self.layout, self.url = layout, url
        lines = [f"{dataset}: {path}: {problem}", f"  expected: {expected}"]
        if url:
            lines.append(f"  source URL: {url}")
        if layout:
            lines.append("  place the files by hand in this layout (see docs/datasets.md):")
            lines.extend(f"    {line}" for line in layout.strip("\n").splitlines())
        super().__init__("\n".join(lines))


class DownloadError(DatasetError):
    """Every URL of a file failed; the message lists each URL and its error."""

    def __init__(
        self,
        dataset: str,
        path: str | Path,
        expected: str,
        failures: Sequence[tuple[str, str]],
        layout: str = "",
    ) -> None:
        self.dataset, self.path, self.failures = dataset, Path(path), list(failures)
        lines = [f"{dataset}: could not download {Path(path).name} to {path}", f"  expected: {expected}"]
        lines.extend(f"  tried {url}: {why}" for url, why in failures)
        if layout:
            lines.append("  no network? place the files by hand in this layout (see docs/datasets.md):")
            lines.extend(f"    {line}" for line in layout.strip("\n").splitlines())
        super().__init__("\n".join(lines))


class UnsafeArchiveError(DatasetError):
    """An archive member would be written outside the extraction folder (or is a link/device)."""


# --------------------------------------------------------------------------- checksums


def verify_md5s(dataset: str, root: Path, checksums: Mapping[str, str], layout: str) -> None:
    """Check that every ``root/relative_path`` exists with its md5; raise DatasetFileError if not.

    A truncated or corrupted file fails the md5, so a half-written copy can never load.
    """
    for relative, expected in checksums.items():
        path = root / relative
        if not path.is_file():
            raise DatasetFileError(dataset, path, "file is missing", f"a file with md5 {expected}", layout)
        actual = file_md5(path)
        if actual != expected:
            raise DatasetFileError(
                dataset,
                path,
                f"md5 is {actual} ({path.stat().st_size} bytes): truncated or corrupted",
                f"md5 {expected}; delete the file and download it again",
                layout,
            )


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it is stored under the download root, its URLs and md5."""

    path: str  # relative to the download root, POSIX separators
    urls: tuple[str, ...]
    md5: str | None  # None where the publisher gives none (then the loader checks content)


def fetch(dataset: str, remote: RemoteFile, root: Path, layout: str, timeout: float = 30.0) -> Path:
    """Make ``root/remote.path`` exist with the right md5, downloading it if absent.

    A file already there is kept if its md5 matches and reported (never deleted) if not.
    The download goes to a hidden temporary name in the same folder and is renamed only
    after its md5 checks out; on any failure the temporary file is removed.
    """
    dest = root / remote.path
    expected = f"md5 {remote.md5}" if remote.md5 else "the publisher's file (no md5 published)"
    if dest.exists():
        actual = file_md5(dest) if remote.md5 is not None else None
        if actual != remote.md5:
            raise DatasetFileError(
                dataset, dest, f"exists but its md5 is {actual}", f"{expected}; delete it to download again",
                layout, remote.urls[0],
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for url in remote.urls:
        tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            _download(url, tmp, timeout)
            if remote.md5 is not None:
                actual = file_md5(tmp)
                if actual != remote.md5:
                    failures.append((url, f"downloaded file has md5 {actual} ({tmp.stat().st_size} bytes)"))
                    continue
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
            failures.append((url, f"{type(err).__name__}: {err}"))
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(dataset, dest, expected, failures, layout)


def _download(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; ``timeout`` bounds connecting and each read (fail fast offline)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".part-")[0], disable=None) as bar:
            written = 0
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    # http.client ends a short body silently when reading in chunks; a dropped connection
    # must not pass for a complete file (a file without a published md5 has no other check).
    if total is not None and written != total:
        raise http.client.IncompleteRead(b"", total - written)


# --------------------------------------------------------------------------- extraction


def _check_member(name: str, target: Path, archive: Path) -> None:
    """Reject absolute names and names whose resolved path leaves ``target``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    resolved = (target / pure).resolve()
    if pure.is_absolute() or not resolved.is_relative_to(target.resolve()):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside {target}; refusing to extract"
        )


def _extract_into(archive: Path, dest: Path) -> None:
    """Extract every member of ``archive`` into the (empty) folder ``dest`` after checking each."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, dest, archive)
                # A zip entry with S_IFLNK mode bits is a symlink; unzip tools would honour it.
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink; refusing")
            zf.extractall(dest)
        return
    if not name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")):
        raise DatasetError(f"{archive}: unknown archive type; expected .zip, .tar, .tar.gz/.tgz, .tar.xz, .tar.bz2")
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _check_member(member.name, dest, archive)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: member {member.name!r} is a link or special file; refusing to extract"
                )
        # The "data" filter re-checks paths and strips unsafe modes (PEP 706): defence in depth.
        tf.extractall(dest, filter="data")


def _merge_move(src: Path, dst: Path, last: str | None = None) -> None:
    """Move the tree ``src`` into ``dst``, keeping any file ``dst`` already has.

    The top-level entry named ``last`` moves after everything else, so it can serve as
    the marker that the folder is complete.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir(), key=lambda c: c.name == last):
        target = dst / child.name
        if child.is_dir() and not child.is_symlink():
            if target.exists():
                _merge_move(child, target)
            else:
                os.replace(child, target)
        elif not target.exists():
            os.replace(child, target)


def safe_extract(archive: Path, target: Path, strip_to: str | None = None) -> Path:
    """Extract ``archive`` into ``target`` safely; return the folder the content landed in.

    Members are checked before anything is written; extraction goes to a hidden temporary
    folder inside ``target`` and is moved into place only when complete, without
    overwriting files already there. If ``strip_to`` names a file (e.g. ``metadata.csv``),
    the folder that contains it becomes the content root (archives differ in whether they
    wrap their files in a top folder), and that file is moved into place last.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".extract-{archive.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _extract_into(archive, tmp)
        content = tmp
        if strip_to is not None:
            found = sorted(tmp.rglob(strip_to), key=lambda p: len(p.parts))
            if not found:
                raise DatasetError(f"{archive}: no member named {strip_to!r}; not the expected archive")
            content = found[0].parent
        _merge_move(content, target, last=strip_to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
