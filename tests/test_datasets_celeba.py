"""CelebA read from a fabricated copy of torchvision's layout (text lists + aligned JPEGs)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import celeba
from pipeline.data.download import DatasetFileError, DownloadError, RemoteFile
from pipeline.data.fabricate import CELEBA_ATTRIBUTES, GROUP_COLOURS, fabricate_celeba
from pipeline.hashing import file_md5

GROUPS = {"train": (10, 8, 5, 1), "val": (3, 3, 2, 1), "test": (3, 3, 2, 1)}


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("celeba")
    return root, fabricate_celeba(root, GROUPS)


def rewrite(root: Path, name: str, lines: list[str]) -> dict[str, str]:
    """Replace a list file and return checksums matching the new content."""
    (root / "celeba" / name).write_text("\n".join(lines) + "\n")
    return {f"celeba/{f}": file_md5(root / "celeba" / f) for f in (celeba.PARTITION, celeba.ATTRIBUTES)}


def test_celeba_official_splits_and_groups(fabricated: tuple[Path, dict[str, str]]) -> None:
    root, checksums = fabricated
    records = celeba.load_celeba(root, resolution=20, checksums=checksums, workers=2)
    assert records.name == "celeba" and records.task == "worst_group"
    assert records.class_names["group"] == ["not blond/female", "not blond/male", "blond/female", "blond/male"]
    for name, split in records.splits.items():
        y, a, g = split.labels["y"], split.labels["attribute"], split.labels["group"]
        assert np.array_equal(g, 2 * y + a)
        assert np.bincount(g, minlength=4).tolist() == list(GROUPS[name])
        assert split.images.shape == (sum(GROUPS[name]), 3, 20, 20)
        # 178x218 faces -> centred 178x178 crop: the black bands above and below are gone.
        inner = split.images[:, :, 1:-1, 1:-1].astype(int)
        assert np.abs(inner - GROUP_COLOURS[g][:, :, None, None].astype(int)).max() <= 12


def test_celeba_labels_are_blond_hair_and_male(fabricated: tuple[Path, dict[str, str]]) -> None:
    root, checksums = fabricated
    # Oracle: parse the attribute list by hand.
    lines = (root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    header = lines[1].split()
    parts = dict(line.split() for line in (root / "celeba" / "list_eval_partition.txt").read_text().splitlines())
    names, partition, attributes = celeba.read_annotations(root, checksums)
    assert names == [line.split()[0] for line in lines[2:]]
    expected = {s: ([], []) for s in ("0", "1", "2")}
    for line in lines[2:]:
        fields = line.split()
        expected[parts[fields[0]]][0].append(int(fields[1 + header.index("Blond_Hair")]) == 1)
        expected[parts[fields[0]]][1].append(int(fields[1 + header.index("Male")]) == 1)
    records = celeba.load_celeba(root, resolution=16, checksums=checksums)
    for code, split in enumerate(("train", "val", "test")):
        assert records.splits[split].labels["y"].tolist() == expected[str(code)][0]
        assert records.splits[split].labels["attribute"].tolist() == expected[str(code)][1]
    assert set(attributes) == set(CELEBA_ATTRIBUTES) and set(np.unique(attributes["Smiling"])) <= {0, 1}


def test_celeba_checks_torchvisions_md5s(fabricated: tuple[Path, dict[str, str]]) -> None:
    root, _ = fabricated
    assert celeba.CELEBA_MD5["celeba/list_eval_partition.txt"] == "d32c9cbf5e040fd4025c592c306e6668"
    with pytest.raises(DatasetFileError) as info:
        celeba.load_celeba(root, resolution=16)
    message = str(info.value)
    assert "celeba" in message and "truncated or corrupted" in message
    assert "ROOT/celeba/img_align_celeba/000001.jpg" in message  # the by-hand layout


def test_celeba_malformed_lists_are_reported(tmp_path: Path) -> None:
    fabricate_celeba(tmp_path, GROUPS)
    attr = (tmp_path / "celeba" / celeba.ATTRIBUTES).read_text().splitlines()
    part = (tmp_path / "celeba" / celeba.PARTITION).read_text().splitlines()
    original = {f"celeba/{f}": file_md5(tmp_path / "celeba" / f) for f in (celeba.PARTITION, celeba.ATTRIBUTES)}

    checksums = rewrite(tmp_path, celeba.ATTRIBUTES, attr[:-2])  # rows missing, count line unchanged
    with pytest.raises(DatasetFileError, match="declared count"):
        celeba.load_celeba(tmp_path, resolution=16, checksums=checksums)

    checksums = rewrite(tmp_path, celeba.ATTRIBUTES, [attr[0], attr[1].replace("Blond_Hair", "Blonde"), *attr[2:]])
    with pytest.raises(DatasetFileError, match="header lacks 'Blond_Hair'"):
        celeba.load_celeba(tmp_path, resolution=16, checksums=checksums)

    rewrite(tmp_path, celeba.ATTRIBUTES, attr)
    checksums = rewrite(tmp_path, celeba.PARTITION, [part[1], part[0], *part[2:]])
    with pytest.raises(DatasetFileError, match="filenames differ"):
        celeba.load_celeba(tmp_path, resolution=16, checksums=checksums)

    checksums = rewrite(tmp_path, celeba.PARTITION, [part[0].split()[0] + " 5", *part[1:]])
    with pytest.raises(DatasetFileError, match="malformed row"):
        celeba.load_celeba(tmp_path, resolution=16, checksums=checksums)

    checksums = rewrite(tmp_path, celeba.PARTITION, part)
    assert checksums == original
    image = tmp_path / "celeba" / "img_align_celeba" / "000003.jpg"
    image.unlink()
    with pytest.raises(DatasetFileError, match="image file is missing") as info:
        celeba.load_celeba(tmp_path, resolution=16, checksums=checksums)
    assert str(image) in str(info.value)


def test_celeba_download_verifies_and_extracts_the_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    checksums = fabricate_celeba(source, GROUPS, as_zip=True)
    remotes = {
        name: RemoteFile(f"celeba/{name}", ((source / "celeba" / name).as_uri(),), checksums[f"celeba/{name}"])
        for name in (celeba.PARTITION, celeba.ATTRIBUTES, celeba.ZIP)
    }
    monkeypatch.setattr(celeba, "REMOTES", remotes)
    root = tmp_path / "root"
    celeba.download_celeba(root)
    assert (root / "celeba" / "img_align_celeba" / "000001.jpg").is_file()
    lists = {k: v for k, v in checksums.items() if k.endswith(".txt")}
    records = celeba.load_celeba(root, resolution=16, checksums=lists)
    assert np.bincount(records.splits["train"].labels["group"]).tolist() == list(GROUPS["train"])
    assert not [p for p in root.rglob(".*")]


def test_celeba_download_offline_explains_manual_placement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remotes = {
        name: RemoteFile(r.path, tuple(u.replace("https://drive.usercontent.google.com", f"http://127.0.0.1:{port}")
                                       .replace("https://drive.google.com", f"http://127.0.0.1:{port}")
                                       for u in r.urls), r.md5)
        for name, r in celeba.REMOTES.items()
    }
    monkeypatch.setattr(celeba, "REMOTES", remotes)
    with pytest.raises(DownloadError) as info:
        celeba.download_celeba(tmp_path, timeout=5)
    message = str(info.value)
    assert "celeba" in message and "list_eval_partition.txt" in message
    assert "d32c9cbf5e040fd4025c592c306e6668" in message and f"http://127.0.0.1:{port}/download?id=" in message
    assert "ROOT/celeba/img_align_celeba.zip" in message and "00d2c5bc6d35e252742224ab0c1e8fcb" in message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_celeba_file_list_is_torchvisions() -> None:
    """Written out in pipeline/data/celeba.py so that the registry does not import torchvision."""
    from torchvision.datasets import CelebA

    assert celeba.FOLDER == CelebA.base_folder
    assert [tuple(f) for f in celeba.FILE_LIST] == [tuple(f) for f in CelebA.file_list]
