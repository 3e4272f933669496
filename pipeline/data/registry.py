"""Datasets by name (the embedded digits and the real ones): how to download each, load it into :class:`Records`, and prepare its cache.

``prepare`` is the whole download stage: download (or verify files placed by hand) ->
load through the dataset's one loader -> write the prepared cache atomically. A cache
already built with the same options is left alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.cache import dataset_statistics, is_cached, write_cache
from pipeline.data.celeba import download_celeba, load_celeba
from pipeline.data.digits import download_digits, load_digits
from pipeline.data.spurious_digits import download_spurious_digits, load_spurious_digits
from pipeline.data.cifar import download_cifar10, download_cifar100, load_cifar10, load_cifar100, load_cifar100u
from pipeline.data.mnist import download_mnist, load_mnist
from pipeline.data.records import COARSE_TO_FINE, WORST_GROUP, Records
from pipeline.data.waterbirds import download_waterbirds, load_waterbirds

# Loader arguments that change how fast, not what, is loaded: kept out of the cache's params.
RUNTIME_OPTIONS = frozenset({"workers"})
# Loader arguments that only tests override (verification lists, not data choices).
INTERNAL_OPTIONS = frozenset({"root", "checksums", "split_sizes"})


@dataclass(frozen=True)
class DatasetSpec:
    """One real dataset: its task, downloader ``download(root, timeout)`` and loader ``load(root, **options)``."""

    name: str
    task: str
    download: Callable[..., None]
    load: Callable[..., Records]

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
        DatasetSpec("digits", COARSE_TO_FINE, download_digits, load_digits),
        DatasetSpec("spurious_digits", WORST_GROUP, download_spurious_digits, load_spurious_digits),
        DatasetSpec("cifar10", COARSE_TO_FINE, download_cifar10, load_cifar10),
        DatasetSpec("cifar100", COARSE_TO_FINE, download_cifar100, load_cifar100),
        DatasetSpec("cifar100u", COARSE_TO_FINE, download_cifar100, load_cifar100u),
        DatasetSpec("mnist", COARSE_TO_FINE, download_mnist, load_mnist),
        DatasetSpec("waterbirds", WORST_GROUP, download_waterbirds, load_waterbirds),
        DatasetSpec("celeba", WORST_GROUP, download_celeba, load_celeba),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise KeyError(f"unknown real dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the loader's arguments, with every default filled in."""
    spec = get_spec(name)
    defaults = spec.defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown options {unknown}; allowed: {', '.join(defaults)}")
    return {**defaults, **options}


def load(name: str, root: str | Path, **options: Any) -> Records:
    """Load dataset ``name`` from raw files under ``root`` (no download)."""
    return get_spec(name).load(root, **resolve_options(name, options))


def prepare(
    name: str,
    root: str | Path,
    out: str | Path,
    options: Mapping[str, Any] | None = None,
    download: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download (if ``download``) and load dataset ``name``, then write its cache to ``out``.

    Returns ``out``. A complete cache at ``out`` built with the same options is reused.
    """
    spec = get_spec(name)
    resolved = resolve_options(name, options or {})
    params = {"dataset": name, **{k: v for k, v in resolved.items() if k not in RUNTIME_OPTIONS}}
    if is_cached(out, params):
        return Path(out)
    if download:
        spec.download(root, timeout=timeout)
    records = spec.load(root, **resolved)
    return write_cache(records, out, params)


__all__ = ["DATASETS", "DatasetSpec", "dataset_statistics", "get_spec", "load", "prepare", "resolve_options"]
