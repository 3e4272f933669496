"""MLflow tracking: one run per stage execution, tagged so every number links back to its source.

The store defaults to SQLite at the repository root (``sqlite:////abs/path/mlflow.db``), an
absolute URI that stays right when DVC runs an experiment in a temporary copy of the
workspace (``.dvc/tmp/exps/...``): the copy's runs land in the original repository's store.
``MLFLOW_TRACKING_URI`` overrides it.

The layout is made for comparing models in the MLflow UI (README, "Comparing runs in MLflow"):

* one experiment per dataset, ``thanos-bench/<dataset>``, tagged so that MLflow 3 opens it on the
  runs table (``mlflow.experimentKind``), with a description of how to compare methods;
* one run per model, named ``<method> s<seed>``: the train stage creates it (params, per-epoch
  curves, loss figure) and the evaluate stage logs its metrics into that same run, found by the
  md5 of the model file it evaluates, so a row of the runs table is one model with everything
  measured on it. A concatenation has no train stage: its evaluate stage creates its run. So does
  an evaluation with other ``evaluate`` settings than the run already holds (MLflow params are
  write-once), or of a model whose train run is not in the store;
* every model run has the same param names: ``dataset``, ``method``, ``seed``, ``parts`` (the
  trained methods it is made of, ``+``-joined), ``weights.*`` (one per loss term; a concatenation
  has none), ``data.*``, ``train.*``, ``evaluate.*``;
* one ``report`` run per experiment and report stage execution: per-method summary metrics over
  seeds, and reports/ as artifacts (:func:`log_report`).

Metrics are rounded to 4 significant digits (never below the integer part: counts stay exact) and
group metrics are named by the group (``group_5-9_red_acc``, not ``group_2_acc``). The DVC outputs
keep every digit: MLflow is for looking, the metrics files are the record.

Tags on every run: ``stage`` (``train``, ``train+evaluate``, ``evaluate`` or ``report``), dataset,
method, seed, git_commit, dvc_stage (the stage that created the run; ``dvc_stage_evaluate`` the
one that evaluated it) and MLflow's own ``mlflow.source.git.commit``. A finished run also gets the
md5 of the DVC outputs it holds, the hashes ``dvc.lock`` records: ``model_md5`` (the model file)
and ``metrics_md5`` (the metrics file); that is how the evaluate stage finds its model's run and
how ``python -m stages.log_runs`` recognises a result that is already logged.

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
import math
import os
import re
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
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, token usage).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"  # the experiment page's description
DESCRIPTION = """\
Dataset `{dataset}` of the thanos-bench suite. **One row per model** (method, seed): its params,
training curves (`loss/*`, per epoch) and every evaluation metric; the headline metric is
`{headline}`.

Compare methods: in the runs table choose *Group by* → param `method` (MLflow shows the mean, min
and max of each metric over the seeds), or filter with `params.method = 'thanos'`. Columns: add
`{headline}` under *Metrics*. Charts: *Chart view* → a box or bar chart of `{headline}` grouped by
`method`. The run named **report** (tag `stage = report`) holds the report stage's summary: per
method the mean, std, n and lift over the baseline with its 95 % interval, and `results.md` and the
figures as artifacts. Rows with `stage = train` have not been evaluated yet.

The numbers of record are DVC's (`dvc metrics show`, `reports/results.md`); MLflow shows them
rounded to 4 significant digits.
"""

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


def stage_outputs(stage: str, dataset: str, method: str, seed: int) -> dict[str, Path]:
    """The DVC outputs a run of ``stage`` holds, by the tag that records each one's md5."""
    kind = paths.stage_kind_of(stage)
    if kind == "train":
        return {"model_md5": paths.model_path(dataset, method, seed)}
    if kind == "evaluate":
        return {"metrics_md5": paths.metrics_path(dataset, method, seed)}
    return {}


def round_metric(value: float) -> float:
    """``value`` to 4 significant digits, never fewer than its integer part (98.444 -> 98.44,
    0.0012345 -> 0.001235, 12345.6 -> 12346): what the MLflow UI shows, not the record."""
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return value
    digits = 4 - (math.floor(math.log10(abs(value))) + 1)
    return round(value, max(digits, 0))


