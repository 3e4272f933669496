"""MLflow tracking: one run per stage execution, tagged so every number links back to its source.

The store defaults to SQLite at the repository root (``sqlite:////abs/path/mlflow.db``), an
absolute URI that stays right when DVC runs an experiment in a temporary copy of the
workspace (``.dvc/tmp/exps/...``): the copy's runs land in the original repository's store.
``MLFLOW_TRACKING_URI`` overrides it.

Tags on every run: dataset, method, seed, git_commit, dvc_stage (and MLflow's own
``mlflow.source.git.commit``). Tracking is a side channel: if the store cannot be reached,
the stage still finishes and writes its DVC outputs, and a warning says what was not logged.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXPERIMENT_PREFIX = "thanos-bench"


def repository_root(start: str | Path | None = None) -> Path:
    """The project root, seen through DVC's temporary experiment workspaces."""
    path = Path(start or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    out: dict[str, Any] = {}
    _flatten("", params, out)
    return out


class Run:
    """A live MLflow run, or a no-op after the tracking store failed (with one warning)."""

    def __init__(self, mlflow: Any | None, run_id: str | None) -> None:
        self._mlflow = mlflow
        self.run_id = run_id

    def _call(self, what: str, fn: str, *args: Any, **kwargs: Any) -> None:
        if self._mlflow is None:
            return
        try:
            getattr(self._mlflow, fn)(*args, **kwargs)
        except Exception as err:  # tracking must never cost a result
            warnings.warn(f"MLflow: could not {what} ({type(err).__name__}: {err}); "
                          "the stage goes on and its DVC outputs are unaffected", stacklevel=3)
            self._mlflow = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
        self._call("log metrics", "log_metrics", clean, step=step)

    def log_figure(self, figure: Any, name: str) -> None:
        self._call(f"log figure {name}", "log_figure", figure, name)

    def log_artifact(self, path: str | Path) -> None:
        self._call(f"log artifact {path}", "log_artifact", str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("set tags", "set_tags", dict(tags))


@contextmanager
def start_run(stage: str, dataset: str, method: str, seed: int,
              params: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """An MLflow run for one stage execution; FAILED if the body raises, FINISHED otherwise."""
    tags = {"dataset": dataset, "method": method, "seed": str(seed), "dvc_stage": stage,
            "git_commit": git_commit(repository_root()),
            "mlflow.source.git.commit": git_commit(repository_root())}
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(f"{EXPERIMENT_PREFIX}/{dataset}")
        active = mlflow.start_run(run_name=f"{stage.split('@')[0]}:{method}/seed{seed}", tags=tags)
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten_params(params).items()})
        run = Run(mlflow, active.info.run_id)
    except Exception as err:
        warnings.warn(f"MLflow: tracking store {tracking_uri()} unavailable ({type(err).__name__}: {err}); "
                      "running without tracking, DVC outputs are unaffected", stacklevel=3)
        yield Run(None, None)
        return
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run._call("end the run", "end_run", status=status)
