"""Download, verification and extraction helpers (atomic fetch, offline errors, safe extraction) and the
loader helpers of pipeline/data/{splits,labels,images}.py: stratified splits, group labels, image decoding."""

from __future__ import annotations

import http.server
import io
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.download import (
    DatasetFileError,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    fetch,
    safe_extract,
    verify_md5s,
)
from pipeline.data.fabricate import GROUP_COLOURS, write_jpeg
from pipeline.data.images import decode_images
from pipeline.data.labels import group_labels
from pipeline.data.splits import holdout_split, stratified_split
from pipeline.hashing import file_md5

LAYOUT = "ROOT/thing/file.bin"


def closed_port_url(name: str = "file.bin") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


@pytest.fixture
def short_server() -> Iterator[str]:
    """A local HTTP server that promises 1000 bytes and sends 10 (a dropped connection)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/file.bin"
    server.shutdown()
    server.server_close()


def hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


# --------------------------------------------------------------------------- fetch


def test_fetch_copies_a_verified_file_atomically(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload" * 1000)
    remote = RemoteFile("sub/file.bin", (closed_port_url(), source.as_uri()), file_md5(source))
    root = tmp_path / "root"
    path = fetch("toy", remote, root, LAYOUT, timeout=5)
    assert path == root / "sub" / "file.bin"
    assert path.read_bytes() == source.read_bytes()  # the second URL served it after the first failed
    assert hidden(root) == []


def test_fetch_offline_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    url = closed_port_url("cifar-10-python.tar.gz")
    remote = RemoteFile("cifar-10-python.tar.gz", (url,), "c58f30108f718f92721af3b95e74349a")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch("cifar10", remote, tmp_path, "ROOT/cifar-10-batches-py/data_batch_1 ...", timeout=5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    for part in ("cifar10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", url,
                 "ROOT/cifar-10-batches-py/data_batch_1", "place the files by hand"):
        assert part in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_fetch_rejects_a_wrong_md5_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"not what was published")
    root = tmp_path / "root"
    remote = RemoteFile("file.bin", (source.as_uri(),), "0" * 32)
    with pytest.raises(DownloadError, match=f"downloaded file has md5 {file_md5(source)}"):
        fetch("toy", remote, root, LAYOUT)
    assert list(root.iterdir()) == []


def test_fetch_cleans_up_a_dropped_connection(tmp_path: Path, short_server: str) -> None:
    remote = RemoteFile("file.bin", (short_server,), None)
    with pytest.raises(DownloadError, match="IncompleteRead"):
        fetch("toy", remote, tmp_path, LAYOUT, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_fetch_keeps_an_existing_file_and_reports_a_bad_one(tmp_path: Path) -> None:
    existing = tmp_path / "file.bin"
    existing.write_bytes(b"mine")
    good = RemoteFile("file.bin", (closed_port_url(),), file_md5(existing))
    assert fetch("toy", good, tmp_path, LAYOUT) == existing  # no network needed
    bad = RemoteFile("file.bin", (closed_port_url(),), "1" * 32)
    with pytest.raises(DatasetFileError, match="exists but its md5 is"):
        fetch("toy", bad, tmp_path, LAYOUT)
    assert existing.read_bytes() == b"mine"  # never deleted


def test_verify_md5s_names_missing_and_truncated_files(tmp_path: Path) -> None:
    path = tmp_path / "a" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(b"x" * 100)
    checksums = {"a/data.bin": file_md5(path)}
    verify_md5s("toy", tmp_path, checksums, LAYOUT)
    path.write_bytes(b"x" * 50)
    with pytest.raises(DatasetFileError) as info:
        verify_md5s("toy", tmp_path, checksums, LAYOUT)
    assert "truncated or corrupted" in str(info.value) and checksums["a/data.bin"] in str(info.value)
    assert LAYOUT in str(info.value) and str(path) in str(info.value)
    path.unlink()
    with pytest.raises(DatasetFileError, match="file is missing"):
        verify_md5s("toy", tmp_path, checksums, LAYOUT)


# --------------------------------------------------------------------------- extraction


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/absolute-escape.txt", "ok/../../escape.txt"])
def test_safe_extract_rejects_a_path_escaping_tar_member(tmp_path: Path, member: str) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", {"fine.txt": b"ok", member: b"pwned"})
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert list(target.iterdir()) == []  # nothing extracted, temp folder removed


def test_safe_extract_rejects_links_and_escaping_zip_members(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "link.tar.gz", {"a.txt": b"a"}, links={"b": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(archive, tmp_path / "t1")
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../zip-escape.txt", b"pwned")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(zpath, tmp_path / "t2")
    assert not (tmp_path / "zip-escape.txt").exists()


def test_safe_extract_merges_without_overwriting_and_strips_a_top_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"top/meta.csv": b"new", "top/img/1.jpg": b"one", "top/img/2.jpg": b"two"})
    target = tmp_path / "target"
    (target / "img").mkdir(parents=True)
    (target / "img" / "1.jpg").write_bytes(b"placed by hand")
    safe_extract(archive, target, strip_to="meta.csv")
    assert (target / "meta.csv").read_bytes() == b"new"
    assert (target / "img" / "1.jpg").read_bytes() == b"placed by hand"
    assert (target / "img" / "2.jpg").read_bytes() == b"two"
    assert hidden(target) == []


# --------------------------------------------------------------------------- splits and labels


def test_holdout_split_is_stratified_seeded_and_a_partition() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 30, 10, 10])
    kept, held = holdout_split(labels, 0.1, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    assert np.array_equal(np.bincount(labels[held]), [10, 5, 3, 1, 1])  # 10% of every class
    again_kept, again_held = holdout_split(labels, 0.1, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, holdout_split(labels, 0.1, seed=4)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(labels, 1.0, seed=0)


def test_stratified_split_draws_each_share_of_the_whole_in_order() -> None:
    labels = np.repeat(np.arange(4), [80, 40, 40, 40])
    split = stratified_split(labels, {"test": 0.25, "val": 0.15}, seed=0)
    assert list(split) == ["train", "test", "val"]
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(labels)))
    assert np.array_equal(np.bincount(labels[split["test"]]), [20, 10, 10, 10])  # 25% of every class
    assert np.array_equal(np.bincount(labels[split["val"]]), [12, 6, 6, 6])  # 15% of all, not of the rest
    kept, held = holdout_split(labels, 0.25, seed=0)  # the first draw is the two-way split
    assert np.array_equal(held, split["test"])
    with pytest.raises(ValueError, match=r"test_fraction \(0.5\) and val_fraction \(0.5\) must be in \(0, 1\) "
                                         "and sum to less than 1"):
        stratified_split(labels, {"test": 0.5, "val": 0.5}, seed=0)


def test_group_labels_follow_the_formula() -> None:
    y, a = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    labels = group_labels(y, a)
    assert labels["group"].tolist() == [2 * yi + ai for yi, ai in zip(y, a)]
    assert all(v.dtype == np.int64 for v in labels.values())


def test_decode_images_center_crops_resizes_and_names_bad_files(tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([(90, 60), (60, 90), (178, 218), (40, 40)]):
        paths.append(tmp_path / f"{i}.jpg")
        write_jpeg(paths[-1], GROUP_COLOURS[i], size)  # black outside the centred square
    images = decode_images("toy", paths, 16, LAYOUT, workers=2)
    assert images.shape == (4, 3, 16, 16) and images.dtype == np.uint8
    for image, colour in zip(images, GROUP_COLOURS):
        # The crop keeps only the flat centre square (JPEG's chroma blur touches the outer ring).
        assert np.abs(image[:, 1:-1, 1:-1].astype(int) - colour[:, None, None]).max() <= 12
    # Lossless and already at the target side: the output is exactly the centre square.
    rng = np.random.default_rng(0)
    pixels = np.zeros((30, 20, 3), dtype=np.uint8)  # height 30, width 20 -> rows 5..24
    pixels[5:25] = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    exact = decode_images("toy", [tmp_path / "exact.png"], 20, LAYOUT)
    assert np.array_equal(exact[0], pixels[5:25].transpose(2, 0, 1))
    with pytest.raises(DatasetFileError, match="image file is missing"):
        decode_images("toy", [tmp_path / "absent.jpg"], 16, LAYOUT)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[2].read_bytes()[:300])
    with pytest.raises(DatasetFileError, match="cannot decode image") as info:
        decode_images("toy", [broken], 16, LAYOUT)
    assert str(broken) in str(info.value)


def test_looking_datasets_up_imports_neither_torchvision_nor_torch_dynamo() -> None:
    """The validate, download and report stages read the dataset registry; importing torchvision
    for it (its ops import torch._dynamo) cost every one of them seconds of start-up."""
    import subprocess
    import sys
    from pathlib import Path

    # (with what validate_job imports to check the names of every registry)
    code = ("import sys; import pipeline.data.registry, pipeline.jobs.validate, pipeline.jobs.download, "
            "pipeline.reports, pipeline.augment, pipeline.evaluation.george, pipeline.models; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
