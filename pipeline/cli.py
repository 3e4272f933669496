"""Argument parsing, signals and error reporting shared by the thin ``stages/`` entry points.

A stage run from DVC, by hand, or left running overnight ends in one of these ways:

* success: exit 0, outputs written (each atomically, see :mod:`pipeline.io`);
* a params error: one line naming the key path, exit 2, before any work;
* a known failure (:class:`pipeline.errors.StageError`: a non-finite loss, an unreadable or
  missing input file, the same stage already running; or a full disk): one ``error:`` line
  naming the file or key and what to do, exit 1, no traceback;
* SIGINT, SIGTERM or SIGHUP: the signal becomes :class:`Interrupted` (a KeyboardInterrupt),
  so ``finally`` blocks run: temporary files are removed, the MLflow run is marked KILLED and
  a train stage keeps its last resume checkpoint; exit 128 + signal number. (SIGKILL cannot be
  caught: then a temporary file may remain, never a partial output under its final name.)
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import Params, ParamsError, load_params
from pipeline.errors import StageError


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised in the main thread so that cleanup code runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StageBusyError(StageError):
    """The same stage (job, dataset, method, seed) is already running in this workspace."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` while the block runs.

    Only signals still at their default action are taken over: a SIGHUP ignored by ``nohup``
    stays ignored. Outside the main thread (where Python cannot set handlers) nothing changes.
    """
    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous: dict[int, Any] = {}
    try:
        for sig in wanted:
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _raise_interrupted)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Fail with :class:`StageBusyError` if another process runs ``name`` in this working
    directory, else hold the lock while the block runs.

    Guards against running one stage twice at once in a workspace, e.g. a rerun of
    ``dvc repro`` while the stage of a killed ``dvc`` (an orphan: killing ``dvc`` alone does not
    stop its child) is still training and writing the same files. An ``fcntl`` lock is released
    by the kernel when its process dies, so a killed stage never leaves it stale. The lock file
    lives in the temporary folder (named by a hash of the working directory and ``name``): the
    workspace gains no file. No-op where ``fcntl`` is missing (Windows) or the file cannot be
    opened.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    key = hashlib.sha1(f"{Path.cwd().resolve()}\0{name}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"thanos-bench-stage-{key}.lock"
    try:
        handle = open(path, "a+")
    except OSError:  # e.g. a file left by another user
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise StageBusyError(
                f"{name} is already running in this workspace (process {holder}, lock {path}); "
                "wait for it or stop it, then rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_stage(name: str | Callable[[], str], body: Callable[[], Any]) -> int:
    """Run ``body`` as stage ``name`` and turn its ending into an exit code and at most one line.

    ``name`` may be a function: the stage's name as known when it ended (it is settled once
    params are read).

    0 on success; 2 on a params error; 1 on a known failure (:class:`pipeline.errors.StageError`,
    a full disk); 128 + signal number when interrupted (see the module docstring). Any other
    exception is a bug and keeps its traceback.
    """
    def stage() -> str:
        return name() if callable(name) else name

    try:
        with signals_as_interrupts():
            body()
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}: {stage()} did not finish and its outputs are "
              "not complete; rerun `dvc repro` to redo it (a train stage resumes from its last "
              f"checkpoint under {paths.RESUME}/)", file=sys.stderr)
        return 128 + int(signum)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: {stage()}: no space left on the device{where}; free some space and rerun `dvc repro` "
              "(finished outputs are kept, nothing partial is)", file=sys.stderr)
        return 1
    return 0


def stage_main(description: str, job: Callable[..., Any], *, per_run: bool = True,
               argv: list[str] | None = None) -> int:
    """Parse ``--params [--dataset --method --seed]``, validate params, run ``job``; the exit code
    of :func:`run_stage`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_run:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--method", required=True)
        parser.add_argument("--seed", required=True, type=int)
    args = parser.parse_args(argv)
    kind = job.__name__.removesuffix("_job")
    names = [paths.stage_name(kind, args.dataset, args.method, args.seed) if per_run else kind]

    def body() -> None:
        params: Params = load_params(args.params)
        if per_run:  # a typo in a name fails here, before the lock or any work
            params.check_dataset(args.dataset)
            params.check_method(args.method)
            group = params.stage_kind(kind, args.dataset, args.method)  # e.g. train_robust
            names[0] = paths.stage_name(group, args.dataset, args.method, args.seed)
        # Under torchrun every rank runs this same command: each takes its own lock.
        rank = os.environ.get("RANK", "0")
        with exclusive(names[0] if rank == "0" else f"{names[0]}.rank{rank}"):
            if per_run:
                job(params, args.dataset, args.method, args.seed)
            else:
                job(params)

    return run_stage(lambda: names[0], body)
