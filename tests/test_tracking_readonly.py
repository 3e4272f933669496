"""A tracking store that is read-only, unreachable or unopenable costs a stage one warning, nothing more.

Each case is a real stage process logging to a real store; what it prints on stderr is counted.
The read-only store is an SQLite URI opened with ``mode=ro``: the tests run as root, who ignores
file permission bits, and SQLite honours ``mode=ro`` for everyone.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from pipeline.tracking import describe_error, start_run

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

# A stage that logs everything a train stage logs, then writes its output.
STAGE = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pipeline.tracking import start_run
with start_run("train@digits-supcon-0", "digits", "supcon", 0, {"train": {"lr": 0.1}}) as run:
    for epoch in (1, 2):
        run.log_metrics({"loss/total": 1.0 / epoch}, step=epoch)
    fig = plt.figure()
    run.log_figure(fig, "loss_curve.png")
    Path("out.txt").write_text("done")
    run.log_artifact("out.txt")
print("stage finished", flush=True)
"""

# A log line of MLflow's own loggers (or SQLAlchemy's, alembic's through MLflow's handler).
LOGGER_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _run_stage(cwd: Path, uri: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_HTTP_REQUEST") and k != "PYTEST_CURRENT_TEST"}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri})
    script = cwd / "stage.py"  # a file, so that the warning shows its line of code as for a real stage
    script.write_text(STAGE)
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    return out, time.monotonic() - start


def _assert_one_warning(out: subprocess.CompletedProcess, expected: str) -> str:
    """The stage finished and its stderr is exactly one MLflow warning: the line, and the line of
    code Python's warning display shows under it. That warning line is returned."""
    err = out.stderr
    assert out.returncode == 0, err
    assert out.stdout.strip().endswith("stage finished"), out.stdout
    assert "Traceback" not in err, err
    assert not [line for line in err.splitlines() if LOGGER_LINE.match(line)], err
    lines = err.splitlines()
    mentions = [line for line in lines if re.search(r"mlflow|tracking|sqlalchemy|alembic", line, re.I)]
    assert len(mentions) == 1, err
    (warning,) = mentions
    assert "UserWarning: MLflow: tracking store" in warning and expected in warning, err
    assert len(lines) == 2 and lines[1].lstrip().startswith("with start_run("), err
    return warning


def _runs_in(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_read_only_store_costs_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with start_run("train@digits-supcon-0", "digits", "supcon", 0):  # a store with a run in it
        pass
    uri = f"sqlite:///file:{db}?mode=ro&uri=true"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # read-only, even for root
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            con.execute("DELETE FROM runs")
    work = tmp_path / "work"
    work.mkdir()
    out, _ = _run_stage(work, uri)
    warning = _assert_one_warning(out, "attempt to write a readonly database")
    assert "MlflowException from OperationalError: attempt to write a readonly database" in warning
    assert (work / "out.txt").read_text() == "done"
    assert _runs_in(db) == 1


def test_unreachable_http_store_costs_one_warning(tmp_path: Path) -> None:
    out, seconds = _run_stage(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    _assert_one_warning(out, "Connection refused")
    assert (tmp_path / "out.txt").read_text() == "done"
    assert seconds < 60


def test_unopenable_sqlite_store_fails_at_once(tmp_path: Path) -> None:
    # MLflow alone retries opening it 9 times over ~50 s, logging each retry.
    out, seconds = _run_stage(tmp_path, f"sqlite:///file:{tmp_path / 'missing.db'}?mode=ro&uri=true")
    _assert_one_warning(out, "unable to open database file")
    assert seconds < 40
    assert not (tmp_path / "missing.db").exists()


def test_corrupt_store_costs_one_warning(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_text("not a database\n" * 100)
    out, _ = _run_stage(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    _assert_one_warning(out, "DatabaseError: file is not a database")


def test_errors_are_described_on_one_line_by_their_root_cause() -> None:
    try:
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(raised as a result of Query-invoked autoflush; ...)\n"
                               "(sqlite3.OperationalError) attempt to write\n[SQL: INSERT ...]") from inner
    except RuntimeError as err:
        described = describe_error(err)
        assert described == "RuntimeError from OperationalError: attempt to write a readonly database"
    multi = ValueError("(raised as a result of X)\nthe real message\n[SQL: ...]")
    assert describe_error(multi) == "ValueError: the real message"
    assert describe_error(KeyError()) == "KeyError"
    assert len(describe_error(ValueError("x" * 1000))) == 400
