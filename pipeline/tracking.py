"""MLflow tracking: one run per stage execution, tagged so every number links back to its source.

The store defaults to SQLite at the repository root (``sqlite:////abs/path/mlflow.db``), an
absolute URI that stays right when DVC runs an experiment in a temporary copy of the
workspace (``.dvc/tmp/exps/...``): the copy's runs land in the original repository's store.
``MLFLOW_TRACKING_URI`` overrides it.

Tags on every run: dataset, method, seed, git_commit, dvc_stage (and MLflow's own
``mlflow.source.git.commit``); a finished run also gets ``output_md5``, the md5 of the DVC
output it stands for (the model file of a train run, the metrics file of an evaluate run:
the same hash ``dvc.lock`` records), which is how ``python -m stages.log_runs`` recognises
a run that is already logged.

Tracking is a side channel: if the store cannot be reached, or stops answering mid-run, the
stage still finishes and writes its DVC outputs; one warning says what was not logged, and
the run makes no further calls. Three things keep that cheap:

* MLflow's HTTP client retries a dead server for about four minutes per call by default; unless
  the user set them, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_TIMEOUT`` are
  bounded here (:data:`HTTP_DEFAULTS`: a refused connection fails in ~3 s, a hung server in ~35 s);
* the run is driven through an explicit :class:`mlflow.MlflowClient`, not the fluent API, so no
  ``atexit`` hook calls a dead server again when the process exits;
* with SQLite, the first access of a fresh store (which runs MLflow's schema migrations) is
  serialised across processes by a file lock, and "database is locked" errors are retried with
  a bounded backoff: two stages may log to one store at the same time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pipeline import paths

EXPERIMENT_PREFIX = "thanos-bench"

# Set only where the user has not: a dead server then costs seconds, not minutes (MLflow's defaults
# are 7 retries with backoff factor 2 and a 120 s timeout, made for rate-limited hosted servers).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Waits (s) before retrying an SQLite "database is locked" error; MLflow's own busy timeout
# (20 s per statement) comes first, so these only matter under sustained contention.
LOCKED_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)

T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking store failed and the caller asked for errors, not warnings (``strict=True``)."""


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


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes, as ``dvc.lock`` records it for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_output(stage: str, dataset: str, method: str, seed: int) -> Path | None:
    """The DVC output a run of ``stage`` stands for (its ``output_md5`` tag), if the stage has one."""
    kind = stage.split("@")[0].removesuffix("_robust").removesuffix("_concat")
    if kind == "train":
        return paths.model_path(dataset, method, seed)
    if kind == "evaluate":
        return paths.metrics_path(dataset, method, seed)
    return None


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


