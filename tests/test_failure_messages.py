"""Known failures end in one line (what happened, which file or key, what to do) and an exit code;
settings that validate but are almost surely wrong are reported. Each case provoked for real."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_params, write_params
from pipeline import paths
from pipeline.cli import run_stage, stage_main
from pipeline.config import validate
from pipeline.errors import DiskFullError
from pipeline.io import atomic_write, save_arrays
from pipeline.jobs.download import download_job
from pipeline.jobs.evaluate import evaluate_job
from pipeline.jobs.train import train_job
from pipeline.jobs.validate import VALIDATED_TEXT, validate_job

ARGV = ["--dataset", "digits", "--method", "supcon", "--seed", "0"]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_truncated_embeddings_file_is_one_line_in_evaluate(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_params(workdir / "params.yaml", tiny_params())
    path = workdir / paths.embedding_path("digits", "supcon", 0)
    save_arrays(path, {"train_x": [[1.0, 2.0]] * 64})
    path.write_bytes(path.read_bytes()[:100])
    assert stage_main("evaluate", evaluate_job, argv=ARGV) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{paths.embedding_path('digits', 'supcon', 0)}: not a readable array file" in line
    assert "rerun its stage" in line


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this machine to make the kernel answer ENOSPC")
    out = tmp_path / "metrics.json"

    def write_to_a_full_disk(f) -> None:  # what the kernel says when the disk is full
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"{}")

    with pytest.raises(DiskFullError, match=r"metrics.json: no space left on the device"):
        atomic_write(out, write_to_a_full_disk)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file

    def stage() -> None:  # an OSError(ENOSPC) from a library that writes by itself
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"x")

    assert run_stage("evaluate@digits-supcon-0", stage) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "evaluate@digits-supcon-0: no space left on the device" in line and "[Errno" not in line
    assert errno.ENOSPC  # (the errno both paths recognise)


def test_validate_checks_bounds_that_need_the_data(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tiny_params()
    download_job(validate(p), "digits")
    p["evaluate"]["knn_k"] = 5000
    write_params(workdir / "params.yaml", p)
    assert stage_main("validate", validate_job, per_run=False, argv=[]) == 2
    assert ("evaluate.knn_k: 5000 neighbours, but the training split of digits has only 1077 images"
            in capsys.readouterr().err)
    assert not (workdir / paths.VALIDATED).exists()
    p["evaluate"]["knn_k"] = 20
    write_params(workdir / "params.yaml", p)
    assert stage_main("validate", validate_job, per_run=False, argv=[]) == 0
    assert (workdir / paths.VALIDATED).read_text() == VALIDATED_TEXT  # the same bytes every time


def test_knn_k_beyond_the_split_fails_in_evaluate_with_the_key(workdir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    p = tiny_params()
    p["evaluate"]["knn_k"] = 65
    write_params(workdir / "params.yaml", p)
    n = 64
    arrays = {f"{s}_{k}": ([[float(i), 1.0] for i in range(n)] if k == "x" else [i % 10 for i in range(n)])
              for s in ("train", "val", "test") for k in ("x", "fine", "coarse")}
    save_arrays(workdir / paths.embedding_path("digits", "supcon", 0), {**arrays, "meta_task": "coarse_to_fine"})
    assert stage_main("evaluate", evaluate_job, argv=ARGV) == 2
    assert ("evaluate.knn_k: 65 neighbours, but the training split of digits has only 64 images; use at most 64"
            in capsys.readouterr().err)


def test_a_frozen_loss_and_an_absurd_temperature_are_reported(workdir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """At temperature 1e9 every similarity divides to ~0: SupCon's loss is log(#candidates) at
    every step and the run exits 0 having learned nothing. Both are said, on stderr and in MLflow."""
    from mlflow import MlflowClient

    p = tiny_params(epochs=3, methods=("supcon",))
    p["methods"]["trained"]["supcon"]["ce"] = 0.0
    p["train"]["temperature"] = 1e9
    download_job(validate(p), "digits")
    train_job(validate(p), "digits", "supcon", 0, progress=False)
    err = capsys.readouterr().err
    assert "warning: train.temperature: 1e+09 is outside the sane range [0.01, 10]" in err
    assert re.search(r"warning: train@digits-supcon-0: the total loss did not fall over 3 epochs \(epoch 1: "
                     r"[\d.]+, epoch 3: [\d.]+\): this run learned nothing", err), err
    (run,) = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs(
        [e.experiment_id for e in MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()])
    assert "the total loss did not fall" in run.data.tags["warning"]
    assert "train.temperature" in run.data.tags["warning"]


def test_a_learning_run_is_not_called_stalled() -> None:
    from pipeline.training import stalled_loss

    history = [{"epoch": 1, "loss/total": 7.15}, {"epoch": 2, "loss/total": 7.15 * (1 - 1e-4)}]
    assert "did not fall over 2 epochs (epoch 1: 7.15, epoch 2: 7.14929)" in stalled_loss(history)
    assert stalled_loss(history[:1]) is None  # one epoch says nothing
    history[1]["loss/total"] = 6.9
    assert stalled_loss(history) is None


def test_the_download_stage_reports_a_params_error_in_one_line(tmp_path: Path) -> None:
    p = tiny_params()
    p["datasets"]["digits"]["prepare"]["val_fractio"] = 0.1
    write_params(tmp_path / "params.yaml", p)
    out = subprocess.run([sys.executable, "-m", "stages.download", "--dataset", "digits"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    line = _one_error_line(out.stderr)
    assert "datasets.digits.prepare" in line and "val_fractio" in line
