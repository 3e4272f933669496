"""Each stage's outputs on a tiny run, through the same job functions the DVC stages call."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_params
from pipeline import paths
from pipeline.jobs.download import download_job
from pipeline.jobs.embed import embed_job
from pipeline.jobs.evaluate import evaluate_job
from pipeline.jobs.report import report_job
from pipeline.jobs.train import train_job
from pipeline.config import ParamsError, validate
from pipeline.embeddings import ModelFileError, load_encoder
from pipeline.evaluation.robustness import HEAD_RULES
from pipeline.io import load_arrays
from pipeline.tasks import WorstGroup
from pipeline.tracking import round_metric

METHODS = ("supcon", "supcon_cnce", "ce_ae")


# A whole tiny run per task (~15 s for digits, ~35 s for spurious digits): the slow tier.
END_TO_END = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """download -> train -> embed -> evaluate -> report for 3 trained methods + thanos, 1 seed."""
    root = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = validate(tiny_params(epochs=2, methods=(*METHODS, "thanos")))
    download_job(params, "digits")
    for m in METHODS:
        train_job(params, "digits", m, 0, progress=False)
    for m in (*METHODS, "thanos"):
        embed_job(params, "digits", m, 0)
        evaluate_job(params, "digits", m, 0)
    report_job(params)
    yield root
    mp.undo()


@END_TO_END
def test_download_writes_the_prepared_cache(tiny_run: Path) -> None:
    from pipeline.data.cache import read_cache

    records = read_cache(tiny_run / "data/prepared/digits")
    sizes = {s: len(records.splits[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.25 * 1797, abs=1)
    assert records.splits["train"].images.shape[1:] == (1, 8, 8)


@END_TO_END
def test_train_writes_a_loadable_model_and_history(tiny_run: Path) -> None:
    encoder, normalize = load_encoder(tiny_run / paths.model_path("digits", "supcon", 0))
    assert not encoder.training
    assert encoder(normalize(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))).shape == (2, 128)
    history = json.loads((tiny_run / paths.history_path("digits", "supcon", 0)).read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    # The history is a DVC output: what the run computed, nothing that measures the machine.
    assert set(history[0]) == {"epoch", "lr", "loss/ce", "loss/supcon", "loss/total"}
    assert not (tiny_run / paths.resume_path("digits", "supcon", 0)).exists()  # removed when done
    # Timings go to a log that is not a DVC output (and to MLflow).
    log = json.loads((tiny_run / paths.train_log_path("digits", "supcon", 0)).read_text())
    assert log["stage"] == "train@digits-supcon-0" and [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 and e["images_per_s"] > 0 for e in log["epochs"])


@END_TO_END
def test_embed_outputs_every_split_with_labels(tiny_run: Path) -> None:
    arrays = load_arrays(tiny_run / paths.embedding_path("digits", "supcon", 0))
    for split, n in (("train", 1077), ("val", 270), ("test", 450)):
        assert arrays[f"{split}_x"].shape == (n, 128) and arrays[f"{split}_x"].dtype == np.float32
        assert set(np.unique(arrays[f"{split}_fine"])) == set(range(10))
        np.testing.assert_array_equal(arrays[f"{split}_coarse"], arrays[f"{split}_fine"] >= 5)
    assert str(arrays["meta_task"]) == "coarse_to_fine"


@END_TO_END
def test_concat_is_the_parts_side_by_side(tiny_run: Path) -> None:
    thanos = load_arrays(tiny_run / paths.embedding_path("digits", "thanos", 0))
    a = load_arrays(tiny_run / paths.embedding_path("digits", "supcon_cnce", 0))
    b = load_arrays(tiny_run / paths.embedding_path("digits", "ce_ae", 0))
    np.testing.assert_array_equal(thanos["test_x"], np.concatenate([a["test_x"], b["test_x"]], axis=1))
    np.testing.assert_array_equal(thanos["test_fine"], a["test_fine"])


@END_TO_END
def test_embed_is_byte_deterministic(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same model -> same bytes, so DVC skips everything downstream of an unchanged embedding."""
    monkeypatch.chdir(tiny_run)
    path = tiny_run / paths.embedding_path("digits", "thanos", 0)
    before = path.read_bytes()
    embed_job(validate(tiny_params(epochs=2, methods=(*METHODS, "thanos"))), "digits", "thanos", 0)
    assert path.read_bytes() == before


@END_TO_END
def test_evaluate_metrics_are_what_the_probes_give(tiny_run: Path) -> None:
    from pipeline.evaluation.probes import linear_probe

    metrics = json.loads((tiny_run / paths.metrics_path("digits", "supcon", 0)).read_text())
    for key in ("fine_head_acc", "fine_probe_acc", "fine_knn_acc", "coarse_probe_acc"):
        assert 0.0 <= metrics[key] <= 100.0
    arrays = load_arrays(tiny_run / paths.embedding_path("digits", "supcon", 0))
    params = validate(tiny_params())
    again = linear_probe(arrays["train_x"], arrays["train_fine"], arrays["val_x"], arrays["val_fine"],
                         arrays["test_x"], arrays["test_fine"], cs=params.evaluate.probe_cs)
    assert metrics["fine_probe_acc"] == pytest.approx(100 * again.test_accuracy)
    assert metrics["coarse_probe_acc"] > 70.0  # 2 epochs already separate the coarse classes
    # Beside the metrics: per test image, the correct flags that give back each fine accuracy (the report's bootstrap).
    per_image = load_arrays(tiny_run / paths.predictions_path("digits", "supcon", 0))
    for key in ("fine_head_acc", "fine_probe_acc", "fine_knn_acc"):
        assert per_image[key].shape == (450,) and 100 * per_image[key].mean() == pytest.approx(metrics[key])


