"""Coarse maps (``datasets.<name>.prepare.coarse_map``, pipeline/data/labels.py): the defaults give
exactly the labels the loaders hard-coded before the option existed, the other maps relabel only
the coarse label, and a wrong map fails params validation naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_params
from pipeline.config import ParamsError, validate
from pipeline.data import cache, registry
from pipeline.data.cifar import load_cifar10, load_cifar100, load_cifar100u
from pipeline.data.digits import load_digits
from pipeline.data.fabricate import (CIFAR10_NAMES, cifar100_hierarchy, fabricate_cifar10, fabricate_cifar100,
                                      fabricate_mnist)
from pipeline.data.labels import CoarseMaps, halves, parity
from pipeline.data.mnist import load_mnist
from pipeline.data.records import SPLITS
from pipeline.data.spurious_digits import load_spurious_digits
from pipeline.jobs.download import download_job
from pipeline.jobs.validate import validate_job

# What the loaders hard-coded before coarse_map (the old expressions, verbatim in spirit).
OLD_VEHICLES = ("airplane", "automobile", "ship", "truck")


def _each_split(records, check) -> None:
    for name in SPLITS:
        check(records.splits[name].labels)


# ---------------------------------------------------------------------------- defaults = the old labels


def test_digits_default_is_the_old_0_4_vs_5_9() -> None:
    records = load_digits()  # the real scikit-learn digits
    assert records.class_names["coarse"] == ["0-4", "5-9"]
    _each_split(records, lambda labels: np.testing.assert_array_equal(
        labels["coarse"], (labels["fine"] >= 5).astype(np.int64)))
    assert all(s.labels["coarse"].dtype == np.int64 for s in records.splits.values())


def test_spurious_digits_default_y_is_the_old_coarse_label() -> None:
    records = load_spurious_digits()
    assert records.class_names["y"] == ["0-4", "5-9"]
    assert records.class_names["group"] == ["0-4 / red", "0-4 / blue", "5-9 / red", "5-9 / blue"]
    _each_split(records, lambda labels: np.testing.assert_array_equal(
        labels["y"], (labels["fine"] >= 5).astype(np.int64)))


def test_mnist_default_is_the_old_0_4_vs_5_9(tmp_path: Path) -> None:
    records = load_mnist(tmp_path, checksums=fabricate_mnist(tmp_path))
    assert records.class_names["coarse"] == ["0-4", "5-9"]
    _each_split(records, lambda labels: np.testing.assert_array_equal(
        labels["coarse"], (labels["fine"] >= 5).astype(np.int64)))


def test_cifar10_default_is_the_old_vehicles_animals(tmp_path: Path) -> None:
    records = load_cifar10(tmp_path, checksums=fabricate_cifar10(tmp_path))
    assert records.class_names["coarse"] == ["vehicle", "animal"]
    old = np.array([0 if n in OLD_VEHICLES else 1 for n in CIFAR10_NAMES], dtype=np.int64)
    _each_split(records, lambda labels: np.testing.assert_array_equal(labels["coarse"], old[labels["fine"]]))


@pytest.mark.parametrize("loader", [load_cifar100, load_cifar100u])
def test_cifar100_default_is_the_files_superclasses(tmp_path: Path, loader) -> None:
    checksums = fabricate_cifar100(tmp_path, train_per_class=3)
    extra = {"counts": (3, 2, 2, 2, 2)} if loader is load_cifar100u else {}
    records = loader(tmp_path, val_fraction=0.5, checksums=checksums, **extra)
    assert records.class_names["coarse"] == [f"coarse{i:02d}" for i in range(20)]  # the meta file's names
    stored = cifar100_hierarchy()  # what fabricate wrote as coarse_labels
    _each_split(records, lambda labels: np.testing.assert_array_equal(labels["coarse"], stored[labels["fine"]]))


# ---------------------------------------------------------------------------- other maps


def test_generic_maps() -> None:
    assert halves(10).fine_to_coarse.tolist() == [0] * 5 + [1] * 5 and halves(10).names == ("0-4", "5-9")
    assert halves(5).fine_to_coarse.tolist() == [0, 0, 0, 1, 1] and halves(5).names == ("0-2", "3-4")
    assert halves(100).names == ("0-49", "50-99")
    assert parity(4).fine_to_coarse.tolist() == [0, 1, 0, 1] and parity(4).names == ("even", "odd")


def test_parity_and_a_list_relabel_only_the_coarse_label() -> None:
    default = load_digits()
    even_odd = load_digits(coarse_map="parity")
    assert even_odd.class_names["coarse"] == ["even", "odd"]
    three = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    listed = load_digits(coarse_map=three)
    assert listed.class_names["coarse"] == ["coarse 0", "coarse 1", "coarse 2"]
    for name in SPLITS:
        fine = default.splits[name].labels["fine"]
        for other in (even_odd, listed):  # same images, same split, same fine labels
            assert np.array_equal(other.splits[name].images, default.splits[name].images)
            assert np.array_equal(other.splits[name].labels["fine"], fine)
        assert np.array_equal(even_odd.splits[name].labels["coarse"], fine % 2)
        assert np.array_equal(listed.splits[name].labels["coarse"], np.array(three)[fine])


def test_spurious_digits_takes_any_two_class_map() -> None:
    records = load_spurious_digits(coarse_map="parity")
    assert records.class_names["group"] == ["even / red", "even / blue", "odd / red", "odd / blue"]
    _each_split(records, lambda labels: np.testing.assert_array_equal(labels["y"], labels["fine"] % 2))
    _each_split(records, lambda labels: np.testing.assert_array_equal(
        labels["group"], 2 * labels["y"] + labels["attribute"]))


def test_cifar_maps(tmp_path: Path) -> None:
    halves10 = load_cifar10(tmp_path, coarse_map="halves", checksums=fabricate_cifar10(tmp_path))
    assert halves10.class_names["coarse"] == ["0-4", "5-9"]
    _each_split(halves10, lambda labels: np.testing.assert_array_equal(labels["coarse"], labels["fine"] // 5))
    checksums = fabricate_cifar100(tmp_path, train_per_class=3)
    tens = [f // 10 for f in range(100)]
    u_default = load_cifar100u(tmp_path, 0.5, counts=(3, 2, 2, 2, 2), checksums=checksums)
    u_tens = load_cifar100u(tmp_path, 0.5, counts=(3, 2, 2, 2, 2), coarse_map=tens, checksums=checksums)
    assert u_tens.class_names["coarse"] == [f"coarse {k}" for k in range(10)]
    for name in SPLITS:  # the subsample still follows the superclasses: same images, same fine labels
        assert np.array_equal(u_tens.splits[name].images, u_default.splits[name].images)
        fine = u_tens.splits[name].labels["fine"]
        assert np.array_equal(fine, u_default.splits[name].labels["fine"])
        assert np.array_equal(u_tens.splits[name].labels["coarse"], fine // 10)


def test_a_listed_map_is_recorded_and_the_cache_reused(tmp_path: Path) -> None:
    three = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    out = registry.prepare("digits", tmp_path, tmp_path / "digits", {"coarse_map": three})
    assert cache.cache_params(out)["coarse_map"] == three
    assert cache.is_cached(out, {"dataset": "digits", **registry.resolve_options("digits", {"coarse_map": three})})
    assert cache.read_cache(out).class_names["coarse"] == ["coarse 0", "coarse 1", "coarse 2"]
    default = registry.prepare("digits", tmp_path, tmp_path / "default", {})
    assert cache.cache_params(default)["coarse_map"] == "halves"


# ---------------------------------------------------------------------------- wrong maps


@pytest.mark.parametrize(("dataset", "value", "message"), [
    ("digits", "halfs", "coarse_map: 'halfs' is not a coarse map of digits (did you mean 'halves'?); "
                        "named maps: halves, parity; or a list of 10 coarse class ids"),
    ("cifar10", "superclasses", "'superclasses' is not a coarse map of cifar10; named maps: vehicles_animals, "
                                "halves, parity"),
    ("cifar100", "superclass", "(did you mean 'superclasses'?)"),
    ("mnist", [0, 1] * 4, "coarse_map: the list has 8 items but mnist has 10 fine classes"),
    ("digits", [0] * 5 + [2] * 5, "coarse_map: coarse class ids [1] are unused but 2 is"),
    ("digits", [0] * 10, "coarse_map: every fine class is in coarse class 0; a coarse task needs at least 2"),
    ("digits", [-1] * 5 + [0] * 5, "coarse_map: coarse class id -1 is negative"),
    ("digits", [0.0, 1.0] * 5, "coarse_map: item 0 is 0.0; coarse class ids are integers"),
    ("digits", ["0", "1"] * 5, "coarse_map: item 0 is '0'; coarse class ids are integers"),
    ("digits", [True, False] * 5, "coarse_map: item 0 is True; coarse class ids are integers"),
    ("digits", 2, "coarse_map: 2 is neither a named map nor a list"),
    ("digits", {"halves": 1}, "is neither a named map nor a list"),
    ("spurious_digits", [0, 0, 0, 1, 1, 1, 2, 2, 2, 2], "coarse_map: the list makes 3 coarse classes; "
                                                        "spurious_digits needs exactly 2"),
])
def test_wrong_maps_fail_option_resolution(dataset: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        registry.resolve_options(dataset, {"coarse_map": value})
    assert message in str(err.value)


def test_the_loader_refuses_the_same_maps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'halfs' is not a coarse map of digits"):
        load_digits(coarse_map="halfs")
    with pytest.raises(ValueError, match="the list has 3 items"):  # before any file is read
        load_cifar100(tmp_path / "absent", coarse_map=[0, 1, 1])


def test_valid_maps_pass_option_resolution() -> None:
    assert registry.resolve_options("cifar100", {"coarse_map": [f % 2 for f in range(100)]})["coarse_map"][:2] == [0, 1]
    for dataset in ("digits", "spurious_digits", "mnist", "cifar10", "cifar100", "cifar100u"):
        default = registry.DATASETS[dataset].defaults["coarse_map"]
        for value in (default, "halves", "parity"):
            assert registry.resolve_options(dataset, {"coarse_map": value})["coarse_map"] == value


def test_every_coarse_to_fine_loader_checks_its_map() -> None:
    from pipeline.data.options import checks_of

    for name, spec in registry.DATASETS.items():
        assert ("coarse_map" in spec.defaults) == ("coarse_map" in checks_of(spec.load)), name
    assert CoarseMaps("x", 3).named == ("halves", "parity")


def test_params_validation_names_the_key(workdir: Path) -> None:
    p = tiny_params()
    p["datasets"]["digits"]["prepare"]["coarse_map"] = "halfs"
    params = validate(p)
    for job in (validate_job, lambda params: download_job(params, "digits")):
        with pytest.raises(ParamsError, match=r"^datasets\.digits\.prepare\.coarse_map: 'halfs' is not a coarse "
                                              r"map of digits \(did you mean 'halves'\?\)"):
            job(params)
    assert not (workdir / "data").exists()
    p["datasets"]["digits"]["prepare"]["coarse_map"] = [0, 1, 2]
    with pytest.raises(ParamsError, match=r"datasets\.digits\.prepare\.coarse_map: the list has 3 items"):
        validate_job(validate(p))
