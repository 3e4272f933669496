"""Parallel stage execution (pipeline/parallel.py) against a serial `dvc repro` of the same tiny project.

DVC is the record: after the parallel run dvc.lock holds what a serial run writes, every output is
byte-identical (both with one CPU thread per stage: sums depend on the thread count), `dvc status`
is clean and a second run does nothing; a failed stage leaves the finished ones recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, tiny_params, write_params

ROOT = Path(__file__).resolve().parents[1]

OUTPUTS = ("artifacts", "reports", "data/prepared")


def _env(project: Path) -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}", OMP_NUM_THREADS="1")


def _run(cmd: list[str], project: Path, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=900)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _parallel(project: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "pipeline.parallel", "--workers", "2", "--threads", "1", *args], project, ok)


def _status(project: Path) -> dict:
    return json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], project).stdout.strip() or "{}")


def _files(project: Path) -> dict[str, bytes]:
    return {str(f.relative_to(project)): f.read_bytes() for top in OUTPUTS for f in sorted((project / top).rglob("*"))
            if f.is_file() and f.name != ".gitignore"}


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def _params() -> dict:
    return tiny_params(epochs=1, methods=("supcon", "ce_ae"))


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of one tiny project (made together: the same code); the first after `dvc repro`."""
    serial, parallel = (copy_project(tmp_path_factory.mktemp(name), _params()) for name in ("serial", "parallel"))
    _run([sys.executable, "-m", "dvc", "repro"], serial)
    return serial, parallel


@pytest.mark.slow  # real DVC runs in subprocesses
def test_parallel_run_equals_a_serial_dvc_repro(projects: tuple[Path, Path]) -> None:
    serial, project = projects
    out = _parallel(project)
    assert "9 ran" in out.stdout, out.stdout  # validate, download, 2 x (train, embed, evaluate), report
    assert _lock(project) == _lock(serial)
    files, expected = _files(project), _files(serial)
    assert sorted(files) == sorted(expected)
    assert [f for f in files if files[f] != expected[f]] == []
    assert _status(project) == {}
    timings = json.loads((project / "logs/stages/timings.json").read_text())
    assert sorted(t["stage"] for t in timings["stages"]) == sorted(_lock(serial))
    assert all(t["status"] == "ran" and t["seconds"] > 0 for t in timings["stages"]) and timings["workers"] == 2
    again = _parallel(project)
    assert "9 unchanged" in again.stdout and "ran" not in again.stdout.splitlines()[-1], again.stdout


@pytest.mark.slow
def test_a_failed_stage_leaves_the_finished_ones_recorded(tmp_path: Path) -> None:
    params = _params()
    params["datasets"]["digits"]["recipe"]["lr"] = 1e30  # every train stage fails: a non-finite loss
    project = copy_project(tmp_path / "failing", params)
    out = _parallel(project, ok=False)
    assert out.returncode == 1
    assert "failed: " in out.stderr and "train@digits-supcon-0" in out.stderr, out.stderr
    assert "non-finite loss" in out.stdout + out.stderr  # the failed stage's log tail is shown
    lock = _lock(project)
    assert set(lock) == {"validate", "download@digits"}  # what finished is recorded, nothing else
    write_params(project / "params.yaml", _params())
    done = _parallel(project)
    assert "unchanged" in done.stdout  # download is not redone
    assert _status(project) == {}


def test_a_stage_stopped_by_a_signal_is_an_interruption_not_a_failure() -> None:
    """Ctrl-C reaches the stages as well as the runner: a stage that reports it (exit 128 + signum,
    pipeline/cli.py) or died of it (-signum) ends the run as interrupted (exit 130), even when its
    exit reaches the runner before the runner's own KeyboardInterrupt. Other deaths are failures."""
    from pipeline.parallel import stopped_by_signal

    assert all(stopped_by_signal(code) for code in (130, 143, 129, -2, -15, -1))
    assert not any(stopped_by_signal(code) for code in (0, 1, 2, 137, -9, -11))


@pytest.mark.slow
def test_ctrl_c_stops_every_stage_and_says_what_is_kept(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground process group) ends the runner, its workers and their
    stages within seconds, with one line and exit 130; nothing keeps running unrecorded."""
    import signal
    import time

    project = copy_project(tmp_path / "interrupted", tiny_params(epochs=30, methods=("supcon", "ce_ae")))
    cmd = [sys.executable, "-m", "pipeline.parallel", "--workers", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=project, env=_env(project), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = project / "logs/stages/train@digits-supcon-0.log"
    deadline = time.time() + 240
    while not (log.is_file() and "digits seed 0" in log.read_text(errors="replace")) and time.time() < deadline:
        time.sleep(1)  # until a train stage is under way
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: the stages that finished are recorded"), err
    assert "Traceback" not in err, err
    time.sleep(3)
    alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert alive == [], f"still running in the run's process group: {alive}"
    assert "train@digits-supcon-0" not in _lock(project)


@pytest.mark.parametrize("kind, lines", [
    ("slurm", ["#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:1", "cd $SLURM_SUBMIT_DIR"]),
    ("pbs", ["#PBS -q gpu", "#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB", "cd $PBS_O_WORKDIR"]),
])
def test_the_documented_cluster_config_makes_one_single_threaded_gpu_worker_per_job(kind: str, lines: list[str]) -> None:
    """What dask-jobqueue would submit with docs/cluster/jobqueue.yaml (no batch system needed)."""
    from pipeline.parallel import batch_cluster

    cluster = batch_cluster(kind, ROOT / "docs/cluster/jobqueue.yaml")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in lines:
        assert line in script.splitlines(), script
    worker = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in worker and "--nthreads 1 " in worker, worker


def test_a_bad_cluster_config_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.parallel import main

    assert main(["--cluster", "slurm", "--cluster-config", str(tmp_path / "missing.yaml"), "--print-job-script"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'missing.yaml'}: cannot read the cluster config"), err


def test_timing_table_lists_the_slowest_stages_and_the_totals() -> None:
    from pipeline.parallel import StageResult, Summary, timing_table

    summary = Summary([StageResult("a", "ran", 1.0), StageResult("b", "ran", 5.0), StageResult("c", "unchanged"),
                       StageResult("d", "failed", 2.0)], seconds=6.0, workers=2)
    lines = timing_table(summary, top=2).splitlines()
    assert lines[1].split() == ["b", "5.0", "ran"] and lines[2].split() == ["d", "2.0", "failed"]
    assert lines[3] == "... and 1 more (1.0 s)"
    assert lines[4] == "2 ran, 1 unchanged, 1 failed; 6.0 s wall-clock on 2 worker(s), 8.0 s of stage commands"