def bound_http_retries() -> None:
    """Put :data:`HTTP_DEFAULTS` into the environment where the user has not set them."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///...`` URI, else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


@contextmanager
def _store_init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive, cross-process lock while a fresh SQLite store may be created.

    MLflow creates the schema of a new SQLite file on first access, with no lock of its own:
    two processes doing that at once fail ("duplicate column name", alembic version errors).
    The lock file lives in the temporary folder (named by a hash of the database path), so the
    repository gains no file. Where ``fcntl`` is missing (Windows) this is a no-op.
    """
    db = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    name = hashlib.sha1(str(db).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"thanos-bench-mlflow-{name}.lock"
    try:
        handle = open(lock, "a")
    except OSError:  # e.g. another user's lock file: go on unlocked, as MLflow itself would
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_locked(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text


def _retrying(fn: Callable[[], T], delays: Sequence[float] = LOCKED_RETRY_DELAYS) -> T:
    """``fn()``, retried after each of ``delays`` while it fails with an SQLite lock error."""
    for delay in (*delays, None):
        try:
            return fn()
        except Exception as err:
            if delay is None or not _is_locked(err):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def connect(uri: str | None = None) -> Any:
    """An :class:`mlflow.MlflowClient` for ``uri`` (default :func:`tracking_uri`), store initialised."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    bound_http_retries()
    with _store_init_lock(uri):  # the client opens the store at once: a fresh one gets its schema
        client = _retrying(lambda: MlflowClient(uri))
        _retrying(lambda: client.search_experiments(max_results=1))
    return client


def experiment_id(client: Any, dataset: str) -> str:
    """The id of experiment ``thanos-bench/<dataset>``, created if missing (safe against a race)."""
    name = f"{EXPERIMENT_PREFIX}/{dataset}"
    found = _retrying(lambda: client.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    try:
        return _retrying(lambda: client.create_experiment(name))
    except Exception:
        found = client.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


def run_params(params: Any, kind: str, dataset: str, method: str) -> dict[str, Any]:
    """What a ``kind`` ("train" | "evaluate") run logs as params: the params.yaml entries it reads."""
    from dataclasses import asdict

    if kind == "train":
        return {"dataset": asdict(params.datasets[dataset]),
                "weights": asdict(params.methods.trained[method]), "train": asdict(params.train)}
    if kind == "evaluate":
        spec = (params.methods.concat[method] if params.is_concat(method)
                else asdict(params.methods.trained[method]))
        return {"method": spec, "evaluate": asdict(params.evaluate)}
    raise ValueError(f"no MLflow params for stage kind {kind!r}; expected 'train' or 'evaluate'")


class Run:
    """A live MLflow run, or a no-op (``Run(None, None)``) after the tracking store failed.

    Every call goes through :meth:`_call`: the first failure warns once (or, with ``strict``,
    raises :class:`TrackingError`) and turns the run into a no-op, so a dead server is not
    asked again on every epoch.
    """

    def __init__(self, client: Any | None, run_id: str | None, *, strict: bool = False) -> None:
        self._client = client
        self.run_id = run_id
        self.strict = strict

    def _call(self, what: str, fn: str, *args: Any, **kwargs: Any) -> None:
        if self._client is None:
            return
        client = self._client
        try:
            _retrying(lambda: getattr(client, fn)(self.run_id, *args, **kwargs))
        except Exception as err:  # tracking must never cost a result
            self._client = None
            message = f"MLflow: could not {what} ({type(err).__name__}: {err})"
            if self.strict:
                raise TrackingError(message) from err
            warnings.warn(f"{message}; no further logging for this run, the stage goes on and its DVC "
                          "outputs are unaffected (re-log later: python -m stages.log_runs)", stacklevel=3)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:500]) for k, v in flatten_params(params).items()]
        self._call("log params", "log_batch", params=flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_history([dict(metrics)], step=step)

    def log_history(self, records: Sequence[Mapping[str, float]], step: int | str | None = None) -> None:
        """Several metric dicts in one call; ``step`` is an int for all, or the key holding each
        record's step (that key is not logged), e.g. ``log_history(history, step="epoch")``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for record in records:
            at = int(record[step]) if isinstance(step, str) else (step or 0)
            batch += [Metric(k.replace("@", "_"), float(v), now, at)
                      for k, v in record.items() if not (isinstance(step, str) and k == step)]
        self._call("log metrics", "log_batch", metrics=batch)

    def log_figure(self, figure: Any, name: str) -> None:
        self._call(f"log figure {name}", "log_figure", figure, name)

    def log_artifact(self, path: str | Path) -> None:
        self._call(f"log artifact {path}", "log_artifact", str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("set tags", "log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str) -> None:
        self._call("end the run", "set_terminated", status=status)


@contextmanager
def start_run(stage: str, dataset: str, method: str, seed: int,
              params: Mapping[str, Any] | None = None, *, tags: Mapping[str, str] | None = None,
              strict: bool = False) -> Iterator[Run]:
    """An MLflow run for one stage execution.

    On exit it is FINISHED (tagged ``output_md5`` when the stage's output exists), FAILED if
    the body raised an error (tagged ``error`` with its message), or KILLED if it was
    interrupted (KeyboardInterrupt, or a signal turned into one by :mod:`pipeline.cli`).
    With ``strict=False`` (stages) an unreachable store is a warning; with ``strict=True``
    (re-logging) it raises :class:`TrackingError`.
    """
    commit = git_commit(repository_root())
    all_tags = {"dataset": dataset, "method": method, "seed": str(seed), "dvc_stage": stage,
                "git_commit": commit, "mlflow.source.git.commit": commit, **(tags or {})}
    uri = tracking_uri()
    try:
        from mlflow.tracking.context.registry import resolve_tags

        client = connect(uri)
        exp = experiment_id(client, dataset)
        active = _retrying(lambda: client.create_run(
            exp, run_name=f"{stage.split('@')[0]}:{method}/seed{seed}", tags=resolve_tags(all_tags)))
        run = Run(client, active.info.run_id, strict=strict)
    except Exception as err:
        message = f"MLflow: tracking store {uri} unavailable ({type(err).__name__}: {err})"
        if strict:
            raise TrackingError(message) from err
        warnings.warn(f"{message}; running without tracking, DVC outputs are unaffected "
                      "(re-log later: python -m stages.log_runs)", stacklevel=3)
        yield Run(None, None)
        return
    if params:
        run.log_params(params)
    try:
        yield run
    except Exception as err:
        run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        run.end("FAILED")
        raise
    except BaseException as err:  # KeyboardInterrupt, SystemExit: stopped from outside
        run.set_tags({"error": type(err).__name__ + (f": {err}" if str(err) else "")})
        run.end("KILLED")
        raise
    output = stage_output(stage, dataset, method, seed)
    if output is not None and output.is_file():
        run.set_tags({"output_md5": file_md5(output)})
    run.end("FINISHED")


def search_all_runs(client: Any, experiment_ids: Sequence[str], filter_string: str = "") -> list[Any]:
    """Every run of the experiments that matches ``filter_string`` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = _retrying(lambda: client.search_runs(list(experiment_ids), filter_string,
                                                   max_results=1000, page_token=token))
        runs += list(page)
        token = page.token
        if not token:
            return runs
