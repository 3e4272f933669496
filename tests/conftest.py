"""Shared fixtures: a tiny copy of the project's params, and a scratch working directory."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Workers x threads never exceed the cores: `make test` runs pytest-xdist workers (one file per
# worker at a time), and every torch, BLAS or OpenMP pool a test starts (in-process or in a
# subprocess) inherits this setting. Only a worker sets it: the workers inherit the controller's
# environment, so a value the controller set would reach them as if the user had set it (it did,
# and two workers ran 2 threads each on 2 cores: the fast tier took 296 s instead of 178 s).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _WORKERS = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    for _pool in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_pool, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# The longest module (the paper suite's smoke run, most of the slow tier's time) goes first, so
# that a worker starts it at once while the others share the remaining files.
_FIRST = ("test_paper_suite.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in _FIRST)  # stable: the rest keep their order


def repo_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(epochs: int = 1, seeds: tuple[int, ...] = (0,),
                methods: tuple[str, ...] | None = None, robustness: tuple[str, ...] = ()) -> dict[str, Any]:
    """The repository's params with tiny training settings (and optionally fewer methods).

    Only digits runs unless ``robustness`` names datasets for ``suite.robustness`` (with the
    repository's chosen methods there, restricted to ``methods``).
    """
    p = copy.deepcopy(repo_params())
    p["suite"]["seeds"] = list(seeds)
    robust = p["suite"]["robustness"]
    robust["datasets"] = list(robustness)
    for ds in ("digits", *robustness):
        recipe = p["datasets"][ds]["recipe"]
        recipe["epochs"] = epochs
        recipe["batch_size"] = 64
    p["evaluate"]["head"]["epochs"] = 3
    p["train"]["checkpoint_every"] = 1
    if methods is not None:
        p["methods"]["trained"] = {m: w for m, w in p["methods"]["trained"].items() if m in methods}
        p["methods"]["concat"] = {m: parts for m, parts in p["methods"]["concat"].items()
                                  if m in methods and all(x in methods for x in parts)}
        robust["trained"] = [m for m in robust["trained"] if m in p["methods"]["trained"]]
        robust["concat"] = [m for m in robust["concat"] if m in p["methods"]["concat"]
                            and all(x in robust["trained"] for x in p["methods"]["concat"][m])]
    return p


def params_error(mutate: Any) -> str:
    """The message of the ParamsError that validating the repository's params, after
    ``mutate(params)``, raises (the test fails if none is raised)."""
    from pipeline.config import ParamsError, validate

    p = repo_params()
    mutate(p)
    with pytest.raises(ParamsError) as info:
        validate(p)
    return str(info.value)


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def free_port() -> int:
    """A loopback TCP port that nothing listens on (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What a DVC run of the project needs, copied into a scratch project by :func:`copy_project`.
PROJECT_FILES = ["pipeline", "stages", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def copy_project(root: Path, params: dict[str, Any]) -> Path:
    """A scratch copy of the project at ``root`` (a git repository) with ``params`` as params.yaml."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    write_params(root / "params.yaml", params)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def prepare_in(root: Path, params: dict[str, Any]) -> Path:
    """Write ``params`` to ``root/params.yaml`` and run the digits download stage there."""
    from pipeline.config import validate
    from pipeline.jobs.download import download_job

    root.mkdir(parents=True, exist_ok=True)
    path = write_params(root / "params.yaml", params)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        download_job(validate(params), "digits")
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch cwd (stage outputs are relative paths) with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
