"""Tiny copies of each real dataset in its exact on-disk format: for tests and the smoke mode.

The copies are read by the *real* loaders (pipeline/data/{cifar,mnist,waterbirds,celeba}.py),
so the smoke mode of the paper suite (``suite.smoke: true``) and the loader tests exercise the
same parsing and verification code as a real download. Every writer returns what the loader
needs to verify the copy the same way it verifies the real files (a {relative path: md5} map,
or split sizes). Images carry their labels in their pixels, so tests can check that images and
labels stay aligned through splitting and caching (and the smoke mode has something learnable):

- CIFAR: channel 0, pixel (0, 0) = fine label; pixel (0, 1) = index within the batch file % 256.
- MNIST: pixel (0, 0) = digit * 20.
- Waterbirds / CelebA: a flat colour per group (see GROUP_COLOURS), on non-square JPEGs.

:func:`fabricate_smoke` writes the smoke mode's copy of one dataset and returns the loader's
verification options for it; the ``prepare`` options that make a loader's splits fit those tiny
copies are :data:`pipeline.smoke.SMOKE_PREPARE`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.hashing import file_md5

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
# Flat RGB colour of an image of group g = 2 * y + attribute; far apart so JPEG noise cannot blur them.
GROUP_COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=np.uint8)


def _cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows in CIFAR's order (1024 R, 1024 G, 1024 B) with the label stamped in."""
    data = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    data[:, 0, 0, 0] = labels
    data[:, 0, 0, 1] = np.arange(len(labels)) % 256
    return data.reshape(len(labels), -1)


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def fabricate_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 4, seed: int = 0) -> dict[str, str]:
    """cifar-10-batches-py with 5 training batches, a test batch and batches.meta; returns md5s."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train = rng.permutation(np.repeat(np.arange(10), train_per_class))
    for i, part in enumerate(np.array_split(train, 5), start=1):
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                             "labels": part.tolist(), "data": _cifar_images(part, rng),
                                             "filenames": [f"img_{j}.png" for j in range(len(part))]})
    test = rng.permutation(np.repeat(np.arange(10), test_per_class))
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test.tolist(),
                                    "data": _cifar_images(test, rng), "filenames": []})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": len(train) // 5,
                                      "num_vis": 3072})
    files = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
    return {f"cifar-10-batches-py/{f}": file_md5(folder / f) for f in files}


def cifar100_hierarchy(seed: int = 0) -> np.ndarray:
    """fine (100,) -> coarse: a seeded shuffle, so coarse is not simply fine // 5."""
    return np.random.default_rng(seed).permutation(100) // 5


