"""MNIST from the official idx files (METHOD.md section 5): coarse 0-4 vs 5-9, fine = 10 digits.

The coarse label is the ``coarse_map`` option (default ``halves``: 0-4 -> 0, 5-9 -> 1;
pipeline/data/labels.py).

On-disk layout is torchvision's: ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
with or without ``.gz``. A ``.gz`` is preferred and verified against torchvision's md5 list;
a decompressed file (no published md5) is checked structurally: header, shape, exact size.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.data.download import DatasetFileError, RemoteFile, fetch, verify_md5s
from pipeline.data.labels import HALVES, CoarseMaps
from pipeline.data.options import option_checks
from pipeline.data.records import COARSE_TO_FINE, Records, Split
from pipeline.data.splits import holdout_split

RAW = "MNIST/raw"
# torchvision's MNIST.mirrors and MNIST.resources (tests/test_datasets_mnist.py checks them against
# those lists), written out so that looking a dataset up does not import torchvision.
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
RESOURCES = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)
MNIST_MD5 = {f"{RAW}/{name}": md5 for name, md5 in RESOURCES}
MNIST_REMOTES = tuple(
    RemoteFile(f"{RAW}/{name}", tuple(mirror + name for mirror in MIRRORS), md5) for name, md5 in RESOURCES
)
COARSE_MAPS = CoarseMaps("mnist", n_fine=10, default=HALVES)
MNIST_LAYOUT = """\
ROOT/MNIST/raw/train-images-idx3-ubyte.gz   (or decompressed, without .gz)
ROOT/MNIST/raw/train-labels-idx1-ubyte.gz
ROOT/MNIST/raw/t10k-images-idx3-ubyte.gz
ROOT/MNIST/raw/t10k-labels-idx1-ubyte.gz"""
# idx type code 0x08 = unsigned byte, the only type MNIST uses.
_UBYTE = 0x08


def download_mnist(root: str | Path, timeout: float = 30.0) -> None:
    """Fetch the four gzipped idx files (each mirror in turn) unless present and verified."""
    root = Path(root)
    for remote in MNIST_REMOTES:
        if not (root / remote.path).exists() and (root / remote.path.removesuffix(".gz")).exists():
            continue  # a decompressed copy is there; the loader checks it structurally
        fetch("mnist", remote, root, MNIST_LAYOUT, timeout)


def read_idx(path: Path, ndim: int, dataset: str = "mnist", layout: str = MNIST_LAYOUT) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped if ``path`` ends in .gz) as an array of ``ndim`` dims."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises BadGzipFile (an OSError) or EOFError on truncation
        raise DatasetFileError(dataset, path, f"cannot read ({err})", "a (gzipped) idx file", layout) from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        raise DatasetFileError(
            dataset, path, f"header {raw[:4].hex()} is not an idx header",
            f"magic 0000{_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dims)", layout,
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = header + int(np.prod(shape))
    if len(raw) != size:
        raise DatasetFileError(
            dataset, path, f"{len(raw)} bytes (truncated or padded)", f"{size} bytes for shape {shape}", layout
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read(root: Path, stem: str, ndim: int, checksums: Mapping[str, str]) -> np.ndarray:
    gz, plain = root / RAW / f"{stem}.gz", root / RAW / stem
    if gz.exists():
        key = f"{RAW}/{stem}.gz"
        if key in checksums:
            verify_md5s("mnist", root, {key: checksums[key]}, MNIST_LAYOUT)
        return read_idx(gz, ndim)
    if plain.exists():
        return read_idx(plain, ndim)
    raise DatasetFileError("mnist", gz, "file is missing (with or without .gz)", f"{stem}[.gz] idx file", MNIST_LAYOUT)


def _split(root: Path, prefix: str, checksums: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    images = _read(root, f"{prefix}-images-idx3-ubyte", 3, checksums)
    labels = _read(root, f"{prefix}-labels-idx1-ubyte", 1, checksums).astype(np.int64)
    if len(images) != len(labels) or (len(labels) and labels.max() > 9):
        raise DatasetFileError(
            "mnist", root / RAW / f"{prefix}-labels-idx1-ubyte", f"{len(labels)} labels (max {labels.max(initial=0)}) "
            f"for {len(images)} images", "one digit 0..9 per image", MNIST_LAYOUT,
        )
    return images[:, None], labels


@option_checks(coarse_map=COARSE_MAPS.check)
def load_mnist(
    root: str | Path, val_fraction: float = 0.1, split_seed: int = 0,
    coarse_map: str | Sequence[int] = COARSE_MAPS.default, checksums: Mapping[str, str] = MNIST_MD5,
) -> Records:
    """MNIST coarse-to-fine: images (N, 1, 28, 28); coarse by ``coarse_map`` (default 0-4 -> 0,
    5-9 -> 1); fine = digit.

    Validation is a seeded stratified ``val_fraction`` of the official training set.
    """
    hierarchy = COARSE_MAPS.resolve(coarse_map)
    root = Path(root)
    train_images, train_digits = _split(root, "train", checksums)
    test_images, test_digits = _split(root, "t10k", checksums)

    def labels(digits: np.ndarray) -> dict[str, np.ndarray]:
        return {"coarse": hierarchy(digits), "fine": digits}

    kept, held = holdout_split(train_digits, val_fraction, split_seed)
    splits = {
        "train": Split(train_images[kept], labels(train_digits[kept])),
        "val": Split(train_images[held], labels(train_digits[held])),
        "test": Split(test_images.copy(), labels(test_digits)),
    }
    return Records("mnist", COARSE_TO_FINE, splits,
                   {"coarse": list(hierarchy.names), "fine": [str(d) for d in range(10)]})
