"""A stage killed with SIGKILL cannot close its MLflow run: the next run of the same stage does.

Every process here is real: a stage process that opened its run through ``start_run`` and was
killed with SIGKILL, another that is alive in another workspace, a real SQLite store. Runs as
left behind by a process whose pid was later reused are written into the store as the tags such a
process would have left (a pid cannot be made to wrap around on demand).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from pipeline.cli import exclusive
from pipeline.tracking import STALE_ERROR, process_start, start_run

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

STAGE = "train@digits-supcon-0"

# A stage process: opens its run like a train stage, says so, then works for ever.
STAGE_PROCESS = """
import sys, time
from pipeline.tracking import start_run
with start_run(sys.argv[1], "digits", "supcon", 0, {"x": 1}) as run:
    print("started", run.run_id, flush=True)
    time.sleep(600)
"""


def _env(db: Path) -> dict[str, str]:
    """A stage's environment: this checkout importable, one thread, the store ``db``.

    Without pytest's PYTEST_CURRENT_TEST: MLflow checks its own sessions differently under pytest.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_HTTP_REQUEST") and k != "PYTEST_CURRENT_TEST"}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    return env


def _spawn(workspace: Path, db: Path, stage: str = STAGE) -> subprocess.Popen:
    """A stage process in ``workspace`` (see :func:`_opened`)."""
    workspace.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", STAGE_PROCESS, stage], cwd=workspace, env=_env(db),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _opened(proc: subprocess.Popen) -> str:
    """The id of the run that the stage process ``proc`` opened, once it is open."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("started "):
                return line.split()[1]
        if proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the stage process opened no run (exit {proc.returncode}): {err}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


def _client(db: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{db}")


def _status(db: Path, run_id: str) -> str:
    return _client(db).get_run(run_id).info.status


def _started(workspace: Path, db: Path, procs: list) -> tuple[subprocess.Popen, str]:
    """A stage process in ``workspace`` (killed at teardown), once its run is open: (it, the run id)."""
    proc = _spawn(workspace, db)
    procs.append(proc)
    return proc, _opened(proc)


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_run_left_by_a_killed_stage_is_marked_killed_by_the_next_run(
        tmp_path: Path, store: Path, procs: list, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    workspace = tmp_path / "ws"
    proc, old = _started(workspace, store, procs)
    tags = _client(store).get_run(old).data.tags
    assert tags["host"] == socket.gethostname() and tags["pid"] == str(proc.pid)
    assert tags["workspace"] == str(workspace.resolve())
    _sigkill(proc)
    assert _status(store, old) == "RUNNING"  # nobody closed it

    monkeypatch.chdir(workspace)
    with start_run(STAGE, "digits", "supcon", 0) as run:
        assert _status(store, old) == "KILLED"  # before the new run's work starts
        new = run.run_id
    old_run = _client(store).get_run(old)
    assert old_run.info.status == "KILLED" and old_run.info.end_time is not None
    assert old_run.data.tags["error"] == STALE_ERROR.format(pid=proc.pid, host=socket.gethostname())
    assert "marked KILLED by a later run of the same stage" in old_run.data.tags["error"]
    assert _status(store, new) == "FINISHED"
    err = capsys.readouterr().err
    assert err.count("MLflow: marked 1 stale RUNNING run(s) of train@digits-supcon-0 KILLED") == 1, err
    # A third run finds nothing left to mark, and says nothing.
    with start_run(STAGE, "digits", "supcon", 0):
        pass
    assert "stale" not in capsys.readouterr().err


def test_live_runs_elsewhere_and_other_stages_are_left_running(
        tmp_path: Path, store: Path, procs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    killed = _spawn(tmp_path / "a", store)
    alive_elsewhere = _spawn(tmp_path / "b", store)
    alive_here = _spawn(tmp_path / "a", store)  # no stage lock: a second live process is possible
    other_stage = _spawn(tmp_path / "c", store, stage="train@digits-ce-0")
    procs += [killed, alive_elsewhere, alive_here, other_stage]
    dead, elsewhere, here, other = (_opened(p) for p in procs)
    _sigkill(killed)
    _sigkill(other_stage)

    monkeypatch.chdir(tmp_path / "a")
    with start_run(STAGE, "digits", "supcon", 0):
        pass
    assert _status(store, dead) == "KILLED"
    assert _status(store, elsewhere) == "RUNNING"  # alive in another workspace
    assert _status(store, here) == "RUNNING"  # alive in this workspace
    assert _status(store, other) == "RUNNING"  # dead, but another stage: its own next run closes it
    assert alive_elsewhere.poll() is None and alive_here.poll() is None


def _record(db: Path, **tags: str) -> str:
    """A RUNNING run of STAGE with ``tags``, as some earlier process left it in the store."""
    client = _client(db)
    exp = client.get_experiment_by_name("thanos-bench/digits")
    exp_id = exp.experiment_id if exp else client.create_experiment("thanos-bench/digits")
    return client.create_run(exp_id, tags={"dvc_stage": STAGE, **tags}).info.run_id


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux /proc")
def test_pid_reuse_other_hosts_untagged_runs_and_the_stage_lock(
        tmp_path: Path, store: Path, procs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # A live process that is not the one that started any of the runs below.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    procs.append(bystander)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, live, gone = socket.gethostname(), str(bystander.pid), str(dead.pid)
    real_start = None
    deadline = time.monotonic() + 10
    while real_start is None and time.monotonic() < deadline:
        real_start = process_start(bystander.pid)
    assert real_start is not None
    boot = real_start.split(":")[0]
    ws, ns = str(workspace.resolve()), os.readlink("/proc/self/ns/pid")
    reused = _record(store, host=host, pid_namespace=ns, pid=live, pid_start=f"{boot}:1", workspace="/elsewhere")
    same_process = _record(store, host=host, pid_namespace=ns, pid=live, pid_start=real_start,
                           workspace="/elsewhere")
    other_host = _record(store, host="elsewhere.invalid", pid=gone, workspace="/elsewhere")
    other_host_same_ws = _record(store, host="elsewhere.invalid", pid=gone, workspace=ws, stage_lock="held")
    other_container = _record(store, host=host, pid_namespace="pid:[1]", pid=gone, workspace="/elsewhere")
    untagged = _record(store)
    locked_here = _record(store, host=host, pid_namespace=ns, pid=live, workspace=ws,  # start time unknown
                          stage_lock="held")

    monkeypatch.chdir(workspace)
    with start_run(STAGE, "digits", "supcon", 0):  # without the stage lock
        pass
    status = {name: _status(store, run_id) for name, run_id in [
        ("reused", reused), ("same_process", same_process), ("other_host", other_host),
        ("other_host_same_ws", other_host_same_ws), ("other_container", other_container),
        ("untagged", untagged), ("locked_here", locked_here)]}
    assert status == {"reused": "KILLED", "same_process": "RUNNING", "other_host": "RUNNING",
                      "other_host_same_ws": "RUNNING", "other_container": "RUNNING", "untagged": "RUNNING",
                      "locked_here": "RUNNING"}

    # Holding the stage lock in this workspace proves that the process of a run that held it here is gone.
    with exclusive(STAGE), start_run(STAGE, "digits", "supcon", 0) as run:
        assert _client(store).get_run(run.run_id).data.tags["stage_lock"] == "held"
    assert _status(store, locked_here) == "KILLED"
    assert _status(store, same_process) == "RUNNING" and _status(store, other_host_same_ws) == "RUNNING"
    assert bystander.poll() is None


def test_a_store_that_cannot_mark_them_costs_one_warning_not_the_stage(
        tmp_path: Path, store: Path, procs: list, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    workspace = tmp_path / "ws"
    proc, old = _started(workspace, store, procs)
    _sigkill(proc)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{store}?mode=ro&uri=true")
    ran = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with start_run(STAGE, "digits", "supcon", 0) as run:
            run.log_metrics({"x": 1.0})
            ran = True
    assert ran
    ours = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(ours) == 1 and ours[0].startswith("MLflow: tracking store sqlite:///file:/"), ours
    assert "readonly database" in ours[0] and "\n" not in ours[0]
    assert _status(store, old) == "RUNNING"
    assert "Traceback" not in capsys.readouterr().err
