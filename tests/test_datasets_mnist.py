"""MNIST read from fabricated idx files in torchvision's layout (gzipped or not)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import mnist
from pipeline.data.download import DatasetFileError, DownloadError, RemoteFile
from pipeline.data.fabricate import fabricate_mnist
from pipeline.hashing import file_md5


def check_records(records, n_train: int, n_test: int) -> None:
    assert records.name == "mnist" and records.task == "coarse_to_fine"
    assert records.class_names == {"coarse": ["0-4", "5-9"], "fine": [str(d) for d in range(10)]}
    n_val = n_train // 10
    assert {k: len(v) for k, v in records.splits.items()} == {"train": n_train - n_val, "val": n_val, "test": n_test}
    for split in records.splits.values():
        fine = split.labels["fine"]
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == np.uint8
        assert np.array_equal(split.images[:, 0, 0, 0], fine * 20)  # the stamped digit
        assert np.array_equal(split.labels["coarse"], np.where(fine <= 4, 0, 1))
    assert np.bincount(records.splits["val"].labels["fine"]).tolist() == [n_val // 10] * 10


@pytest.mark.parametrize("gz, plain", [(True, False), (False, True), (True, True)])
def test_mnist_loads_gzipped_or_plain_idx(tmp_path: Path, gz: bool, plain: bool) -> None:
    checksums = fabricate_mnist(tmp_path, n_train=200, n_test=50, gz=gz, plain=plain)
    check_records(mnist.load_mnist(tmp_path, checksums=checksums), 200, 50)


def test_mnist_idx_reader_matches_a_byte_level_oracle(tmp_path: Path) -> None:
    fabricate_mnist(tmp_path, n_train=30, n_test=10, gz=False, plain=True)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    images = mnist.read_idx(path, 3)
    assert images.shape == (10, 28, 28)
    # Byte 16 + 784 * n + 28 * r + c holds pixel (r, c) of image n.
    for n, r, c in [(0, 0, 0), (3, 5, 7), (9, 27, 27)]:
        assert images[n, r, c] == raw[16 + 784 * n + 28 * r + c]


def test_mnist_checks_the_real_gz_md5(tmp_path: Path) -> None:
    fabricate_mnist(tmp_path, n_train=20, n_test=10)
    with pytest.raises(DatasetFileError) as info:
        mnist.load_mnist(tmp_path)
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in str(info.value)  # torchvision's train-images md5
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in str(info.value)


def test_mnist_truncated_files_give_clear_errors(tmp_path: Path) -> None:
    fabricate_mnist(tmp_path, n_train=20, n_test=10, gz=False, plain=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetFileError, match=r"truncated or padded") as info:
        mnist.load_mnist(tmp_path)
    assert f"{16 + 20 * 784} bytes for shape (20, 28, 28)" in str(info.value) and str(path) in str(info.value)
    # A truncated gzip stream (with md5s of the truncated files, so only the content check can catch it).
    gz_root = tmp_path / "gz"
    fabricate_mnist(gz_root, n_train=20, n_test=10)
    gz_path = gz_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:-12])
    checksums = {f"MNIST/raw/{p.name}": file_md5(p) for p in (gz_root / "MNIST" / "raw").iterdir()}
    with pytest.raises(DatasetFileError, match="cannot read"):
        mnist.load_mnist(gz_root, checksums=checksums)


def test_mnist_rejects_a_wrong_header_and_missing_files(tmp_path: Path) -> None:
    fabricate_mnist(tmp_path, n_train=20, n_test=10, gz=False, plain=True)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + path.read_bytes()[4:])  # 0x0D = float, not ubyte
    with pytest.raises(DatasetFileError, match="is not an idx header"):
        mnist.load_mnist(tmp_path)
    path.unlink()
    with pytest.raises(DatasetFileError, match=r"missing \(with or without \.gz\)"):
        mnist.load_mnist(tmp_path)


def test_mnist_download_fetches_gz_files_and_reports_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    checksums = fabricate_mnist(source, n_train=100, n_test=20)
    remotes = tuple(
        RemoteFile(rel, ((source / rel).as_uri(),), digest) for rel, digest in checksums.items()
    )
    monkeypatch.setattr(mnist, "MNIST_REMOTES", remotes)
    root = tmp_path / "root"
    mnist.download_mnist(root)
    check_records(mnist.load_mnist(root, checksums=checksums), 100, 20)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirrors = (f"http://127.0.0.1:{port}/a/", f"http://127.0.0.1:{port}/b/")
    offline = tuple(RemoteFile(r.path, tuple(m + Path(r.path).name for m in mirrors), r.md5) for r in remotes)
    monkeypatch.setattr(mnist, "MNIST_REMOTES", offline)
    empty = tmp_path / "empty"
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(empty, timeout=5)
    message = str(info.value)
    assert all(m + "train-images-idx3-ubyte.gz" in message for m in mirrors)  # every mirror tried
    assert "ROOT/MNIST/raw/train-images-idx3-ubyte.gz" in message
    assert [p for p in empty.rglob("*") if p.is_file()] == []


def test_mnist_remotes_are_torchvisions() -> None:
    from torchvision.datasets import MNIST

    assert [r.md5 for r in mnist.MNIST_REMOTES] == [md5 for _, md5 in MNIST.resources]
    assert [list(r) for r in mnist.RESOURCES] == [list(r) for r in MNIST.resources]
    assert list(mnist.MIRRORS) == list(MNIST.mirrors)
    assert all(len(r.urls) == len(MNIST.mirrors) for r in mnist.MNIST_REMOTES)
