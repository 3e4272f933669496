"""Datasets by name (the embedded digits and the real ones): how to download each, load it into :class:`Records`, and prepare its cache.

``prepare`` is the whole download stage: download (or verify files placed by hand) ->
load through the dataset's one loader -> write the prepared cache atomically. A cache
already built with the same options is left alone once every file's size and sha256 match
what its meta.json records; a damaged one is rebuilt (one line says which file).

In the smoke mode (``prepare(..., fabricated=True)``) a real dataset is not downloaded: a tiny
copy in its exact on-disk format is written under ``<raw_root>/smoke/<name>`` and read by the
same loader, verified against the copy's own md5s / split sizes. Its cache records
``fabricated: true``, so a real run never takes it for the real data.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ParamsError
from pipeline.data.cache import cache_problem, dataset_statistics, write_cache
from pipeline.data.celeba import download_celeba, load_celeba
from pipeline.data.digits import download_digits, load_digits
from pipeline.data.download import DatasetError
from pipeline.data.spurious_digits import download_spurious_digits, load_spurious_digits
from pipeline.data.cifar import download_cifar10, download_cifar100, load_cifar10, load_cifar100, load_cifar100u
from pipeline.data.mnist import download_mnist, load_mnist
from pipeline.data.options import checks_of
from pipeline.data.records import COARSE_TO_FINE, WORST_GROUP, Records
from pipeline.data.waterbirds import download_waterbirds, load_waterbirds

# Loader arguments that change how fast, not what, is loaded: kept out of the cache's params.
RUNTIME_OPTIONS = frozenset({"workers"})
# Loader arguments that only tests override (verification lists, not data choices).
INTERNAL_OPTIONS = frozenset({"root", "checksums", "split_sizes"})
# Where the smoke mode writes its fabricated copies, under data.raw_root (never a real file's place).
SMOKE_FOLDER = "smoke"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its task, downloader ``download(root, timeout)`` and loader ``load(root, **options)``.

    ``embedded`` datasets ship with an installed package (nothing to download or fabricate).
    Facts the report states about a dataset: ``title`` (its usual spelling); ``reference``, its
    published numbers (METHOD.md section 6: fine accuracy per method for a coarse-to-fine dataset,
    "worst / average" per baseline for a worst-group one) and ``reference_source``, where they
    come from; ``weighted_average``: its papers' "average" accuracy weights the groups by their
    training frequencies (Waterbirds; METHOD.md section 5).
    """

    name: str
    task: str
    download: Callable[..., None]
    load: Callable[..., Records]
    embedded: bool = False
    title: str = ""
    reference: Mapping[str, float | str] | None = None
    reference_source: str = ""
    weighted_average: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """The loader's options and their defaults (what params.yaml may set)."""
        return {
            k: p.default for k, p in inspect.signature(self.load).parameters.items()
            if k not in INTERNAL_OPTIONS
        }


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", COARSE_TO_FINE, download_digits, load_digits, embedded=True),
        DatasetSpec("spurious_digits", WORST_GROUP, download_spurious_digits, load_spurious_digits, embedded=True),
        DatasetSpec("cifar10", COARSE_TO_FINE, download_cifar10, load_cifar10, title="CIFAR-10",
                    reference={"supcon": 51.8, "supcon_cnce": 77.1, "supcon_ae": 71.7, "thanos": 79.1},
                    reference_source="coarse (2) -> fine (10) top-1 from the official repository"),
        DatasetSpec("cifar100", COARSE_TO_FINE, download_cifar100, load_cifar100),
        DatasetSpec("cifar100u", COARSE_TO_FINE, download_cifar100, load_cifar100u),
        DatasetSpec("mnist", COARSE_TO_FINE, download_mnist, load_mnist),
        DatasetSpec("waterbirds", WORST_GROUP, download_waterbirds, load_waterbirds, title="Waterbirds",
                    reference={"ERM": "73-75 / 97-98", "group DRO (true groups)": "91.4 / 93.5", "DFR": "92.9 / 94.2"},
                    reference_source="ResNet-50, ImageNet-pretrained; worst / average", weighted_average=True),
        DatasetSpec("celeba", WORST_GROUP, download_celeba, load_celeba, title="CelebA",
                    reference={"ERM": "47 / 95", "group DRO (true groups)": "88.9 / 92.9", "DFR": "88.3 / 91.3"},
                    reference_source="ResNet-50, ImageNet-pretrained; worst / average"),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise KeyError(f"unknown real dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the loader's arguments, with every default filled in.

    Raises ValueError for an unknown option, or for a value the loader's option check refuses
    (:func:`pipeline.data.options.option_checks`; e.g. a ``coarse_map`` that does not fit the
    dataset's classes): the message starts with the option's name.
    """
    spec = get_spec(name)
    defaults = spec.defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown options {unknown}; allowed: {', '.join(defaults)}")
    resolved = {**defaults, **options}
    for option, check in checks_of(spec.load).items():
        check(resolved[option])
    return resolved


def checked_options(key: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`resolve_options`, its errors as a :class:`ParamsError` naming the params key:
    ``key`` is where ``options`` sit in params.yaml (``datasets.<entry>.prepare``)."""
    try:
        return resolve_options(name, options)
    except ValueError as err:
        message = str(err)
        option = message.split(":", 1)[0]
        joined = f"{key}.{message}" if option in get_spec(name).defaults else f"{key}: {message}"
        raise ParamsError(joined) from None


def smoke_root(root: str | Path, name: str) -> Path:
    """Where the smoke mode writes its fabricated copy of dataset ``name``: ``<root>/smoke/<name>``."""
    return Path(root) / SMOKE_FOLDER / name


def prepare(
    name: str,
    root: str | Path,
    out: str | Path,
    options: Mapping[str, Any] | None = None,
    download: bool = True,
    timeout: float = 30.0,
    *,
    fabricated: bool = False,
) -> Path:
    """Download (if ``download``) and load dataset ``name``, then write its cache to ``out``.

    Returns ``out``. A complete cache at ``out`` built with the same options is reused if
    intact (every file hashed and checked against meta.json); otherwise one line says what is
    wrong with it and it is rebuilt.
    With ``fabricated`` (the smoke mode), a real dataset is neither downloaded nor read from
    ``root``: a tiny copy in its real format is written to :func:`smoke_root` and loaded by the
    same loader, verified against that copy's md5s / split sizes; the cache's recorded params
    carry ``fabricated: true``. Embedded datasets load as usual either way.
    """
    spec = get_spec(name)
    resolved = resolve_options(name, options or {})
    params = {"dataset": name, **{k: v for k, v in resolved.items() if k not in RUNTIME_OPTIONS}}
    fabricate = fabricated and not spec.embedded
    if fabricate:
        params["fabricated"] = True
    problem = cache_problem(out, params, content=True)
    if problem is None:
        return Path(out)
    if Path(out).exists():
        print(f"{name}: {problem}; rebuilding the prepared cache", flush=True)
    if fabricate:
        root, verification = _fabricate(name, root)
    else:
        verification = {}
        if download:
            spec.download(root, timeout=timeout)
    records = spec.load(root, **resolved, **verification)
    return write_cache(records, out, params)


def _fabricate(name: str, root: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write the smoke copy of ``name`` under ``root``: (its root, the loader's verification options)."""
    from pipeline.data.fabricate import SMOKE_WRITERS, fabricate_smoke

    if name not in SMOKE_WRITERS:
        raise DatasetError(f"{name}: no fabricated copy for the smoke mode (suite.smoke); datasets with "
                           f"one: {', '.join(SMOKE_WRITERS)} (pipeline/data/fabricate.py)")
    copy = smoke_root(root, name)
    # Rewritten every time (the bytes are deterministic), so a copy a crash left half-written is never read.
    shutil.rmtree(copy, ignore_errors=True)
    return copy, fabricate_smoke(name, copy)


__all__ = ["DATASETS", "DatasetSpec", "dataset_statistics", "get_spec", "prepare", "resolve_options", "smoke_root"]
