"""MLflow tracking: tags and metrics land in a SQLite store; an unreachable store costs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import free_port, tiny_params
from pipeline.jobs.download import download_job
from pipeline.jobs.train import train_job
from pipeline.config import validate
from pipeline.tracking import repository_root, start_run, tracking_uri


def test_train_run_has_tags_params_and_epoch_metrics(workdir: Path) -> None:
    import mlflow

    params = validate(tiny_params(epochs=2))
    download_job(params, "digits")
    train_job(params, "digits", "supcon", 0, progress=False)

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["thanos-bench/digits"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["method"] == "supcon" and tags["seed"] == "0"
    assert tags["dvc_stage"] == "train@digits-supcon-0"
    assert "git_commit" in tags
    assert run.info.status == "FINISHED"
    assert run.data.params["weights.supcon"] == "1.0"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss/total")
    assert [m.step for m in history] == [1, 2]
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "loss_curve.png" in artifacts


def test_failed_body_marks_the_run_failed(workdir: Path) -> None:
    import mlflow

    with pytest.raises(RuntimeError):
        with start_run("train@digits-supcon-0", "digits", "supcon", 0) as run:
            run.log_metrics({"x": 1.0})
            raise RuntimeError("boom")
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    (only,) = mlflow.search_runs(experiment_names=["thanos-bench/digits"], output_format="list")
    assert only.info.status == "FAILED"


def test_unreachable_store_warns_and_the_stage_still_writes(workdir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # a loopback port nothing listens on
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    params = validate(tiny_params(epochs=1))
    download_job(params, "digits")
    with pytest.warns(UserWarning, match="MLflow: tracking store .* unavailable"):
        train_job(params, "digits", "supcon", 0, progress=False)
    assert (workdir / "artifacts/digits/seed0/models/supcon.pt").exists()


def test_default_store_is_the_repository_root_even_inside_dvc_experiments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    exp.mkdir(parents=True)
    assert repository_root(exp) == tmp_path / "repo"
    monkeypatch.chdir(exp)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
