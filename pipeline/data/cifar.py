"""CIFAR-10, CIFAR-100 and CIFAR-100-U from the official python pickles (METHOD.md section 5).

On-disk layout is torchvision's: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}`` and ``ROOT/cifar-100-python/{train, test, meta}``. URLs and md5s are those of
torchvision's ``CIFAR10`` / ``CIFAR100`` classes (tests/test_datasets_cifar.py checks them
against those lists), written out here so that looking a dataset up does not import torchvision
(seconds of start-up, torch._dynamo included, for every stage that reads the registry).

- CIFAR-10: coarse = vehicle {airplane, automobile, ship, truck} (0) vs animal (1); fine = 10.
- CIFAR-100: coarse = the 20 superclasses stored in the pickles; fine = 100 classes.
- Either coarse label can be replaced by another map (the ``coarse_map`` option: the defaults
  above are the named maps ``vehicles_animals`` and ``superclasses``; pipeline/data/labels.py).
- CIFAR-100-U: the training pool keeps, per superclass, 500/250/100/50/50 images of its
  5 fine classes (which class gets which count, and which images, fixed by a seed);
  validation is a seeded stratified 10% of that pool and test is CIFAR-100's test set. The
  subsample always follows the superclasses; ``coarse_map`` only relabels the coarse label.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.download import (
    DatasetFileError,
    RemoteFile,
    fetch,
    safe_extract,
    verify_md5s,
)
from pipeline.data.labels import CoarseMap, CoarseMaps
from pipeline.data.options import option_checks
from pipeline.data.records import COARSE_TO_FINE, Records, Split
from pipeline.data.splits import holdout_split

VEHICLES = ("airplane", "automobile", "ship", "truck")
CIFAR10_COARSE_NAMES = ["vehicle", "animal"]
VEHICLES_ANIMALS = "vehicles_animals"
SUPERCLASSES = "superclasses"
CIFAR10_MAPS = CoarseMaps("cifar10", n_fine=10, default=VEHICLES_ANIMALS, own=(VEHICLES_ANIMALS,))
CIFAR100_MAPS = CoarseMaps("cifar100", n_fine=100, default=SUPERCLASSES, own=(SUPERCLASSES,))
CIFAR100U_MAPS = CoarseMaps("cifar100u", n_fine=100, default=SUPERCLASSES, own=(SUPERCLASSES,))
# Paper's per-superclass training counts for CIFAR-100-U, largest first (METHOD.md section 5).
CIFAR100U_COUNTS = (500, 250, 100, 50, 50)


@dataclass(frozen=True)
class _Official:
    """One CIFAR release as torchvision's dataset class describes it."""

    base_folder: str
    url: str
    tgz_md5: str
    train_list: tuple[tuple[str, str], ...]  # (file, md5)
    test_list: tuple[tuple[str, str], ...]
    meta: tuple[str, str]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def checksums(self) -> dict[str, str]:
        return {f"{self.base_folder}/{name}": md5 for name, md5 in (*self.train_list, *self.test_list, self.meta)}


CIFAR10 = _Official(
    "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    train_list=(("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
    test_list=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
)
CIFAR100 = _Official(
    "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    train_list=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_list=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
)
CIFAR10_MD5 = CIFAR10.checksums()
CIFAR100_MD5 = CIFAR100.checksums()
CIFAR10_REMOTE = RemoteFile(CIFAR10.filename, (CIFAR10.url,), CIFAR10.tgz_md5)
CIFAR100_REMOTE = RemoteFile(CIFAR100.filename, (CIFAR100.url,), CIFAR100.tgz_md5)

CIFAR10_LAYOUT = """\
ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
(extracted from cifar-10-python.tar.gz; or place the .tar.gz itself at ROOT/cifar-10-python.tar.gz)"""
CIFAR100_LAYOUT = """\
ROOT/cifar-100-python/train, test, meta
(extracted from cifar-100-python.tar.gz; or place the .tar.gz itself at ROOT/cifar-100-python.tar.gz)"""


# --------------------------------------------------------------------------- download


def _download(name: str, root: Path, remote: RemoteFile, checksums: Mapping[str, str], layout: str,
              timeout: float) -> None:
    if all((root / rel).is_file() for rel in checksums):
        verify_md5s(name, root, checksums, layout)
        return
    archive = fetch(name, remote, root, layout, timeout)
    safe_extract(archive, root)
    verify_md5s(name, root, checksums, layout)


