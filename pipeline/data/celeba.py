"""CelebA for worst-group robustness: y = Blond_Hair, attribute = Male (METHOD.md section 5).

On-disk layout is torchvision's: ``ROOT/celeba/img_align_celeba/*.jpg`` (or the official
``img_align_celeba.zip`` beside it, extracted safely on download), ``list_eval_partition.txt``
and ``list_attr_celeba.txt``. File ids and md5s are torchvision's ``CelebA.file_list``;
the two text files are always md5-checked, and every listed JPEG is decoded.
Splits are the official partition (0/1/2 = train/val/test); group = 2 * y + attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.data.download import DatasetFileError, RemoteFile, fetch, safe_extract, verify_md5s
from pipeline.data.images import decode_images
from pipeline.data.labels import group_labels
from pipeline.data.records import SPLITS, WORST_GROUP, Records, Split

FOLDER = "celeba"  # torchvision's CelebA.base_folder
IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
ATTRIBUTES = "list_attr_celeba.txt"
ZIP = "img_align_celeba.zip"
TARGET, SPURIOUS = "Blond_Hair", "Male"
# torchvision's CelebA.file_list (Google Drive id, md5, name; tests/test_datasets_celeba.py checks
# it against that list), written out so that looking a dataset up does not import torchvision.
FILE_LIST = (
    ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb", "img_align_celeba.zip"),
    ("0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c", "list_attr_celeba.txt"),
    ("1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS", "32bd1bd63d3c78cd57e08160ec5ed1e2", "identity_CelebA.txt"),
    ("0B7EVK8r0v71pbThiMVRxWXZ4dU0", "00566efa6fedff7a56946cd1c10f1c16", "list_bbox_celeba.txt"),
    ("0B7EVK8r0v71pd0FJY3Blby1HUTQ", "cc24ecafdb5b50baae59b03474781f8c", "list_landmarks_align_celeba.txt"),
    ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668", "list_eval_partition.txt"),
)
_FILES = {name: (file_id, md5) for file_id, md5, name in FILE_LIST}
CELEBA_MD5 = {f"{FOLDER}/{name}": _FILES[name][1] for name in (PARTITION, ATTRIBUTES)}


def _drive_urls(file_id: str) -> tuple[str, ...]:
    # confirm=t skips Google Drive's "cannot scan for viruses" page for large files.
    return (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        f"https://drive.google.com/uc?export=download&id={file_id}",
    )


REMOTES = {name: RemoteFile(f"{FOLDER}/{name}", _drive_urls(_FILES[name][0]), _FILES[name][1])
           for name in (PARTITION, ATTRIBUTES, ZIP)}
CLASS_NAMES = {
    "y": ["not blond", "blond"],
    "attribute": ["female", "male"],
    "group": ["not blond/female", "not blond/male", "blond/female", "blond/male"],
}
LAYOUT = f"""\
ROOT/celeba/{PARTITION}    md5 {_FILES[PARTITION][1]}
ROOT/celeba/{ATTRIBUTES}     md5 {_FILES[ATTRIBUTES][1]}
ROOT/celeba/{IMAGES}/000001.jpg ... 202599.jpg
  (or ROOT/celeba/{ZIP}, md5 {_FILES[ZIP][1]}, which is extracted on download)
Official files: the CelebA "Align&Cropped Images" and "Anno"/"Eval" folders (Google Drive);
Drive often answers scripted downloads with a quota page: then download them in a browser."""


def download_celeba(root: str | Path, timeout: float = 30.0) -> None:
    """Fetch the two annotation lists and the aligned-image zip from Google Drive unless present.

    Google Drive often refuses scripted downloads (quota, HTML interstitial): the md5 check
    then fails and the error explains how to place the official files by hand.
    """
    root = Path(root)
    for name in (PARTITION, ATTRIBUTES):
        fetch("celeba", REMOTES[name], root, LAYOUT, timeout)
    images = root / FOLDER / IMAGES
    if images.is_dir() and any(images.iterdir()):
        return
    archive = fetch("celeba", REMOTES[ZIP], root, LAYOUT, timeout)
    safe_extract(archive, root / FOLDER)


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError("celeba", path, f"cannot read ({err})", "the official text list", LAYOUT) from None


def read_annotations(root: Path, checksums: Mapping[str, str] = CELEBA_MD5) -> tuple[list[str], np.ndarray, dict]:
    """(filenames, partition (N,) int64, {attribute name: (N,) int64 in {0, 1}}) of every image.

    Both lists are md5-checked, then parsed with checks that their rows agree.
    """
    verify_md5s("celeba", root, checksums, LAYOUT)
    part_path, attr_path = root / FOLDER / PARTITION, root / FOLDER / ATTRIBUTES
    part_rows = _lines(part_path)
    if any(len(r) != 2 or r[1] not in ("0", "1", "2") for r in part_rows):
        bad = next(r for r in part_rows if len(r) != 2 or r[1] not in ("0", "1", "2"))
        raise DatasetFileError("celeba", part_path, f"malformed row {bad}", "'<file>.jpg <0|1|2>' per line", LAYOUT)
    attr_rows = _lines(attr_path)
    if len(attr_rows) < 2 or not attr_rows[0][0].isdigit():
        raise DatasetFileError("celeba", attr_path, "no image count on the first line",
                               "a count line, a header of attribute names, then one row per image", LAYOUT)
    count, header, rows = int(attr_rows[0][0]), attr_rows[1], attr_rows[2:]
    for name in (TARGET, SPURIOUS):
        if name not in header:
            raise DatasetFileError(
                "celeba", attr_path, f"header lacks {name!r}", "the 40 CelebA attribute names", LAYOUT
            )
    if count != len(rows) or any(len(r) != len(header) + 1 for r in rows):
        raise DatasetFileError("celeba", attr_path, f"{len(rows)} rows for a declared count of {count}, or ragged rows",
                               f"{count} rows of a filename and {len(header)} values", LAYOUT)
    names = [r[0] for r in rows]
    if names != [r[0] for r in part_rows]:
        raise DatasetFileError("celeba", attr_path, f"filenames differ from {PARTITION}",
                               "the same images in the same order in both lists", LAYOUT)
    values = np.array([r[1:] for r in rows], dtype=np.int64)
    if not np.isin(values, (-1, 1)).all():
        raise DatasetFileError("celeba", attr_path, "attribute values outside {-1, 1}", "-1 or 1", LAYOUT)
    attributes = {h: (values[:, j] + 1) // 2 for j, h in enumerate(header)}  # {-1, 1} -> {0, 1}
    partition = np.array([int(r[1]) for r in part_rows], dtype=np.int64)
    return names, partition, attributes


def load_celeba(
    root: str | Path,
    resolution: int = 64,
    checksums: Mapping[str, str] = CELEBA_MD5,
    workers: int | None = None,
) -> Records:
    """CelebA with the official splits; the 178x218 aligned faces are center-cropped to
    178x178 and resized to (3, ``resolution``, ``resolution``) uint8.
    """
    root = Path(root)
    names, partition, attributes = read_annotations(root, checksums)
    labels = group_labels(attributes[TARGET], attributes[SPURIOUS])
    splits = {}
    for code, split in enumerate(SPLITS):
        index = np.flatnonzero(partition == code)
        paths = [root / FOLDER / IMAGES / names[i] for i in index]
        images = decode_images("celeba", paths, resolution, LAYOUT, workers)
        splits[split] = Split(images, {k: v[index] for k, v in labels.items()})
    return Records("celeba", WORST_GROUP, splits, {k: list(v) for k, v in CLASS_NAMES.items()})
