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
  a bounded backoff: two stages may log to one store at the same time. A store SQLite cannot
  open at all fails at once (MLflow alone retries that for ~50 s).

"One warning" is literal: while this module calls the store, the loggers of MLflow's store layer,
SQLAlchemy, alembic and urllib3 are held at CRITICAL (a read-only SQLite store otherwise prints a
~90-line traceback from ``mlflow.store.db.utils`` first), and the warning names the root cause on
one line (:func:`describe_error`).

A process killed with SIGKILL cannot close its run, which would stay RUNNING for ever. So every run
is tagged with where it runs (``host``, ``pid``, ``pid_start``: boot id and start time of that
process, ``pid_namespace``, ``workspace``: the stage's resolved working directory,
``stage_lock``: ``held`` when the stage holds :func:`pipeline.cli.exclusive`), and a new run of
a stage first marks KILLED the RUNNING runs of the same stage whose process is provably gone
(:func:`close_stale_runs`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pipeline import paths
from pipeline.hashing import file_md5  # also imported from here by pipeline.relog and tests

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
# Held at CRITICAL while this module calls the store: every failure there reaches the caller as an
# exception that becomes the one warning, so their own error logs (tracebacks) would only repeat it.
QUIET_LOGGERS = ("mlflow.store", "mlflow.utils.rest_utils", "sqlalchemy", "sqlalchemy.engine", "alembic",
                 "urllib3")
STALE_ERROR = ("process {pid} on {host} ended without closing this run (killed?); "
               "marked KILLED by a later run of the same stage")

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


def stage_output(stage: str, dataset: str, method: str, seed: int) -> Path | None:
    """The DVC output a run of ``stage`` stands for (its ``output_md5`` tag), if the stage has one."""
    kind = paths.stage_kind_of(stage)
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
    path, _, query = uri[len(prefix):].partition("?")
    if "uri=true" in query.lower() and path.startswith("file:"):  # sqlite:///file:/x.db?mode=ro&uri=true
        path = path[len("file:"):]
    return Path(path).resolve() if path and path != ":memory:" else None


def _check_sqlite_opens(uri: str) -> None:
    """Raise at once where SQLite cannot open the store of an ``sqlite:///`` URI at all.

    MLflow retries creating its engine 9 times over ~50 s (``create_sqlalchemy_engine_with_retry``)
    before giving up, e.g. on a ``mode=ro`` URI of a missing file or a folder it may not write in.
    An existing database is opened read-only (nothing is written); a missing one is left to MLflow,
    which creates it (and its folder).
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    target = uri[len(prefix):]
    path, _, query = target.partition("?")
    if "uri=true" in query.lower():
        con = sqlite3.connect(target, uri=True, timeout=20)
    else:
        db = Path(path)
        if not path or path == ":memory:":
            return
        if not db.exists():
            if db.parent.is_dir() and not os.access(db.parent, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot create {db}: its folder is not writable")
            return
        con = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, timeout=20)
    try:
        con.execute("PRAGMA schema_version").fetchone()
    except sqlite3.OperationalError as err:
        if not _is_locked(err):  # busy writers: MLflow waits for them (20 s a statement), and so do we
            raise
    finally:
        con.close()


_quiet = {"depth": 0, "levels": [], "lock": threading.Lock()}


@contextmanager
def quiet_store_logs() -> Iterator[None]:
    """Hold the loggers of :data:`QUIET_LOGGERS` at CRITICAL while the block runs (levels restored
    when the outermost such block, in any thread, ends).

    MLflow configures its loggers when imported, so it is imported first: otherwise restoring
    would undo its configuration.
    """
    import mlflow  # noqa: F401

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    with _quiet["lock"]:
        if _quiet["depth"] == 0:
            _quiet["levels"] = [logger.level for logger in loggers]
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet["lock"]:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                for logger, level in zip(loggers, _quiet["levels"]):
                    logger.setLevel(level)


def describe_error(err: BaseException) -> str:
    """``Type: message`` on one line, naming the root cause of a chain of errors.

    MLflow wraps SQLAlchemy's errors, whose text spans lines (the SQL, its parameters, a link):
    ``MlflowException: (raised as a result of Query-invoked autoflush; ...)\n(sqlite3.Operational
    Error) attempt to write a readonly database\n[SQL: INSERT ...]`` becomes ``MlflowException
    from OperationalError: attempt to write a readonly database``.
    """
    root, seen = err, {id(err)}
    while True:
        cause = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if cause is None or id(cause) in seen:
            break
        root = cause
        seen.add(id(root))
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("(raised as a result of")), "")
    name = type(err).__name__ if root is err else f"{type(err).__name__} from {type(root).__name__}"
    text = f"{name}: {text}" if text else name
    return text if len(text) <= 400 else text[:397] + "..."


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
    # The client opens the store at once: a fresh one gets its schema, under the lock.
    with quiet_store_logs(), _store_init_lock(uri):
        _check_sqlite_opens(uri)
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


def process_start(pid: int | str = "self") -> str | None:
    """``<boot id>:<start time>`` of a process (its start in clock ticks since boot, from
    ``/proc/<pid>/stat``): the same only for the same process, even across pid reuse and reboots.
    None where ``/proc`` is missing (not Linux) or the process is gone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat[stat.rindex(')') + 2:].split()[19]}"  # field 22; the name may hold ')'
    except (OSError, ValueError, IndexError):
        return None


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits for its parent to reap it (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def _pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``): containers on one host have their own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's); anything else: unsure, so it may exist
        return True
    return True


