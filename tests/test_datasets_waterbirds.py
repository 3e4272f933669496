"""Waterbirds read from a fabricated copy of the WILDS layout (metadata.csv + JPEGs)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import waterbirds
from pipeline.data.download import DatasetFileError, DownloadError, RemoteFile
from pipeline.data.fabricate import GROUP_COLOURS, fabricate_waterbirds, tar_gz

GROUPS = {"train": (14, 3, 2, 9), "val": (3, 3, 2, 2), "test": (4, 4, 3, 3)}


@pytest.fixture(scope="module")
def wb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wb")
    fabricate_waterbirds(root, GROUPS)
    return root


def sizes() -> dict[str, int]:
    return {k: sum(v) for k, v in GROUPS.items()}


def assert_colours_match_groups(images: np.ndarray, groups: np.ndarray) -> None:
    """Every image's centre pixel is its group's flat colour (JPEG noise aside)."""
    centre = images[:, :, images.shape[2] // 2, images.shape[3] // 2].astype(int)
    assert np.abs(centre - GROUP_COLOURS[groups].astype(int)).max() <= 12


def test_waterbirds_official_splits_labels_and_groups(wb_root: Path) -> None:
    records = waterbirds.load_waterbirds(wb_root, resolution=24, split_sizes=sizes(), workers=2)
    assert records.name == "waterbirds" and records.task == "worst_group"
    assert records.class_names["y"] == ["landbird", "waterbird"]
    assert records.class_names["attribute"] == ["land", "water"]
    for name, split in records.splits.items():
        y, a, g = split.labels["y"], split.labels["attribute"], split.labels["group"]
        assert np.array_equal(g, 2 * y + a)
        assert np.bincount(g, minlength=4).tolist() == list(GROUPS[name])
        assert split.images.shape == (sum(GROUPS[name]), 3, 24, 24)
        assert_colours_match_groups(split.images, g)


def test_waterbirds_labels_come_from_the_csv_columns(wb_root: Path) -> None:
    import pandas as pd

    meta = pd.read_csv(wb_root / "waterbirds_v1.0" / "metadata.csv")
    records = waterbirds.load_waterbirds(wb_root, resolution=16, split_sizes=sizes())
    for code, name in enumerate(("train", "val", "test")):
        rows = meta[meta["split"] == code]
        assert records.splits[name].labels["y"].tolist() == rows["y"].tolist()  # y = waterbird
        assert records.splits[name].labels["attribute"].tolist() == rows["place"].tolist()  # 1 = water


def test_waterbirds_real_split_sizes_are_the_default(wb_root: Path) -> None:
    assert waterbirds.SPLIT_SIZES == {"train": 4795, "val": 1199, "test": 5794}
    with pytest.raises(DatasetFileError, match="official split sizes"):
        waterbirds.load_waterbirds(wb_root, resolution=16)


def test_waterbirds_truncated_metadata_is_reported(tmp_path: Path) -> None:
    fabricate_waterbirds(tmp_path, GROUPS)
    csv = tmp_path / "waterbirds_v1.0" / "metadata.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(DatasetFileError, match="truncated or edited") as info:
        waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())
    assert str(csv) in str(info.value) and "ROOT/waterbirds_v1.0/metadata.csv" in str(info.value)


def test_waterbirds_bad_columns_and_values_are_reported(tmp_path: Path) -> None:
    fabricate_waterbirds(tmp_path, GROUPS)
    csv = tmp_path / "waterbirds_v1.0" / "metadata.csv"
    text = csv.read_text()
    csv.write_text(text.replace("place,", "background,", 1))
    with pytest.raises(DatasetFileError, match=r"lacks columns \['place'\]"):
        waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())
    lines = text.splitlines()
    fields = lines[1].split(",")
    fields[3] = "7"  # split code
    csv.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(DatasetFileError, match="column 'split' has values"):
        waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())


def test_waterbirds_missing_or_corrupt_image_is_named(tmp_path: Path) -> None:
    fabricate_waterbirds(tmp_path, GROUPS)
    image = next((tmp_path / "waterbirds_v1.0").rglob("*.jpg"))
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(DatasetFileError, match="cannot decode image") as info:
        waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())
    assert str(image) in str(info.value)
    image.unlink()
    with pytest.raises(DatasetFileError, match="image file is missing"):
        waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())


def test_waterbirds_accepts_the_group_dro_folder_name(tmp_path: Path) -> None:
    fabricate_waterbirds(tmp_path, GROUPS, folder="waterbird_complete95_forest2water2")
    records = waterbirds.load_waterbirds(tmp_path, resolution=16, split_sizes=sizes())
    assert len(records.splits["test"]) == sum(GROUPS["test"])


@pytest.mark.parametrize("wrapped", [False, True])
def test_waterbirds_download_extracts_into_the_wilds_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    source = tmp_path / "source"
    fabricate_waterbirds(source, GROUPS)
    # WILDS' archive holds the files at top level; the group-DRO one wraps them in a folder.
    archive = tmp_path / "archive.tar.gz"
    tar_gz(archive, source / "waterbirds_v1.0", "waterbird_complete95_forest2water2" if wrapped else ".")
    monkeypatch.setattr(waterbirds, "REMOTE", RemoteFile("waterbirds_v1.0.tar.gz", (archive.as_uri(),), None))
    root = tmp_path / "root"
    waterbirds.download_waterbirds(root)
    assert (root / "waterbirds_v1.0" / "metadata.csv").is_file()
    records = waterbirds.load_waterbirds(root, resolution=16, split_sizes=sizes())
    assert_colours_match_groups(records.splits["train"].images, records.splits["train"].labels["group"])
    assert not [p for p in root.rglob(".*")]  # no temporary folders left


def test_waterbirds_download_offline_keeps_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/blob/"
    monkeypatch.setattr(waterbirds, "REMOTE", RemoteFile("waterbirds_v1.0.tar.gz", (url,), None))
    partial = tmp_path / "waterbirds_v1.0" / "001.Black_footed_Albatross"
    partial.mkdir(parents=True)
    (partial / "a.jpg").write_bytes(b"placed by hand")
    with pytest.raises(DownloadError) as info:
        waterbirds.download_waterbirds(tmp_path, timeout=5)
    message = str(info.value)
    assert "waterbirds" in message and url in message and "waterbirds_v1.0.tar.gz" in message
    assert "ROOT/waterbirds_v1.0/metadata.csv" in message
    assert (partial / "a.jpg").read_bytes() == b"placed by hand"
    assert not (tmp_path / "waterbirds_v1.0.tar.gz").exists()


def test_waterbirds_url_is_the_wilds_packages() -> None:
    wilds_module = pytest.importorskip("wilds.datasets.waterbirds_dataset")
    assert wilds_module.WaterbirdsDataset._versions_dict["1.0"]["download_url"] == waterbirds.WILDS_URL