_GROUP_KEY = re.compile(r"(^|/)group_(\d+)_")


def name_groups(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """Metric keys with each group's number replaced by its name, for the MLflow UI:
    ``erm.average/group_2_acc`` -> ``erm.average/group_5-9_red_acc`` for group 2 = "5-9 / red".
    Keys without a group, and numbers ``names`` does not cover, are kept."""
    slugs = [re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") for name in names]

    def rename(key: str) -> str:
        def one(m: re.Match[str]) -> str:
            k = int(m.group(2))
            return f"{m.group(1)}group_{slugs[k]}_" if k < len(slugs) and slugs[k] else m.group(0)
        return _GROUP_KEY.sub(one, key)

    return {rename(k): v for k, v in metrics.items()}


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


def experiment_tags(dataset: str, headline: str | None = None) -> dict[str, str]:
    """The tags of experiment ``thanos-bench/<dataset>``: its kind and its description."""
    text = DESCRIPTION.format(dataset=dataset, headline=headline or "the headline metric")
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], DESCRIPTION_TAG: text}


def experiment_id(client: Any, dataset: str, headline: str | None = None) -> str:
    """The id of experiment ``thanos-bench/<dataset>``, created if missing (safe against a race),
    with its :func:`experiment_tags` (set where they differ; the description names ``headline``
    once a stage that knows it, evaluate or report, has run)."""
    name = f"{EXPERIMENT_PREFIX}/{dataset}"
    found = _retrying(lambda: client.get_experiment_by_name(name))
    if found is None:
        try:
            return _retrying(lambda: client.create_experiment(name, tags=experiment_tags(dataset, headline)))
        except Exception:
            found = client.get_experiment_by_name(name)  # another process created it first
            if found is None:
                raise
    wanted = experiment_tags(dataset, headline)
    if headline is None and found.tags.get(DESCRIPTION_TAG):
        wanted.pop(DESCRIPTION_TAG)  # a train stage does not know the headline: keep a better text
    for key, value in wanted.items():
        if found.tags.get(key) != value:
            _retrying(lambda: client.set_experiment_tag(found.experiment_id, key, value))
    return found.experiment_id


def run_params(params: Any, kind: str, dataset: str, method: str, seed: int) -> dict[str, Any]:
    """The params a model run logs, the same names in every run (module docstring): the identity
    (``dataset``, ``method``, ``seed``, ``parts``), the params.yaml entries that made the model
    (``data.*``, ``train.*``, ``weights.*`` for a trained method) and, for ``kind`` "evaluate",
    the evaluation settings (``evaluate.*``)."""
    from dataclasses import asdict

    if kind not in ("train", "evaluate"):
        raise ValueError(f"no MLflow params for stage kind {kind!r}; expected 'train' or 'evaluate'")
    parts = params.methods.concat[method] if params.is_concat(method) else [method]
    out: dict[str, Any] = {"dataset": dataset, "method": method, "seed": seed, "parts": "+".join(parts),
                           "data": asdict(params.datasets[dataset]), "train": asdict(params.train)}
    if not params.is_concat(method):
        out["weights"] = asdict(params.methods.trained[method])
    if kind == "evaluate":
        out["evaluate"] = asdict(params.evaluate)
    return out


def param_conflicts(logged: Mapping[str, str], wanted: Mapping[str, Any]) -> list[str]:
    """The flattened keys of ``wanted`` that a run already holds (``logged``) with another value:
    MLflow params are write-once."""
    return sorted(k for k, v in flatten_params(wanted).items() if k in logged and logged[k] != _param_text(v))


