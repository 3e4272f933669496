"""Prepared cache (atomic write, memory-mapped read), statistics, the registry and the stage CLI."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import cache, registry
from pipeline.data.cifar import load_cifar10
from pipeline.data.fabricate import fabricate_cifar10, fabricate_mnist, fabricate_waterbirds
from pipeline.data.mnist import load_mnist
from pipeline.data.records import SPLITS, Records
from pipeline.data.waterbirds import load_waterbirds
from pipeline.errors import StageError
from conftest import tiny_params, write_params
from stages import download as stage

WB_GROUPS = {"train": (14, 3, 2, 9), "val": (3, 3, 2, 2), "test": (4, 4, 3, 3)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, int]]:
    root = tmp_path_factory.mktemp("raw")
    checksums = fabricate_mnist(root, n_train=200, n_test=50)
    sizes = fabricate_waterbirds(root, WB_GROUPS)
    return root, checksums, sizes


@pytest.fixture
def fabricated_registry(monkeypatch: pytest.MonkeyPatch, raw: tuple[Path, dict[str, str], dict[str, int]]) -> Path:
    """The registry's mnist and waterbirds loaders, told the fabricated copies' checksums/sizes."""
    root, checksums, sizes = raw
    for name, load in (("mnist", functools.partial(load_mnist, checksums=checksums)),
                       ("waterbirds", functools.partial(load_waterbirds, split_sizes=sizes))):
        spec = registry.DATASETS[name]
        monkeypatch.setitem(registry.DATASETS, name, registry.DatasetSpec(spec.name, spec.task, spec.download, load))
    return root


def assert_same(a: Records, b: Records) -> None:
    assert (a.name, a.task, a.class_names) == (b.name, b.task, b.class_names)
    for split in SPLITS:
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert a.splits[split].labels.keys() == b.splits[split].labels.keys()
        for role in a.splits[split].labels:
            assert np.array_equal(a.splits[split].labels[role], b.splits[split].labels[role])
            assert b.splits[split].labels[role].dtype == np.int64


def test_cache_round_trip_is_exact_and_memory_mapped(tmp_path: Path, raw) -> None:
    root, checksums, sizes = raw
    for records in (load_mnist(root, checksums=checksums), load_waterbirds(root, resolution=16, split_sizes=sizes)):
        out = tmp_path / records.name
        params = {"dataset": records.name, "seed": 0, "counts": (1, 2)}
        cache.write_cache(records, out, params)
        loaded = cache.read_cache(out, params)
        assert_same(records, loaded)
        assert isinstance(loaded.splits["train"].images, np.memmap)
        assert cache.is_cached(out, params) and not cache.is_cached(out, {**params, "seed": 1})
        assert (out / cache.MARKER).is_file()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cache_refuses_other_params_incomplete_and_stale_formats(tmp_path: Path, raw) -> None:
    root, checksums, _ = raw
    records = load_mnist(root, checksums=checksums)
    out = cache.write_cache(records, tmp_path / "mnist", {"seed": 0})
    with pytest.raises(cache.CacheError, match="built with params"):
        cache.read_cache(out, {"seed": 1})
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(cache.CacheError, match="cache format 99"):
        cache.read_cache(out)
    (out / cache.MARKER).unlink()
    with pytest.raises(cache.CacheError, match="no complete prepared cache") as info:
        cache.read_cache(out)
    assert "stages.download" in str(info.value)


def test_cache_write_failure_leaves_the_previous_cache_intact(
    tmp_path: Path, raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, checksums, _ = raw
    records = load_mnist(root, checksums=checksums)
    out = cache.write_cache(records, tmp_path / "mnist", {"seed": 0})
    calls = []

    def failing_save(path, array):  # the third array write dies, as a full disk would
        calls.append(path)
        if len(calls) == 3:
            raise OSError("No space left on device")
        with open(path, "wb") as f:
            np.lib.format.write_array(f, array)

    monkeypatch.setattr(cache.np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        cache.write_cache(records, out, {"seed": 1})
    monkeypatch.undo()
    assert cache.cache_params(out) == {"seed": 0}  # old cache still complete and readable
    assert_same(records, cache.read_cache(out))
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # no temporary folder left


def test_statistics_match_a_loop_oracle(raw) -> None:
    root, _, sizes = raw
    records = load_waterbirds(root, resolution=16, split_sizes=sizes)
    stats = cache.dataset_statistics(records)
    assert len(stats) == 3 * (2 + 2 + 4)
    for split in SPLITS:
        labels = records.splits[split].labels
        for role, values in labels.items():
            for value, name in enumerate(records.class_names[role]):
                row = stats[(stats.split == split) & (stats.label == role) & (stats.value == value)]
                count = sum(1 for v in values if v == value)
                assert row["count"].item() == count and row["name"].item() == name
                assert row["fraction"].item() == pytest.approx(count / len(values))
    groups = stats[(stats.split == "train") & (stats.label == "group")]["count"].tolist()
    assert groups == list(WB_GROUPS["train"])


def test_registry_knows_every_dataset_and_its_options() -> None:
    assert set(registry.DATASETS) == {"digits", "spurious_digits", "cifar10", "cifar100", "cifar100u", "mnist",
                                     "waterbirds", "celeba"}
    assert registry.DATASETS["cifar100u"].defaults == {
        "val_fraction": 0.1, "split_seed": 0, "counts": (500, 250, 100, 50, 50), "subsample_seed": 0,
        "coarse_map": "superclasses",
    }
    assert registry.DATASETS["digits"].defaults["coarse_map"] == "halves"
    assert registry.DATASETS["celeba"].defaults == {"resolution": 64, "workers": None}
    with pytest.raises(ValueError, match=r"unknown options \['resolution'\]; allowed: val_fraction, split_seed"):
        registry.resolve_options("cifar10", {"resolution": 64})
    with pytest.raises(KeyError, match="unknown real dataset 'imagenet'"):
        registry.get_spec("imagenet")


def test_prepare_writes_once_and_reuses(tmp_path: Path, fabricated_registry: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prepared" / "waterbirds"
    registry.prepare("waterbirds", fabricated_registry, out, {"resolution": 16, "workers": 2}, download=False)
    assert cache.cache_params(out) == {"dataset": "waterbirds", "resolution": 16}  # workers is not a data choice
    spec = registry.DATASETS["waterbirds"]

    @functools.wraps(load_waterbirds)  # same options, so only the cache check decides
    def must_not_load(*args, **kwargs):
        raise AssertionError("a cache built with the same options must be reused")

    monkeypatch.setitem(registry.DATASETS, "waterbirds",
                        registry.DatasetSpec(spec.name, spec.task, spec.download, must_not_load))
    registry.prepare("waterbirds", fabricated_registry, out, {"resolution": 16}, download=False)


def test_prepare_downloads_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "raw"
    checksums = fabricate_cifar10(root, train_per_class=10, test_per_class=2)
    calls = []
    spec = registry.DATASETS["cifar10"]
    monkeypatch.setitem(registry.DATASETS, "cifar10", registry.DatasetSpec(
        spec.name, spec.task, lambda r, timeout: calls.append((r, timeout)),
        functools.partial(load_cifar10, checksums=checksums)))
    registry.prepare("cifar10", root, tmp_path / "a", {"split_seed": 1}, timeout=7)
    assert calls == [(root, 7)]
    registry.prepare("cifar10", root, tmp_path / "b", download=False)
    assert len(calls) == 1
    assert cache.cache_params(tmp_path / "a") == {"dataset": "cifar10", "val_fraction": 0.1, "split_seed": 1,
                                                  "coarse_map": "vehicles_animals"}


def _params_with(tmp_path: Path, name: str, source: str, prepare: dict, raw_root: Path) -> Path:
    """A params.yaml whose suite is one dataset read from ``raw_root``."""
    p = tiny_params()
    p["suite"]["datasets"] = [name]
    p["datasets"][name] = {"source": source, "prepare": prepare,
                           "recipe": p["datasets"]["digits"]["recipe"]}
    p["data"]["raw_root"] = str(raw_root)
    return write_params(tmp_path / "params.yaml", p)


def test_stage_cli_prepares_and_prints_counts(tmp_path: Path, fabricated_registry: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    params = _params_with(tmp_path, "mnist", "mnist", {"val_fraction": 0.2, "split_seed": 3}, fabricated_registry)
    code = stage.main(["--params", str(params), "--dataset", "mnist", "--no-download"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mnist: prepared cache" in printed and "coarse" in printed
    out = tmp_path / "data/prepared/mnist"
    records = cache.read_cache(out)
    assert len(records.splits["val"]) == 40 and cache.cache_params(out)["split_seed"] == 3


def test_stage_cli_reports_missing_files_and_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    params = _params_with(tmp_path, "cifar10", "cifar10", {}, raw)
    code = stage.main(["--params", str(params), "--dataset", "cifar10", "--no-download"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cifar10" in err and "file is missing" in err and "cifar-10-batches-py/data_batch_1" in err
    assert not (tmp_path / "data/prepared/cifar10").exists()
    params = _params_with(tmp_path, "cifar10", "cifar10", {"resolution": 32}, raw)
    assert stage.main(["--params", str(params), "--dataset", "cifar10"]) == 2
    assert "datasets.cifar10.prepare: " in (err := capsys.readouterr().err)
    assert "unknown options ['resolution']" in err


def test_spurious_digits_tint_agrees_with_y_in_train_only() -> None:
    from pipeline.data.spurious_digits import TINTS, load_spurious_digits

    r = load_spurious_digits(correlation=0.95)
    train, test = r.splits["train"], r.splits["test"]
    agree = np.mean(train.labels["attribute"] == train.labels["y"])
    assert 0.92 < agree < 0.98
    assert 0.4 < np.mean(test.labels["attribute"] == test.labels["y"]) < 0.6
    np.testing.assert_array_equal(train.labels["group"], 2 * train.labels["y"] + train.labels["attribute"])
    # A background pixel (corner) carries exactly the tint of its attribute.
    corner = train.images[:, :, 0, 0].astype(int)
    blank = train.images.reshape(len(train), 3, -1).min(axis=2).min(axis=1) == 0
    for a in (0, 1):
        rows = (train.labels["attribute"] == a) & (corner.sum(axis=1) > 0)
        assert rows.any()
        np.testing.assert_array_equal(np.unique(corner[rows & blank], axis=0)[:1], [TINTS[a].astype(int)])
    assert r.image_shape == (3, 8, 8)


# --- The cache is trusted by its content: sizes and sha256s written with it --------------------


@pytest.fixture
def mnist_cache(tmp_path: Path, raw) -> tuple[Records, Path]:
    """An mnist cache at ``tmp_path/prepared/mnist`` (the folder name is the dataset's)."""
    root, checksums, _ = raw
    records = load_mnist(root, checksums=checksums)
    return records, cache.write_cache(records, tmp_path / "prepared" / "mnist", {"seed": 0})


def _npy_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.npy"))


def _contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF  # pixel or label data (past the .npy header): the size stays the same
    file.write_bytes(bytes(data))


def test_cache_records_every_file_size_and_sha256_and_is_deterministic(tmp_path: Path, mnist_cache) -> None:
    records, out = mnist_cache
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == cache.FORMAT == 2
    assert sorted(meta["files"]) == _npy_files(out) == sorted(
        f"{s}.{k}.npy" for s in SPLITS for k in ("images", "coarse", "fine"))
    for name, record in meta["files"].items():
        data = (out / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (out / cache.MARKER).read_text() == \
        f"meta.json sha256 {hashlib.sha256((out / 'meta.json').read_bytes()).hexdigest()}\n"
    again = cache.write_cache(records, tmp_path / "again" / "mnist", {"seed": 0})
    assert _contents(again) == _contents(out)  # same records -> byte-identical folder, meta.json included


@pytest.mark.parametrize("name", ["train.images.npy", "val.images.npy", "test.fine.npy", "train.coarse.npy"])
def test_a_truncated_file_is_refused_naming_it_and_the_command_that_rebuilds(mnist_cache, name: str) -> None:
    _, out = mnist_cache
    file = out / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(cache.CacheError) as info:
        cache.read_cache(out)
    message = str(info.value)
    assert message.startswith(f"{file}: ") and "truncated" in message
    assert "`python -m stages.download --dataset mnist`" in message and "`dvc repro download@mnist`" in message
    assert isinstance(info.value, StageError) and isinstance(info.value, RuntimeError)
    assert not cache.is_cached(out, {"seed": 0})


def test_a_flipped_byte_is_found_by_its_hash_and_prepare_rebuilds_identical_bytes(
    tmp_path: Path, fabricated_registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "prepared" / "waterbirds"
    params = {"dataset": "waterbirds", "resolution": 16}
    registry.prepare("waterbirds", fabricated_registry, out, {"resolution": 16}, download=False)
    good = _contents(out)
    assert cache.is_cached(out, params)
    _flip_last_byte(out / "train.images.npy")
    assert (out / "train.images.npy").stat().st_size == len(good["train.images.npy"])
    assert not cache.is_cached(out, params)
    problem = cache.cache_problem(out, params)
    assert problem.file == out / "train.images.npy" and "sha256" in problem.reason
    # read_cache stays cheap: it checks sizes, never hashes the arrays.
    with monkeypatch.context() as patch:
        patch.setattr(cache, "file_sha256", lambda path: pytest.fail(f"read_cache hashed {path}"))
        assert len(cache.read_cache(out).splits["train"]) == 28
    capsys.readouterr()
    registry.prepare("waterbirds", fabricated_registry, out, {"resolution": 16}, download=False)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "train.images.npy" in printed[0] and "rebuilding" in printed[0]
    assert _contents(out) == good


def _format_1(out: Path) -> None:
    """Turn a cache into what the harness wrote before content checks (FORMAT 1)."""
    meta = json.loads((out / "meta.json").read_text())
    del meta["files"]
    (out / "meta.json").write_text(json.dumps({**meta, "format": 1}, indent=1))
    (out / cache.MARKER).write_text("complete\n")


def _delete(name: str):
    return lambda out: (out / name).unlink()


DAMAGE = {
    "no meta.json": ("meta.json", "missing", _delete("meta.json")),
    "no COMPLETE": ("COMPLETE", "no complete prepared cache", _delete(cache.MARKER)),
    "no label file": ("val.fine.npy", "missing", _delete("val.fine.npy")),
    "meta.json cut": ("meta.json", "not valid JSON", lambda out: (out / "meta.json").write_text("{\"format\": 2,")),
    "meta.json edited": ("meta.json", "does not match the sha256 recorded in COMPLETE", lambda out: (
        out / "meta.json").write_text((out / "meta.json").read_text().replace('"task"', '"task" ', 1))),
    "npy header": ("test.images.npy", "not a readable .npy array", lambda out: (out / "test.images.npy").write_bytes(
        b"\0" * (out / "test.images.npy").stat().st_size)),
    "format 1": ("meta.json", "cache format 1, expected 2: built by an older version", _format_1),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_caches_are_refused_by_name_and_rebuilt_by_prepare(
    case: str, tmp_path: Path, fabricated_registry: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    name, reason, damage = DAMAGE[case]
    out = tmp_path / "prepared" / "mnist"
    registry.prepare("mnist", fabricated_registry, out, download=False)
    good = _contents(out)
    damage(out)
    with pytest.raises(cache.CacheError) as info:
        cache.read_cache(out)
    message = str(info.value)
    assert message.startswith(f"{out / name}: ") and reason in message, message
    assert "`python -m stages.download --dataset mnist`" in message
    cache.cache_params(out)  # never raises: a later stage's check gets to read_cache's message
    if case != "npy header":  # that one keeps every size: only the hash check of prepare sees it
        assert cache.cache_problem(out, content=False) is not None
    assert not cache.is_cached(out, {"dataset": "mnist", "val_fraction": 0.1, "split_seed": 0})
    capsys.readouterr()
    registry.prepare("mnist", fabricated_registry, out, download=False)
    printed = capsys.readouterr().out
    assert f"{out / name}: " in printed and "rebuilding the prepared cache" in printed
    assert _contents(out) == good


def test_load_prepared_names_the_file_and_the_dataset_key(tmp_path: Path, raw, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: a truncated data/prepared/<key>/train.images.npy under a later stage."""
    from pipeline.config import validate
    from pipeline.data import load_prepared

    root, checksums, _ = raw
    monkeypatch.chdir(tmp_path)
    p = tiny_params()
    p["datasets"]["mnist_small"] = {"source": "mnist", "prepare": {}, "recipe": p["datasets"]["digits"]["recipe"]}
    params = validate(p)
    records = load_mnist(root, checksums=checksums)
    out = cache.write_cache(records, Path("data/prepared/mnist_small"),
                            {"dataset": "mnist", "val_fraction": 0.1, "split_seed": 0})
    assert_same(records, load_prepared("mnist_small", params.datasets["mnist_small"]))
    with open(out / "train.images.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(cache.CacheError, match=r"^data/prepared/mnist_small/train\.images\.npy: 1000 bytes") as info:
        load_prepared("mnist_small", params.datasets["mnist_small"])
    assert "`python -m stages.download --dataset mnist_small`" in str(info.value)
    assert "mmap length" not in str(info.value)
