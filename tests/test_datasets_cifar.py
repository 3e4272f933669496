"""CIFAR-10, CIFAR-100 and CIFAR-100-U read from fabricated copies of the official pickles."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import cifar
from pipeline.data.download import DatasetFileError, DownloadError, RemoteFile
from pipeline.data.fabricate import CIFAR10_NAMES, cifar100_hierarchy, fabricate_cifar10, fabricate_cifar100, tar_gz
from pipeline.hashing import file_md5

SMALL_COUNTS = (40, 20, 10, 10, 10)  # the real (500, 250, 100, 50, 50) scaled to 40 images per class


@pytest.fixture(scope="module")
def c10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("c10")
    return root, fabricate_cifar10(root, train_per_class=10, test_per_class=4)


@pytest.fixture(scope="module")
def c100(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("c100")
    return root, fabricate_cifar100(root, train_per_class=40, test_per_class=2)


def stamped_fine(images: np.ndarray) -> np.ndarray:
    """The fine label fabricate stamped into channel 0, pixel (0, 0)."""
    return images[:, 0, 0, 0].astype(np.int64)


def test_cifar10_labels_splits_and_alignment(c10: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c10
    records = cifar.load_cifar10(root, val_fraction=0.1, split_seed=0, checksums=checksums)
    assert records.name == "cifar10" and records.task == "coarse_to_fine"
    assert records.class_names == {"coarse": ["vehicle", "animal"], "fine": CIFAR10_NAMES}
    assert {k: len(v) for k, v in records.splits.items()} == {"train": 90, "val": 10, "test": 40}
    vehicles = {CIFAR10_NAMES.index(n) for n in ("airplane", "automobile", "ship", "truck")}
    for split in records.splits.values():
        fine, coarse = split.labels["fine"], split.labels["coarse"]
        assert np.array_equal(stamped_fine(split.images), fine)  # images stay with their labels
        assert coarse.tolist() == [0 if f in vehicles else 1 for f in fine.tolist()]
        assert split.images.shape[1:] == (3, 32, 32) and split.images.dtype == np.uint8
    assert np.bincount(records.splits["val"].labels["fine"]).tolist() == [1] * 10  # stratified


def test_cifar10_images_are_decoded_in_nchw_order(c10: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c10
    import pickle

    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    records = cifar.load_cifar10(root, checksums=checksums)
    row = entry["data"][5]
    # Row layout: 1024 red values (32 rows of 32), then green, then blue.
    expected = np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)])
    assert np.array_equal(records.splits["test"].images[5], expected)


def test_cifar10_validation_is_seeded(c10: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c10
    a = cifar.load_cifar10(root, split_seed=1, checksums=checksums).splits["val"].images
    b = cifar.load_cifar10(root, split_seed=1, checksums=checksums).splits["val"].images
    c = cifar.load_cifar10(root, split_seed=2, checksums=checksums).splits["val"].images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cifar10_checks_the_real_torchvision_md5s(c10: tuple[Path, dict[str, str]]) -> None:
    root, _ = c10
    assert cifar.CIFAR10_MD5["cifar-10-batches-py/data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    with pytest.raises(DatasetFileError) as info:
        cifar.load_cifar10(root)  # fabricated files are not the published ones
    message = str(info.value)
    assert "cifar10" in message and "c99cafc152244af753f735de768cd75f" in message
    assert "cifar-10-batches-py/data_batch_1" in message and "place the files by hand" in message


def test_cifar10_truncated_or_missing_batch_gives_a_clear_error(tmp_path: Path) -> None:
    checksums = fabricate_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DatasetFileError, match="truncated or corrupted") as info:
        cifar.load_cifar10(tmp_path, checksums=checksums)
    assert str(batch) in str(info.value) and checksums["cifar-10-batches-py/data_batch_3"] in str(info.value)
    batch.unlink()
    with pytest.raises(DatasetFileError, match="file is missing"):
        cifar.load_cifar10(tmp_path, checksums=checksums)


def test_cifar10_malformed_pickle_content_is_reported(tmp_path: Path) -> None:
    import pickle

    checksums = fabricate_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, f, protocol=2)

    checksums["cifar-10-batches-py/test_batch"] = file_md5(path)
    with pytest.raises(DatasetFileError, match="2 'labels' for 3 images"):
        cifar.load_cifar10(tmp_path, checksums=checksums)


def test_cifar100_hierarchy_comes_from_the_pickles(c100: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c100
    records = cifar.load_cifar100(root, checksums=checksums)
    hierarchy = cifar100_hierarchy()
    assert {k: len(v) for k, v in records.splits.items()} == {"train": 3600, "val": 400, "test": 200}
    for split in records.splits.values():
        assert np.array_equal(split.labels["coarse"], hierarchy[split.labels["fine"]])
        assert np.array_equal(stamped_fine(split.images), split.labels["fine"])
    assert len(records.class_names["fine"]) == 100 and len(records.class_names["coarse"]) == 20
    assert records.class_names["coarse"][3] == "coarse03"


def test_cifar100u_counts_follow_the_documented_seeded_assignment() -> None:
    hierarchy = cifar100_hierarchy()
    fine = np.arange(100)
    assignment = cifar.cifar100u_counts(fine, hierarchy[fine], cifar.CIFAR100U_COUNTS, seed=7)
    # Oracle written from the docstring: per superclass, permute its sorted fine classes.
    rng = np.random.default_rng(7)
    for superclass in range(20):
        members = sorted(np.flatnonzero(hierarchy == superclass).tolist())
        order = [members[i] for i in rng.permutation(5)]
        assert [assignment[m] for m in order] == [500, 250, 100, 50, 50]
    assert assignment != cifar.cifar100u_counts(fine, hierarchy[fine], cifar.CIFAR100U_COUNTS, seed=8)
    assert cifar.CIFAR100U_COUNTS == (500, 250, 100, 50, 50)


def test_cifar100u_subsample_counts_and_splits(c100: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c100
    records = cifar.load_cifar100u(root, counts=SMALL_COUNTS, subsample_seed=3, checksums=checksums)
    train, val, test = (records.splits[s] for s in ("train", "val", "test"))
    pool_fine = np.concatenate([train.labels["fine"], val.labels["fine"]])
    pool_coarse = np.concatenate([train.labels["coarse"], val.labels["coarse"]])
    per_class = np.bincount(pool_fine, minlength=100)
    expected = cifar.cifar100u_counts(np.arange(100), cifar100_hierarchy(), SMALL_COUNTS, seed=3)
    assert per_class.tolist() == [expected[f] for f in range(100)]
    for superclass in range(20):
        counts = sorted(per_class[np.unique(pool_fine[pool_coarse == superclass])], reverse=True)
        assert counts == list(SMALL_COUNTS)
    assert len(train) + len(val) == 20 * sum(SMALL_COUNTS)
    # Validation is a stratified 10% of the pool; test is CIFAR-100's test set, untouched.
    assert np.bincount(val.labels["fine"], minlength=100).tolist() == [expected[f] // 10 for f in range(100)]
    full = cifar.load_cifar100(root, checksums=checksums)
    assert np.array_equal(test.images, full.splits["test"].images)
    # No image is used twice.
    stamps = np.concatenate([train.images, val.images]).reshape(len(pool_fine), -1)
    assert len(np.unique(stamps, axis=0)) == len(pool_fine)


def test_cifar100u_rejects_counts_larger_than_a_class(c100: tuple[Path, dict[str, str]]) -> None:
    root, checksums = c100
    with pytest.raises(ValueError, match=r"has 40 training images; counts \(500, 250, 100, 50, 50\) ask for (500|250)"):
        cifar.load_cifar100u(root, checksums=checksums)  # real counts need 500 images per class


def test_cifar_download_extracts_a_verified_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    checksums = fabricate_cifar10(source, train_per_class=10, test_per_class=1)
    archive_md5 = tar_gz(tmp_path / "cifar-10-python.tar.gz", source / "cifar-10-batches-py", "cifar-10-batches-py")
    remote = RemoteFile("cifar-10-python.tar.gz", ((tmp_path / "cifar-10-python.tar.gz").as_uri(),), archive_md5)
    monkeypatch.setattr(cifar, "CIFAR10_REMOTE", remote)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", checksums)
    root = tmp_path / "root"
    cifar.download_cifar10(root)
    records = cifar.load_cifar10(root, checksums=checksums)
    assert len(records.splits["test"]) == 10
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar_download_offline_names_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/cifar-100-python.tar.gz"
    remote = RemoteFile("cifar-100-python.tar.gz", (url,), "eb9058c3a382ffc7106e4002c42a8d85")
    monkeypatch.setattr(cifar, "CIFAR100_REMOTE", remote)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"placed earlier")
    with pytest.raises(DownloadError) as info:
        cifar.download_cifar100(tmp_path, timeout=5)
    message = str(info.value)
    for part in ("cifar100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", url,
                 "ROOT/cifar-100-python/train, test, meta"):
        assert part in message
    assert (tmp_path / "cifar-100-python" / "meta").read_bytes() == b"placed earlier"  # kept
    assert Counter(p.name for p in tmp_path.iterdir()) == Counter(["cifar-100-python"])


@pytest.mark.parametrize("ours, theirs", [("CIFAR10", "CIFAR10"), ("CIFAR100", "CIFAR100")])
def test_cifar_release_facts_are_torchvisions(ours: str, theirs: str) -> None:
    """The URL, archive md5, folder and per-file md5s written out in pipeline/data/cifar.py are
    torchvision's own lists (they are copied so that the registry does not import torchvision)."""
    import torchvision.datasets

    mine, tv = getattr(cifar, ours), getattr(torchvision.datasets, theirs)
    assert (mine.base_folder, mine.url, mine.filename, mine.tgz_md5) == (tv.base_folder, tv.url, tv.filename, tv.tgz_md5)
    assert [list(f) for f in mine.train_list] == [list(f) for f in tv.train_list]
    assert [list(f) for f in mine.test_list] == [list(f) for f in tv.test_list]
    assert mine.meta == (tv.meta["filename"], tv.meta["md5"])