def _param_text(value: Any) -> str:
    return str(value)[:500]


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
                          "outputs are unaffected (re-log later: python -m stages.log_runs)",
                          stacklevel=_outside_stacklevel())

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, _param_text(v)) for k, v in flatten_params(params).items()]
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
            batch += [Metric(k.replace("@", "_"), round_metric(v), now, at)
                      for k, v in record.items() if not (isinstance(step, str) and k == step)]
        self._call("log metrics", "log_batch", metrics=batch)

    def log_figure(self, figure: Any, name: str) -> None:
        self._call(f"log figure {name}", "log_figure", figure, name)

    def log_artifact(self, path: str | Path) -> None:
        self._call(f"log artifact {path}", "log_artifact", str(path))

    def log_artifacts(self, folder: str | Path, under: str) -> None:
        """Every file of ``folder``, as artifacts under ``under/``."""
        self._call(f"log artifacts {folder}", "log_artifacts", str(folder), under)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("set tags", "log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def delete_tag(self, key: str) -> None:
        self._call(f"delete tag {key}", "delete_tag", key)

    def end(self, status: str) -> None:
        self._call("end the run", "set_terminated", status=status)


def run_name(method: str, seed: int) -> str:
    """A model run's name: method and seed first, short enough for the runs table."""
    return f"{method} s{seed}"


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that names the first caller outside this module
    and :mod:`contextlib` (the stage's ``with`` line), however deep the run helpers nest."""
    import contextlib

    inside = {__file__, contextlib.__file__}
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename in inside:
        frame, level = frame.f_back, level + 1
    return level


def _unavailable(uri: str, err: BaseException, strict: bool) -> Run:
    message = f"MLflow: tracking store {uri} unavailable ({describe_error(err)})"
    if strict:
        raise TrackingError(message) from err
    warnings.warn(f"{message}; running without tracking, DVC outputs are unaffected "
                  "(re-log later: python -m stages.log_runs)", stacklevel=_outside_stacklevel())
    return Run(None, None)


@contextmanager
def _closing(run: Run, outputs: Mapping[str, Path]) -> Iterator[Run]:
    """Yield ``run``; then FINISHED with the md5 tag of each output that exists (clearing an
    ``error`` an earlier attempt left), FAILED if the body raised (tag ``error``), KILLED if it
    was interrupted (KeyboardInterrupt, or a signal turned into one by :mod:`pipeline.cli`)."""
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
    hashes = {tag: file_md5(path) for tag, path in outputs.items() if path.is_file()}
    if hashes:
        run.set_tags(hashes)
    run.end("FINISHED")


def _new_run(stage: str, dataset: str, name: str, tags: Mapping[str, str], *, headline: str | None,
             strict: bool) -> Run:
    """A RUNNING run of ``stage`` in the dataset's experiment (stale runs of the stage closed
    first), or a no-op :class:`Run` (a warning; with ``strict`` an error) if the store fails."""
    commit = git_commit(repository_root())
    here = whereabouts(stage)
    all_tags = {"dataset": dataset, "dvc_stage": stage, "git_commit": commit,
                "mlflow.source.git.commit": commit, **here, **tags}
    uri = tracking_uri()
    try:
        from mlflow.tracking.context.registry import resolve_tags

        client = connect(uri)
        with quiet_store_logs():
            exp = experiment_id(client, dataset, headline)
            stale = close_stale_runs(client, exp, stage, here)
            active = _retrying(lambda: client.create_run(exp, run_name=name, tags=resolve_tags(all_tags)))
    except Exception as err:
        return _unavailable(uri, err, strict)
    if stale:
        print(f"MLflow: marked {len(stale)} stale RUNNING run(s) of {stage} KILLED: process(es) "
              f"{', '.join(stale)} on {here['host']} ended without closing them", file=sys.stderr, flush=True)
    return Run(client, active.info.run_id, strict=strict)


@contextmanager
def start_run(stage: str, dataset: str, method: str, seed: int,
              params: Mapping[str, Any] | None = None, *, tags: Mapping[str, str] | None = None,
              headline: str | None = None, strict: bool = False) -> Iterator[Run]:
    """A new model run (named :func:`run_name`) for one execution of ``stage``.

    First, RUNNING runs of the same stage left by processes that are gone (killed with SIGKILL,
    say) are marked KILLED (:func:`close_stale_runs`), and one line on stderr says how many.
    On exit it is FINISHED (tagged with the md5 of the stage's outputs that exist,
    :func:`stage_outputs`), FAILED if the body raised an error (tagged ``error`` with its
    message), or KILLED if it was interrupted.
    With ``strict=False`` (stages) an unreachable store is a warning; with ``strict=True``
    (re-logging) it raises :class:`TrackingError`.
    """
    identity = {"stage": paths.stage_kind_of(stage), "method": method, "seed": str(seed), **(tags or {})}
    run = _new_run(stage, dataset, run_name(method, seed), identity, headline=headline, strict=strict)
    if params:
        run.log_params(params)
    with _closing(run, stage_outputs(stage, dataset, method, seed)) as opened:
        yield opened


def find_model_run(client: Any, experiment: str, method: str, seed: int, model_md5: str) -> Any | None:
    """The newest run in ``experiment`` whose train stage wrote the model file with ``model_md5``."""
    if "'" in method:  # not a method name params.yaml accepts; no filter quoting to get wrong
        return None
    with quiet_store_logs():
        found = _retrying(lambda: client.search_runs(
            [experiment], f"tags.method = '{method}' and tags.seed = '{seed}' and tags.model_md5 = '{model_md5}'",
            max_results=1, order_by=["attributes.start_time DESC"]))
    return found[0] if found else None


@contextmanager
def evaluation_run(stage: str, dataset: str, method: str, seed: int, params: Mapping[str, Any], *,
                   model: Path | None, headline: str | None = None,
                   strict: bool = False) -> Iterator[Run]:
    """The run an evaluate stage logs into: the run of the model it evaluates, or a new one.

    ``model`` is the model file the embeddings came from (None for a concatenation, which has
    none). Its md5 finds the train stage's run (:func:`find_model_run`); the evaluation's
    params (``evaluate.*``) are added to it and its ``stage`` tag becomes ``train+evaluate``.
    A new run (:func:`start_run`, ``stage = evaluate``) is made for a concatenation, where no
    run holds that model, and where the run holds other values of these params (another
    ``evaluate`` setting of the same model: MLflow params are write-once). On exit, as
    :func:`start_run`: ``metrics_md5``, FINISHED / FAILED / KILLED.
    """
    uri = tracking_uri()
    found = None
    if model is not None and model.is_file():
        try:
            client = connect(uri)
            with quiet_store_logs():
                exp = experiment_id(client, dataset, headline)
                found = find_model_run(client, exp, method, seed, file_md5(model))
        except Exception as err:
            yield _unavailable(uri, err, strict)
            return
    if found is None or param_conflicts(found.data.params, params):
        with start_run(stage, dataset, method, seed, params, headline=headline, strict=strict) as run:
            yield run
        return
    run = Run(client, found.info.run_id, strict=strict)
    commit = git_commit(repository_root())
    run.set_tags({"stage": "train+evaluate", "dvc_stage_evaluate": stage, "git_commit_evaluate": commit})
    if "error" in found.data.tags:  # an earlier evaluation failed; this one starts afresh
        run.delete_tag("error")
    run.log_params({k: v for k, v in flatten_params(params).items() if k not in found.data.params})
    with _closing(run, stage_outputs(stage, dataset, method, seed)) as opened:
        yield opened


def _report_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{method: {stat: number | {..}}}`` -> ``{"method/stat": number}`` (nested keys joined with
    "."), numbers only: a null (an undefined std) or a text is left out."""
    flat = flatten_params(summary)
    out: dict[str, float] = {}
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        method, _, rest = key.partition(".")
        out[f"{method}/{rest}" if rest else method] = float(value)
    return out


def log_report(dataset: str, summary: Mapping[str, Any], artifacts: Sequence[Path], *,
               summary_file: Path | None = None, headline: str | None = None, tags: Mapping[str, str] | None = None,
               strict: bool = False) -> str | None:
    """Log one ``report`` run into the dataset's experiment: ``summary`` (per method, the report's
    statistics over seeds) as metrics ``<method>/<statistic>``, and each existing file or folder of
    ``artifacts`` (results.md, the figures); tagged ``summary_md5``, the md5 of ``summary_file``
    (the report's summary.json, as dvc.lock records it). Returns the run id (None without a store)."""
    run = _new_run("report", dataset, "report", {"stage": "report", **(tags or {})}, headline=headline,
                   strict=strict)
    with _closing(run, {"summary_md5": summary_file} if summary_file else {}) as opened:
        opened.log_metrics(_report_metrics(summary))
        for path in artifacts:
            if path.is_dir():
                opened.log_artifacts(path, path.name)
            elif path.is_file():
                opened.log_artifact(path)
    return run.run_id


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
