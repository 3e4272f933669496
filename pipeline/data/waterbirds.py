"""Waterbirds (Sagawa et al. 2020, as distributed by WILDS) for worst-group robustness.

On-disk layout is WILDS': ``ROOT/waterbirds_v1.0/metadata.csv`` with columns
``img_id,img_filename,y,split,place,place_filename`` plus the JPEGs at
``ROOT/waterbirds_v1.0/<img_filename>``. The group-DRO release folder
``waterbird_complete95_forest2water2`` has the same content and is accepted too.

Labels: y = 1 for a waterbird; attribute = ``place`` (1 = water background);
group = 2 * y + attribute. Splits are the official ones (split 0/1/2 = train/val/test),
whose validation and test sets are group-balanced within each class.
No md5 is published for this archive, so the loader checks the metadata's structure and
the official split sizes, and decodes every listed JPEG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipeline.data.download import DatasetFileError, RemoteFile, fetch, safe_extract
from pipeline.data.images import decode_images
from pipeline.data.labels import group_labels
from pipeline.data.records import SPLITS, WORST_GROUP, Records, Split

FOLDER = "waterbirds_v1.0"
ALT_FOLDERS = ("waterbird_complete95_forest2water2",)
# The URL of wilds 2.0.0's WaterbirdsDataset._versions_dict["1.0"] (a test checks they agree),
# then the group-DRO authors' tarball of the same images and metadata.
WILDS_URL = "https://worksheets.codalab.org/rest/bundles/0x505056d5cdea4e4eaa0e242cbfe2daa4/contents/blob/"
GROUP_DRO_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
REMOTE = RemoteFile(f"{FOLDER}.tar.gz", (WILDS_URL, GROUP_DRO_URL), None)
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
# Official split sizes (train, val, test) of the 11,788 images.
SPLIT_SIZES = {"train": 4795, "val": 1199, "test": 5794}
CLASS_NAMES = {
    "y": ["landbird", "waterbird"],
    "attribute": ["land", "water"],
    "group": ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"],
}
LAYOUT = """\
ROOT/waterbirds_v1.0/metadata.csv      columns img_id,img_filename,y,split,place,place_filename
ROOT/waterbirds_v1.0/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg
ROOT/waterbirds_v1.0/...               (one folder per CUB class, 11,788 JPEGs in all)
(the WILDS archive extracted into ROOT/waterbirds_v1.0/, or the archive itself at ROOT/waterbirds_v1.0.tar.gz)"""


def find_folder(root: Path) -> Path:
    """The dataset folder under ``root`` that holds metadata.csv (WILDS name first)."""
    for name in (FOLDER, *ALT_FOLDERS):
        if (root / name / "metadata.csv").is_file():
            return root / name
    return root / FOLDER


def download_waterbirds(root: str | Path, timeout: float = 30.0) -> None:
    """Download and safely extract Waterbirds into ``root/waterbirds_v1.0`` unless present.

    metadata.csv is moved into place last, so its presence marks a complete extraction.
    """
    root = Path(root)
    if (find_folder(root) / "metadata.csv").is_file():
        return
    archive = fetch("waterbirds", REMOTE, root, LAYOUT, timeout)
    safe_extract(archive, root / FOLDER, strip_to="metadata.csv")


def read_metadata(folder: Path, split_sizes: Mapping[str, int] | None = SPLIT_SIZES) -> pd.DataFrame:
    """metadata.csv, checked: columns, 0/1 labels, split codes 0/1/2 and (if given) split sizes."""
    path = folder / "metadata.csv"
    if not path.is_file():
        raise DatasetFileError("waterbirds", path, "file is missing", f"a CSV with columns {','.join(COLUMNS)}",
                               LAYOUT, WILDS_URL)
    try:
        meta = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetFileError("waterbirds", path, f"not a readable CSV ({err})", "the WILDS metadata.csv",
                               LAYOUT) from None
    missing = [c for c in COLUMNS if c not in meta.columns]
    if missing:
        raise DatasetFileError("waterbirds", path, f"lacks columns {missing}", f"columns {','.join(COLUMNS)}", LAYOUT)
    for column, allowed in (("y", {0, 1}), ("place", {0, 1}), ("split", {0, 1, 2})):
        values = set(pd.unique(meta[column]))
        if not values <= allowed or meta[column].isna().any():
            raise DatasetFileError("waterbirds", path, f"column {column!r} has values {sorted(map(str, values))}",
                                   f"values in {sorted(allowed)}", LAYOUT)
    if split_sizes is not None:
        sizes = {name: int((meta["split"] == code).sum()) for code, name in enumerate(SPLITS)}
        if sizes != dict(split_sizes):
            raise DatasetFileError("waterbirds", path, f"split sizes are {sizes} (truncated or edited?)",
                                   f"official split sizes {dict(split_sizes)}", LAYOUT)
    return meta


def load_waterbirds(
    root: str | Path,
    resolution: int = 64,
    split_sizes: Mapping[str, int] | None = SPLIT_SIZES,
    workers: int | None = None,
) -> Records:
    """Waterbirds with the official splits; images center-cropped to a square and resized
    to (3, ``resolution``, ``resolution``) uint8. ``split_sizes`` is checked when not None.
    """
    folder = find_folder(Path(root))
    meta = read_metadata(folder, split_sizes)
    splits = {}
    for code, name in enumerate(SPLITS):
        rows = meta[meta["split"] == code]
        paths = [folder / f for f in rows["img_filename"]]
        images = decode_images("waterbirds", paths, resolution, LAYOUT, workers)
        labels = group_labels(rows["y"].to_numpy(), rows["place"].to_numpy())
        splits[name] = Split(images, labels)
    return Records("waterbirds", WORST_GROUP, splits, {k: list(v) for k, v in CLASS_NAMES.items()})

