"""The MLflow layout a user compares runs in: one run per model, the same params everywhere, a report run.

The tiny pipeline runs through the same job functions as the DVC stages; the store is then read
the way the UI reads it: over MLflow's REST API, from the light server `make ui` starts
(pipeline/ui.py), which needs no browser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_params
from pipeline import paths
from pipeline.config import validate
from pipeline.hashing import file_md5
from pipeline.jobs.download import download_job
from pipeline.jobs.embed import embed_job
from pipeline.jobs.evaluate import evaluate_job
from pipeline.jobs.report import report_job
from pipeline.jobs.train import train_job
from pipeline.tracking import EXPERIMENT_KIND, name_groups, round_metric

TRAINED = ("supcon", "ce_ae")
CONCAT = "supcon_ae"  # concat[supcon, ce_ae] in tiny_params' methods


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny run (digits, 2 trained methods + a concatenation, seed 0), and a client of the light
    MLflow server over its store (REST)."""
    from mlflow import MlflowClient

    from pipeline.ui import running_server

    root = tmp_path_factory.mktemp("layout")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    params = validate(tiny_params(epochs=2, methods=(*TRAINED, CONCAT)))
    download_job(params, "digits")
    for m in TRAINED:
        train_job(params, "digits", m, 0, progress=False)
    for m in (*TRAINED, CONCAT):
        embed_job(params, "digits", m, 0)
        evaluate_job(params, "digits", m, 0)
    report_job(params)
    with running_server(uri) as (base, _):
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield root, MlflowClient(base)
    mp.undo()


def _runs(client: Any) -> list[Any]:
    (exp,) = [e for e in client.search_experiments() if e.name == "thanos-bench/digits"]
    return client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_experiment_opens_on_the_runs_table_with_a_description(store: tuple[Path, Any]) -> None:
    _, client = store
    exp = client.get_experiment_by_name("thanos-bench/digits")
    assert exp.tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    text = exp.tags["mlflow.note.content"]
    assert "One row per model" in text and "fine_head_acc" in text and "Group by" in text


@pytest.mark.slow
def test_one_run_per_model_holds_training_and_evaluation(store: tuple[Path, Any]) -> None:
    root, client = store
    runs = [r for r in _runs(client) if r.data.tags["stage"] != "report"]
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == sorted(f"{m} s0" for m in (*TRAINED, CONCAT)), "one run per model, named method s<seed>"
    for m in TRAINED:
        run = by_name[f"{m} s0"]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["stage"] == "train+evaluate" and run.info.status == "FINISHED"
        assert tags["dvc_stage"] == f"train@digits-{m}-0" and tags["dvc_stage_evaluate"] == f"evaluate@digits-{m}-0"
        assert tags["model_md5"] == file_md5(root / paths.model_path("digits", m, 0))
        assert tags["metrics_md5"] == file_md5(root / paths.metrics_path("digits", m, 0))
        assert (params["method"], params["seed"], params["dataset"], params["parts"]) == (m, "0", "digits", m)
        assert any(k.startswith("weights.") for k in params) and "evaluate.knn_k" in params
        # The training curve and every evaluation metric, rounded for reading.
        assert len(client.get_metric_history(run.info.run_id, "loss/total")) == 2
        recorded = json.loads((root / paths.metrics_path("digits", m, 0)).read_text())
        assert set(recorded) <= set(metrics)
        for key, value in recorded.items():
            assert metrics[key] == round_metric(value), key
    concat = by_name[f"{CONCAT} s0"]
    assert concat.data.tags["stage"] == "evaluate" and concat.data.params["parts"] == "supcon+ce_ae"
    assert not any(k.startswith("weights.") for k in concat.data.params)
    # The same param names in every run (but the loss weights, which a concatenation has none of).
    names = [{k for k in r.data.params if not k.startswith("weights.")} for r in runs]
    assert all(n == names[0] for n in names)


@pytest.mark.slow
def test_report_run_holds_the_summary_and_the_report(store: tuple[Path, Any]) -> None:
    root, client = store
    (report,) = [r for r in _runs(client) if r.data.tags["stage"] == "report"]
    assert report.info.run_name == "report" and report.info.status == "FINISHED"
    assert report.data.tags["summary_md5"] == file_md5(root / "reports/summary.json")
    summary = json.loads((root / "reports/summary.json").read_text())["digits"]
    expected = {}
    for method, entry in summary.items():
        for key, value in _numbers(entry):
            expected[f"{method}/{key}"] = round_metric(value)
    assert expected and report.data.metrics == expected
    artifacts = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"results.md", "headline.png"} <= artifacts


def _numbers(entry: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(entry, dict):
        return [kv for k, v in entry.items() for kv in _numbers(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry):
        return [(prefix, float(entry))]
    return []


def test_metrics_round_to_four_significant_digits_but_keep_integers() -> None:
    assert round_metric(98.44444444444444) == 98.44
    assert round_metric(0.0012345678) == 0.001235
    assert round_metric(12345.6) == 12346.0
    assert round_metric(-2.718281828) == -2.718
    assert round_metric(0.0) == 0.0 and math.isnan(round_metric(float("nan")))


def test_group_metrics_are_named_by_their_group() -> None:
    names = ["0-4 / red", "0-4 / blue", "5-9 / red", "5-9 / blue"]
    metrics = {"erm.average/group_2_acc": 1.0, "group_0_acc": 2.0, "erm.average/worst_group_acc": 3.0,
               "x/group_7_acc": 4.0}
    assert name_groups(metrics, names) == {"erm.average/group_5-9_red_acc": 1.0, "group_0-4_red_acc": 2.0,
                                           "erm.average/worst_group_acc": 3.0, "x/group_7_acc": 4.0}
    assert name_groups(metrics, []) == metrics