def fabricate_cifar100(root: Path, train_per_class: int = 20, test_per_class: int = 2, seed: int = 0
                       ) -> dict[str, str]:
    """cifar-100-python/{train, test, meta} with fine_labels and coarse_labels; returns md5s."""
    rng = np.random.default_rng(seed)
    fine_to_coarse = cifar100_hierarchy(seed)
    folder = root / "cifar-100-python"
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        _pickle(folder / name, {"filenames": [], "batch_label": f"{name}ing batch 1 of 1",
                                "fine_labels": fine.tolist(), "coarse_labels": fine_to_coarse[fine].tolist(),
                                "data": _cifar_images(fine, rng)})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]})
    return {f"cifar-100-python/{f}": file_md5(folder / f) for f in ("train", "test", "meta")}


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def fabricate_mnist(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = True, plain: bool = False,
                    seed: int = 0) -> dict[str, str]:
    """MNIST/raw idx files (gzipped and/or plain); returns md5s of the .gz files."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        digits = np.resize(np.arange(10), n)
        rng.shuffle(digits)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = digits * 20
        for kind, array in (("images-idx3", images), ("labels-idx1", digits)):
            name = f"{prefix}-{kind}-ubyte"
            if plain:
                (raw / name).write_bytes(_idx(array))
            if gz:
                # mtime=0 keeps the gzip bytes (and so the md5) reproducible.
                (raw / f"{name}.gz").write_bytes(gzip.compress(_idx(array), mtime=0))
                checksums[f"MNIST/raw/{name}.gz"] = file_md5(raw / f"{name}.gz")
    return checksums


def write_jpeg(path: Path, colour: np.ndarray, size: tuple[int, int]) -> None:
    """A flat-colour JPEG of ``size`` (width, height) with a black border outside the centre square."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    pixels[top:top + side, left:left + side] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def fabricate_waterbirds(root: Path, groups_per_split: Mapping[str, Sequence[int]] | None = None,
                         folder: str = "waterbirds_v1.0") -> dict[str, int]:
    """WILDS waterbirds_v1.0/metadata.csv plus JPEGs; returns split sizes.

    ``groups_per_split[split][g]`` images of group g = 2 * y + place; defaults mimic the real
    imbalance in miniature (train heavy on the majority groups, val/test balanced per class).
    """
    groups_per_split = groups_per_split or {"train": (14, 3, 2, 9), "val": (3, 3, 2, 2), "test": (4, 4, 3, 3)}
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    img_id = 0
    for code, split in enumerate(("train", "val", "test")):
        for group, count in enumerate(groups_per_split[split]):
            y, place = divmod(group, 2)
            for _ in range(count):
                img_id += 1
                species = "001.Black_footed_Albatross" if y else "002.Laysan_Albatross"
                filename = f"{species}/Bird_{img_id:04d}.jpg"
                # Non-square sizes, both orientations, as in the real data.
                size = (60 + 7 * (img_id % 5), 48 + 5 * (img_id % 3)) if img_id % 2 else (50, 70)
                write_jpeg(root / folder / filename, GROUP_COLOURS[group], size)
                lines.append(f"{img_id},{filename},{y},{code},{place},/b/bamboo_forest/{img_id:08d}.jpg")
    (root / folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return {split: sum(groups_per_split[split]) for split in ("train", "val", "test")}


def fabricate_celeba(root: Path, groups_per_split: Mapping[str, Sequence[int]] | None = None,
                     as_zip: bool = False, seed: int = 0) -> dict[str, str]:
    """celeba/list_eval_partition.txt, list_attr_celeba.txt and 178x218 JPEGs (or the zip); returns md5s.

    Images are listed in name order with splits interleaved, as the real partition is ordered
    by file name; group g = 2 * Blond_Hair + Male.
    """
    rng = np.random.default_rng(seed)
    groups_per_split = groups_per_split or {"train": (10, 8, 5, 1), "val": (3, 3, 2, 1), "test": (3, 3, 2, 1)}
    rows = [(code, group) for code, split in enumerate(("train", "val", "test"))
            for group, count in enumerate(groups_per_split[split]) for _ in range(count)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    folder = root / "celeba"
    folder.mkdir(parents=True, exist_ok=True)
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    partition, attributes = [], [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (code, group) in enumerate(rows, start=1):
            name = f"{i:06d}.jpg"
            partition.append(f"{name} {code}")
            values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
            values[blond], values[male] = 2 * (group // 2) - 1, 2 * (group % 2) - 1
            # The real file pads each value to width 2: "-1" and " 1", separated by a space.
            attributes.append(name + " " + " ".join(f"{v:2d}" for v in values))
            path = folder / "img_align_celeba" / name
            write_jpeg(path, GROUP_COLOURS[group], (178, 218))
            if as_zip:
                archive.write(path, f"img_align_celeba/{name}")
                path.unlink()
    if as_zip:
        (folder / "img_align_celeba").rmdir()
        (folder / "img_align_celeba.zip").write_bytes(buffer.getvalue())
    (folder / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (folder / "list_attr_celeba.txt").write_text("\n".join(attributes) + "\n")
    checksums = {f"celeba/{f}": file_md5(folder / f) for f in ("list_eval_partition.txt", "list_attr_celeba.txt")}
    if as_zip:
        checksums["celeba/img_align_celeba.zip"] = file_md5(folder / "img_align_celeba.zip")
    return checksums


def tar_gz(path: Path, source: Path, arcname: str) -> str:
    """Pack folder ``source`` as ``arcname`` into a .tar.gz at ``path``; return its md5."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(source, arcname=arcname)
    return file_md5(path)


# --------------------------------------------------------------------------- the smoke mode's copies

def _smoke_cifar10(root: Path) -> dict[str, object]:
    # 80 training images -> 40 train / 40 val at val_fraction 0.5: two batches of 16.
    return {"checksums": fabricate_cifar10(root, train_per_class=8, test_per_class=4)}


def _smoke_cifar100(root: Path) -> dict[str, object]:
    # 2 per class: the fewest that give each of the 100 classes a train and a val image.
    return {"checksums": fabricate_cifar100(root, train_per_class=2, test_per_class=1)}


def _smoke_cifar100u(root: Path) -> dict[str, object]:
    # 3 per class, so pipeline.smoke.SMOKE_PREPARE's counts (3, 2, 2, 2, 2) can be drawn: a 220-image pool.
    return {"checksums": fabricate_cifar100(root, train_per_class=3, test_per_class=1)}


def _smoke_mnist(root: Path) -> dict[str, object]:
    return {"checksums": fabricate_mnist(root, n_train=64, n_test=40)}


def _smoke_waterbirds(root: Path) -> dict[str, object]:
    # Train as imbalanced as the real one (majority groups 0 and 3); every group in every split.
    groups = {"train": (14, 4, 4, 10), "val": (3, 3, 2, 2), "test": (4, 4, 3, 3)}
    return {"split_sizes": fabricate_waterbirds(root, groups)}


def _smoke_celeba(root: Path) -> dict[str, object]:
    # Blond men (group 3) the smallest group, as in the real data.
    groups = {"train": (12, 10, 6, 4), "val": (3, 3, 2, 2), "test": (3, 3, 2, 2)}
    return {"checksums": fabricate_celeba(root, groups)}


SMOKE_WRITERS = {
    "cifar10": _smoke_cifar10,
    "cifar100": _smoke_cifar100,
    "cifar100u": _smoke_cifar100u,
    "mnist": _smoke_mnist,
    "waterbirds": _smoke_waterbirds,
    "celeba": _smoke_celeba,
}


def fabricate_smoke(source: str, root: str | Path) -> dict[str, object]:
    """Write the smoke mode's tiny copy of dataset ``source`` under ``root``, in its real layout.

    Returns the loader's verification options for the copy (``checksums`` or ``split_sizes``),
    to pass to the real loader in place of the official lists. Deterministic: the same bytes
    (and md5s) every time.
    """
    if source not in SMOKE_WRITERS:
        raise KeyError(f"no fabricated copy for dataset {source!r}; fabricated: {', '.join(SMOKE_WRITERS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return SMOKE_WRITERS[source](root)


__all__ = [
    "CELEBA_ATTRIBUTES", "CIFAR10_NAMES", "GROUP_COLOURS", "SMOKE_WRITERS",
    "cifar100_hierarchy", "fabricate_celeba", "fabricate_cifar10", "fabricate_cifar100", "fabricate_mnist",
    "fabricate_smoke", "fabricate_waterbirds", "tar_gz", "write_jpeg",
]