def download_cifar10(root: str | Path, timeout: float = 30.0) -> None:
    """Download and extract CIFAR-10 into ``root`` unless its verified files are already there."""
    _download("cifar10", Path(root), CIFAR10_REMOTE, CIFAR10_MD5, CIFAR10_LAYOUT, timeout)


def download_cifar100(root: str | Path, timeout: float = 30.0) -> None:
    """Download and extract CIFAR-100 into ``root`` unless its verified files are already there."""
    _download("cifar100", Path(root), CIFAR100_REMOTE, CIFAR100_MD5, CIFAR100_LAYOUT, timeout)


# --------------------------------------------------------------------------- reading


def _unpickle(name: str, path: Path, keys: Sequence[str], layout: str) -> dict:
    try:
        with open(path, "rb") as f:
            # The official pickles were written by Python 2; latin1 maps their byte strings 1:1.
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DatasetFileError(
            name, path, f"not a readable pickle ({err})", "an official CIFAR pickle", layout
        ) from None
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise DatasetFileError(name, path, f"pickle lacks keys {missing}", f"a dict with keys {list(keys)}", layout)
    return entry


def _read_batches(name: str, paths: Sequence[Path], label_keys: Sequence[str], layout: str
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pickled batches -> images (N, 3, 32, 32) uint8 and {label_key: (N,) int64}."""
    images, labels = [], {k: [] for k in label_keys}
    for path in paths:
        entry = _unpickle(name, path, ["data", *label_keys], layout)
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFileError(name, path, f"'data' is {data.dtype} {data.shape}", "uint8 (N, 3072)", layout)
        for k in label_keys:
            if len(entry[k]) != len(data):
                raise DatasetFileError(
                    name, path, f"{len(entry[k])} {k!r} for {len(data)} images", "one label per image", layout
                )
            labels[k].append(np.asarray(entry[k], dtype=np.int64))
        # Rows are 1024 red, 1024 green, 1024 blue values in row-major order: exactly NCHW.
        images.append(data.reshape(-1, 3, 32, 32))
    return np.concatenate(images), {k: np.concatenate(v) for k, v in labels.items()}


def _check_range(name: str, path: Path, values: np.ndarray, n_classes: int, layout: str) -> None:
    if len(values) and (values.min() < 0 or values.max() >= n_classes):
        raise DatasetFileError(
            name, path, f"labels span {values.min()}..{values.max()}", f"labels in 0..{n_classes - 1}", layout
        )


def _with_val(train_images: np.ndarray, train_labels: dict[str, np.ndarray], test: Split,
              stratify: str, val_fraction: float, split_seed: int) -> dict[str, Split]:
    kept, held = holdout_split(train_labels[stratify], val_fraction, split_seed)
    return {
        "train": Split(train_images[kept], {k: v[kept] for k, v in train_labels.items()}),
        "val": Split(train_images[held], {k: v[held] for k, v in train_labels.items()}),
        "test": test,
    }


@option_checks(coarse_map=CIFAR10_MAPS.check)
def load_cifar10(
    root: str | Path,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    coarse_map: str | Sequence[int] = CIFAR10_MAPS.default,
    checksums: Mapping[str, str] = CIFAR10_MD5,
) -> Records:
    """CIFAR-10 coarse-to-fine: coarse by ``coarse_map`` (default vehicle (0) / animal (1)),
    fine = the 10 classes.

    Validation is a seeded stratified ``val_fraction`` of the official training batches.
    ``checksums`` maps paths relative to ``root`` to md5 (torchvision's list by default).
    """
    CIFAR10_MAPS.check(coarse_map)
    name, root = "cifar10", Path(root)
    verify_md5s(name, root, checksums, CIFAR10_LAYOUT)
    folder = root / CIFAR10.base_folder
    fine_names = list(_unpickle(name, folder / "batches.meta", ["label_names"], CIFAR10_LAYOUT)["label_names"])
    if len(fine_names) != 10 or not set(VEHICLES) <= set(fine_names):
        raise DatasetFileError(
            name, folder / "batches.meta", f"label_names are {fine_names}", f"10 names including {VEHICLES}",
            CIFAR10_LAYOUT,
        )
    # vehicles_animals: coarse 0 = vehicle, 1 = animal, looked up by name rather than by index.
    vehicles_animals = CoarseMap([0 if n in VEHICLES else 1 for n in fine_names], CIFAR10_COARSE_NAMES)
    hierarchy = CIFAR10_MAPS.resolve(coarse_map, {VEHICLES_ANIMALS: vehicles_animals})

    def read(files: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        paths = [folder / f for f in files]
        images, raw = _read_batches(name, paths, ["labels"], CIFAR10_LAYOUT)
        _check_range(name, paths[0], raw["labels"], 10, CIFAR10_LAYOUT)
        return images, {"coarse": hierarchy(raw["labels"]), "fine": raw["labels"]}

    train_images, train_labels = read([f for f, _ in CIFAR10.train_list])
    test_images, test_labels = read([f for f, _ in CIFAR10.test_list])
    splits = _with_val(train_images, train_labels, Split(test_images, test_labels), "fine", val_fraction, split_seed)
    return Records(name, COARSE_TO_FINE, splits, {"coarse": list(hierarchy.names), "fine": fine_names})


def _read_cifar100(name: str, root: Path, checksums: Mapping[str, str]
                   ) -> tuple[Split, Split, dict[str, list[str]], CoarseMap]:
    """The official CIFAR-100 train and test splits (coarse = the superclasses), the class names
    and the superclasses as a coarse map."""
    verify_md5s(name, root, checksums, CIFAR100_LAYOUT)
    folder = root / CIFAR100.base_folder
    meta = _unpickle(name, folder / "meta", ["fine_label_names", "coarse_label_names"], CIFAR100_LAYOUT)
    names = {"coarse": list(meta["coarse_label_names"]), "fine": list(meta["fine_label_names"])}
    if len(names["fine"]) != CIFAR100_MAPS.n_fine:
        raise DatasetFileError(name, folder / "meta", f"{len(names['fine'])} fine_label_names",
                               f"{CIFAR100_MAPS.n_fine} fine class names", CIFAR100_LAYOUT)
    splits = []
    for file in ("train", "test"):
        images, raw = _read_batches(name, [folder / file], ["coarse_labels", "fine_labels"], CIFAR100_LAYOUT)
        _check_range(name, folder / file, raw["fine_labels"], len(names["fine"]), CIFAR100_LAYOUT)
        _check_range(name, folder / file, raw["coarse_labels"], len(names["coarse"]), CIFAR100_LAYOUT)
        splits.append(Split(images, {"coarse": raw["coarse_labels"], "fine": raw["fine_labels"]}))
    train, test = splits
    # The hierarchy must be a function fine -> coarse; anything else means a broken file.
    for split, file in ((train, "train"), (test, "test")):
        pairs = np.unique(np.stack([split.labels["fine"], split.labels["coarse"]]), axis=1)
        if len(np.unique(pairs[0])) != pairs.shape[1]:
            raise DatasetFileError(
                name, folder / file, "a fine label appears under two coarse labels",
                "each fine class in exactly one superclass",
                CIFAR100_LAYOUT,
            )
    fine = np.concatenate([train.labels["fine"], test.labels["fine"]])
    coarse = np.concatenate([train.labels["coarse"], test.labels["coarse"]])
    fine_to_coarse = np.full(len(names["fine"]), -1, dtype=np.int64)
    fine_to_coarse[fine] = coarse
    if (fine_to_coarse < 0).any() or not np.array_equal(fine_to_coarse[fine], coarse):
        raise DatasetFileError(
            name, folder / "test", "a fine class is in neither split, or in different superclasses in train and test",
            "each fine class in exactly one superclass", CIFAR100_LAYOUT,
        )
    return train, test, names, CoarseMap(fine_to_coarse, names["coarse"])


def _coarse_by(hierarchy: CoarseMap, split: Split) -> Split:
    """``split`` with its coarse label taken from ``hierarchy`` (the same labels for the superclasses)."""
    return Split(split.images, {"coarse": hierarchy(split.labels["fine"]), "fine": split.labels["fine"]})


@option_checks(coarse_map=CIFAR100_MAPS.check)
def load_cifar100(
    root: str | Path,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    coarse_map: str | Sequence[int] = CIFAR100_MAPS.default,
    checksums: Mapping[str, str] = CIFAR100_MD5,
) -> Records:
    """CIFAR-100 coarse-to-fine: coarse by ``coarse_map`` (default the 20 superclasses), fine = 100 classes."""
    CIFAR100_MAPS.check(coarse_map)
    train, test, names, superclasses = _read_cifar100("cifar100", Path(root), checksums)
    hierarchy = CIFAR100_MAPS.resolve(coarse_map, {SUPERCLASSES: superclasses})
    train, test = _coarse_by(hierarchy, train), _coarse_by(hierarchy, test)
    splits = _with_val(train.images, train.labels, test, "fine", val_fraction, split_seed)
    return Records("cifar100", COARSE_TO_FINE, splits, {"coarse": list(hierarchy.names), "fine": names["fine"]})


def _assign_counts(
    rng: np.random.Generator, fine: np.ndarray, coarse: np.ndarray, counts: Sequence[int]
) -> dict[int, int]:
    assignment: dict[int, int] = {}
    for superclass in np.unique(coarse):
        members = np.unique(fine[coarse == superclass])
        if len(members) != len(counts):
            raise ValueError(
                f"superclass {superclass} has {len(members)} fine classes; counts {tuple(counts)} need {len(counts)}"
            )
        for j, member in enumerate(members[rng.permutation(len(members))]):
            assignment[int(member)] = int(counts[j])
    return assignment


def cifar100u_counts(
    fine: np.ndarray, coarse: np.ndarray, counts: Sequence[int] = CIFAR100U_COUNTS, seed: int = 0
) -> dict[int, int]:
    """Which fine class keeps how many training images in CIFAR-100-U: {fine: count}.

    With ``rng = np.random.default_rng(seed)``: for each superclass in increasing order,
    its fine classes (sorted ascending) are reordered by ``rng.permutation`` and the j-th
    of that order gets ``counts[j]``. ``fine``/``coarse`` (N,) give the hierarchy.
    """
    return _assign_counts(np.random.default_rng(seed), fine, coarse, counts)


def cifar100u_indices(
    fine: np.ndarray, coarse: np.ndarray, counts: Sequence[int] = CIFAR100U_COUNTS, seed: int = 0
) -> np.ndarray:
    """Sorted indices of the CIFAR-100-U training pool within a CIFAR-100 training split (N,).

    After the class assignment of :func:`cifar100u_counts`, the same generator picks each
    fine class's images without replacement, classes in increasing order.
    """
    rng = np.random.default_rng(seed)
    assignment = _assign_counts(rng, fine, coarse, counts)
    picked = []
    for member, count in sorted(assignment.items()):
        pool = np.flatnonzero(fine == member)
        if len(pool) < count:
            raise ValueError(
                f"CIFAR-100-U: fine class {member} has {len(pool)} training images; "
                f"counts {tuple(counts)} ask for {count}"
            )
        picked.append(rng.choice(pool, size=count, replace=False))
    return np.sort(np.concatenate(picked))


@option_checks(coarse_map=CIFAR100U_MAPS.check)
def load_cifar100u(
    root: str | Path,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    counts: Sequence[int] = CIFAR100U_COUNTS,
    subsample_seed: int = 0,
    coarse_map: str | Sequence[int] = CIFAR100U_MAPS.default,
    checksums: Mapping[str, str] = CIFAR100_MD5,
) -> Records:
    """CIFAR-100-U: the seeded per-superclass ``counts`` subsample of CIFAR-100's training split.

    The pool is then split like every dataset without an official validation set:
    a seeded stratified ``val_fraction`` (by fine class) becomes validation, so validation
    follows the pool's imbalance. Test is CIFAR-100's (balanced) test set. The subsample follows
    the superclasses whatever ``coarse_map`` (default the superclasses) makes the coarse label.
    """
    CIFAR100U_MAPS.check(coarse_map)
    train, test, names, superclasses = _read_cifar100("cifar100u", Path(root), checksums)
    hierarchy = CIFAR100U_MAPS.resolve(coarse_map, {SUPERCLASSES: superclasses})
    pool = cifar100u_indices(train.labels["fine"], train.labels["coarse"], counts, subsample_seed)
    pooled = _coarse_by(hierarchy, Split(train.images[pool], {k: v[pool] for k, v in train.labels.items()}))
    splits = _with_val(pooled.images, pooled.labels, _coarse_by(hierarchy, test), "fine", val_fraction, split_seed)
    return Records("cifar100u", COARSE_TO_FINE, splits, {"coarse": list(hierarchy.names), "fine": names["fine"]})
