"""Shared fixtures: a tiny copy of the project's params, and a scratch working directory."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Keep torch from oversubscribing the 2 CI cores when tests spawn subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def repo_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(epochs: int = 1, seeds: tuple[int, ...] = (0,),
                methods: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The repository's params with tiny training settings (and optionally fewer methods)."""
    p = copy.deepcopy(repo_params())
    p["suite"]["seeds"] = list(seeds)
    recipe = p["datasets"]["digits"]["recipe"]
    recipe["epochs"] = epochs
    recipe["batch_size"] = 64
    p["evaluate"]["head"]["epochs"] = 3
    p["train"]["checkpoint_every"] = 1
    if methods is not None:
        p["methods"]["trained"] = {m: w for m, w in p["methods"]["trained"].items() if m in methods}
        p["methods"]["concat"] = {m: parts for m, parts in p["methods"]["concat"].items()
                                  if m in methods and all(x in methods for x in parts)}
    return p


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch cwd (stage outputs are relative paths) with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