@END_TO_END
def test_report_numbers_are_the_metrics_means(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "reports/summary.json").read_text())
    for m in (*METHODS, "thanos"):
        metrics = json.loads((tiny_run / paths.metrics_path("digits", m, 0)).read_text())
        assert summary["digits"][m]["metric"] == "fine_head_acc"
        assert summary["digits"][m]["mean"] == pytest.approx(metrics["fine_head_acc"], abs=1e-4)
        assert summary["digits"][m]["n"] == 1
        assert summary["digits"][m]["std"] is None  # one seed: no spread
    lift = summary["digits"]["thanos"]["lift"]
    assert lift == pytest.approx(summary["digits"]["thanos"]["mean"] - summary["digits"]["supcon"]["mean"], abs=1e-3)
    md = (tiny_run / "reports/results.md").read_text()
    assert "| thanos | concat[supcon_cnce, ce_ae] |" in md
    # the hardware of the runs, read from the model files; no wall-clock (not a function of the inputs)
    assert re.search(r"Trained on: CPU .*, torch 2\.\d+\.\d+.* \(3 runs\)", md)
    assert "Train min/run" not in md and "±" not in md and "one seed (n = 1): no spread" in md
    assert re.search(r"\| supcon \| 1·ce \+ 1·supcon \| \d+\.\d \| ", md)
    assert (tiny_run / "reports/headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@END_TO_END
def test_a_truncated_model_file_gives_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    data = (tiny_run / paths.model_path("digits", "supcon", 0)).read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.pt: not a readable model file"):
        load_encoder(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a thanos-bench/encoder/v1 model file"):
        load_encoder(foreign)


def test_concat_method_has_no_train_stage(workdir: Path) -> None:
    with pytest.raises(ParamsError, match="'thanos' is a concatenation"):
        train_job(validate(tiny_params()), "digits", "thanos", 0)
    with pytest.raises(ParamsError, match="method 'thanoss' is not in params methods"):
        embed_job(validate(tiny_params()), "digits", "thanoss", 0)


def test_download_rejects_unknown_prepare_option(workdir: Path) -> None:
    p = tiny_params()
    p["datasets"]["digits"]["prepare"]["val_fractoin"] = 0.2
    with pytest.raises(ParamsError, match=r"datasets.digits.prepare: .*unknown options \['val_fractoin'\]"):
        download_job(validate(p), "digits")
    assert not (workdir / "data").exists()


@END_TO_END
def test_worst_group_dataset_end_to_end(workdir: Path) -> None:
    """spurious_digits: download -> train on y -> embed -> robustness metrics -> report section."""
    p = tiny_params(epochs=2, methods=("untrained", "supcon", "supcon_cnce", "ce_ae", "thanos"),
                    robustness=("spurious_digits",))
    p["suite"]["datasets"] = []
    params = validate(p)
    download_job(params, "spurious_digits")
    for m in ("untrained", "supcon", "supcon_cnce", "ce_ae"):
        train_job(params, "spurious_digits", m, 0, progress=False)
    # The untrained baseline: a model file and an empty history, no epochs.
    assert json.loads((workdir / paths.history_path("spurious_digits", "untrained", 0)).read_text()) == []
    for m in ("untrained", "supcon", "supcon_cnce", "ce_ae", "thanos"):
        embed_job(params, "spurious_digits", m, 0)
    arrays = load_arrays(workdir / paths.embedding_path("spurious_digits", "thanos", 0))
    assert arrays["train_x"].shape == (1077, 256) and str(arrays["meta_task"]) == "worst_group"
    metrics = evaluate_job(params, "spurious_digits", "thanos", 0)
    for head, rules in HEAD_RULES.items():
        for rule in rules:
            key = f"{head}.{rule}"
            assert 0.0 <= metrics[f"{key}/worst_group_acc"] <= metrics[f"{key}/mean_group_acc"] <= 100.0
            assert metrics[f"{key}/worst_class_acc"] <= metrics[f"{key}/balanced_acc"] <= 100.0
            assert {f"{key}/group_{g}_acc" for g in range(4)} <= set(metrics)
    for prefix in ("discovery", "discovery_kmeans"):
        assert -1.0 <= metrics[f"{prefix}/ari"] <= 1.0
        assert 0.0 <= metrics[f"{prefix}/minority_recall"] <= 1.0
    for m in ("untrained", "supcon", "supcon_cnce", "ce_ae"):
        evaluate_job(params, "spurious_digits", m, 0)
    report_job(params)
    md = (workdir / "reports/results.md").read_text()
    assert "| untrained | untrained: frozen random initialisation |" in md
    assert "## spurious_digits: worst-group robustness" in md
    assert "| thanos | concat[supcon_cnce, ce_ae] |" in md
    assert "Published reference points" in md and "Trained on: CPU" in md
    summary = json.loads((workdir / "reports/summary.json").read_text())
    assert summary["spurious_digits"]["thanos"]["metric"] == WorstGroup.HEADLINE
    assert summary["spurious_digits"]["thanos"]["lift"] == pytest.approx(
        summary["spurious_digits"]["thanos"]["mean"] - summary["spurious_digits"]["supcon"]["mean"], abs=1e-3)


@END_TO_END
def test_evaluate_runs_are_logged_with_metrics_and_pictures(tiny_run: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "thanos-bench/digits"]
    runs = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'evaluate_concat@digits-thanos-0'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = json.loads((tiny_run / paths.metrics_path("digits", "thanos", 0)).read_text())
    assert runs[0].data.metrics["fine_head_acc"] == round_metric(metrics["fine_head_acc"])  # rounded for the UI
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"projection_coarse.png", "projection_fine.png"} <= artifacts