def holds_stage_lock(stage: str) -> bool:
    """Whether this process holds :func:`pipeline.cli.exclusive` for ``stage`` in the working directory.

    ``exclusive`` writes its holder's pid into the lock file (named as there) after taking the lock
    and clears it on release. Only the pid is read: probing the ``flock`` would take the lock for
    an instant, and a stage starting at that instant would be refused as "already running".
    """
    try:
        key = hashlib.sha1(f"{Path.cwd().resolve()}\0{stage}".encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"thanos-bench-stage-{key}.lock"
        return lock.read_text().strip() == str(os.getpid())
    except OSError:
        return False


def whereabouts(stage: str) -> dict[str, str]:
    """The tags that say where a run of ``stage`` runs: ``host``, ``pid``, ``pid_start`` and
    ``pid_namespace`` (where known), ``workspace`` and ``stage_lock`` (``held`` or ``none``)."""
    here = {"host": socket.gethostname(), "pid": str(os.getpid())}
    for key, value in (("pid_start", process_start()), ("pid_namespace", _pid_namespace())):
        if value:
            here[key] = value
    try:
        here["workspace"] = str(Path.cwd().resolve())
    except OSError:  # the working directory was deleted
        pass
    here["stage_lock"] = "held" if holds_stage_lock(stage) else "none"
    return here


def process_gone(tags: Mapping[str, str], here: Mapping[str, str]) -> bool:
    """Whether the process that started a run (its tags) has provably ended, seen from ``here``.

    Only on the same host (and pid namespace). Ended: its pid is free, or a zombie, or taken by
    another process (another ``pid_start``); or both it and ``here`` held the stage lock in the
    same workspace, which only one process at a time can hold (the lock lives in this host's
    temporary folder, so it says nothing about another host even with a shared workspace).
    Without these tags (runs logged before they existed) nothing is provable.
    """
    if not tags.get("host") or tags.get("host") != here.get("host") or not str(tags.get("pid", "")).isdigit():
        return False
    if tags.get("pid_namespace") != here.get("pid_namespace"):  # another container: its pids are not ours
        return False
    if (here.get("stage_lock") == "held" and tags.get("stage_lock") == "held"
            and tags.get("workspace") and tags.get("workspace") == here.get("workspace")
            and tags.get("pid") != here.get("pid")):
        return True
    pid = int(tags["pid"])
    if pid <= 0:
        return False
    if not _pid_exists(pid) or _zombie(pid):
        return True
    started, now = tags.get("pid_start"), process_start(pid)
    return bool(started and now and started != now)  # unsure: a live pid is taken as alive


def close_stale_runs(client: Any, experiment: str, stage: str, here: Mapping[str, str]) -> list[str]:
    """Mark KILLED (tag ``error`` saying why) each RUNNING run of ``stage`` in ``experiment`` whose
    process is gone (:func:`process_gone`); the pids of the runs marked."""
    if "'" in stage:  # not a stage name this project makes; no filter quoting to get wrong
        return []
    marked = []
    for run in search_all_runs(client, [experiment],
                               f"tags.dvc_stage = '{stage}' and attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if not process_gone(tags, here):
            continue
        run_id = run.info.run_id
        error = STALE_ERROR.format(pid=tags["pid"], host=tags["host"])
        _retrying(lambda: client.set_tag(run_id, "error", error))
        _retrying(lambda: client.set_terminated(run_id, "KILLED"))
        marked.append(tags["pid"])
    return marked


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
            with quiet_store_logs():
                _retrying(lambda: getattr(client, fn)(self.run_id, *args, **kwargs))
        except Exception as err:  # tracking must never cost a result
            self._client = None
            message = f"MLflow: could not {what} ({describe_error(err)})"
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

    First, RUNNING runs of the same stage left by processes that are gone (killed with SIGKILL,
    say) are marked KILLED (:func:`close_stale_runs`), and one line on stderr says how many.
    On exit it is FINISHED (tagged ``output_md5`` when the stage's output exists), FAILED if
    the body raised an error (tagged ``error`` with its message), or KILLED if it was
    interrupted (KeyboardInterrupt, or a signal turned into one by :mod:`pipeline.cli`).
    With ``strict=False`` (stages) an unreachable store is a warning; with ``strict=True``
    (re-logging) it raises :class:`TrackingError`.
    """
    commit = git_commit(repository_root())
    here = whereabouts(stage)
    all_tags = {"dataset": dataset, "method": method, "seed": str(seed), "dvc_stage": stage,
                "git_commit": commit, "mlflow.source.git.commit": commit, **here, **(tags or {})}
    uri = tracking_uri()
    try:
        from mlflow.tracking.context.registry import resolve_tags

        client = connect(uri)
        with quiet_store_logs():
            exp = experiment_id(client, dataset)
            stale = close_stale_runs(client, exp, stage, here)
            active = _retrying(lambda: client.create_run(
                exp, run_name=f"{stage.split('@')[0]}:{method}/seed{seed}", tags=resolve_tags(all_tags)))
        run = Run(client, active.info.run_id, strict=strict)
    except Exception as err:
        message = f"MLflow: tracking store {uri} unavailable ({describe_error(err)})"
        if strict:
            raise TrackingError(message) from err
        warnings.warn(f"{message}; running without tracking, DVC outputs are unaffected "
                      "(re-log later: python -m stages.log_runs)", stacklevel=3)
        yield Run(None, None)
        return
    if stale:
        print(f"MLflow: marked {len(stale)} stale RUNNING run(s) of {stage} KILLED: process(es) "
              f"{', '.join(stale)} on {here['host']} ended without closing them", file=sys.stderr, flush=True)
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
        with quiet_store_logs():
            page = _retrying(lambda: client.search_runs(list(experiment_ids), filter_string,
                                                       max_results=1000, page_token=token))
        runs += list(page)
        token = page.token
        if not token:
            return runs
