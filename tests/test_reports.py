"""The report stage: honest spread (none for one seed), inputs only, and one-line errors.

A tiny project is laid out the way the stages write it (pipeline.paths): real prepared caches
from the download stage, and metrics, embedding and model files in the formats of the evaluate,
embed and train stages, with known numbers, so every cell of the report can be checked by hand.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer

from conftest import ROOT, tiny_params, write_params
from pipeline import paths
from pipeline.config import Params, validate
from pipeline.errors import OutputFileError
from pipeline.formats import MODEL_FORMAT
from pipeline.io import save_arrays
from pipeline.evaluation.robustness import HEAD_RULES
from pipeline.reports import bar_chart_figure, mean_std, write_report
from pipeline.tasks import WorstGroup

WG_HEADLINE = WorstGroup.HEADLINE

METHODS = ("supcon", "supcon_cnce", "ce_ae", "thanos")
HARDWARE = "CPU test machine, 1 cores, 1 torch threads, torch 0.0"
HEADS = tuple(f"{h}.{r}" for h, rules in HEAD_RULES.items() for r in rules)  # every head under every rule
GEOMETRY = ("geom_class_spread_ratio", "geom_fine_knn_purity", "geom_uniformity", "geom_alignment")


def _params_dict(seeds: tuple[int, ...]) -> dict:
    return tiny_params(seeds=seeds, methods=METHODS, robustness=("spurious_digits",))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared/{digits,spurious_digits} written by the real download stage."""
    from pipeline.jobs.download import download_job

    root = tmp_path_factory.mktemp("prepared")
    params = validate(_params_dict((0,)))
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        for ds in ("digits", "spurious_digits"):
            download_job(params, ds, download=False)
    finally:
        mp.undo()
    return root / "data" / "prepared"


def _value(ds: str, method: str, seed: int, key: str) -> float:
    """A fixed, distinct number per metric and run (50-90, like an accuracy)."""
    return 50.0 + (zlib.crc32(f"{ds}/{method}/{seed}/{key}".encode()) % 4000) / 100.0


def _metric_keys(task: str) -> list[str]:
    keys = [*GEOMETRY, "geom_fine_knn_chance"]
    if task == "coarse_to_fine":
        return keys + ["fine_head_acc", "fine_probe_acc", "fine_knn_acc", "coarse_probe_acc"]
    for h in HEADS:
        keys += [f"{h}/{k}" for k in ("worst_group_acc", "avg_acc", "mean_group_acc", "weighted_acc",
                                      "worst_class_acc", "balanced_acc")]
        keys += [f"{h}/group_{g}_acc" for g in range(4)]
    scores = ("ari", "ari_within_class", "smallest_group_recall", "minority_precision", "minority_recall")
    return keys + [f"{prefix}/{k}" for prefix in ("discovery", "discovery_kmeans") for k in scores]


def make_project(root: Path, prepared: Path, seeds: tuple[int, ...]) -> Params:
    """params.yaml, the prepared caches and every metrics, embedding and model file the report reads."""
    write_params(root / "params.yaml", _params_dict(seeds))
    params = validate(_params_dict(seeds))
    shutil.copytree(prepared, root / "data" / "prepared", dirs_exist_ok=True)
    rng = np.random.default_rng(0)
    for ds, task in (("digits", "coarse_to_fine"), ("spurious_digits", "worst_group")):
        for m in params.methods_for(ds):
            for s in seeds:
                metrics = {k: _value(ds, m, s, k) for k in _metric_keys(task)}
                path = root / paths.metrics_path(ds, m, s)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
                labels = np.arange(40) % (10 if task == "coarse_to_fine" else 4)
                save_arrays(root / paths.embedding_path(ds, m, s),
                            {"test_x": rng.normal(size=(40, 6)).astype(np.float32),
                             "test_fine" if task == "coarse_to_fine" else "test_group": labels})
                if not params.is_concat(m):
                    model = root / paths.model_path(ds, m, s)
                    model.parent.mkdir(parents=True, exist_ok=True)
                    torch.save({"format": MODEL_FORMAT, "backbone": "small_cnn", "image_shape": [1, 8, 8],
                                "embed_dim": 6, "mean": torch.zeros(1), "std": torch.ones(1),
                                "encoder": {}, "fingerprint": "test", "hardware": HARDWARE}, model)
    return params


def _metric(root: Path, ds: str, method: str, seed: int, key: str) -> float:
    return json.loads((root / paths.metrics_path(ds, method, seed)).read_text())[key]


def _sections(md: str) -> dict[str, str]:
    return {part.split(":", 1)[0]: part for part in md.split("\n## ")[1:]}


def _rows(section: str, method: str) -> list[list[str]]:
    """The cells of every table row of ``method`` in a section (result table first, then geometry)."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith(f"| {method} |")]


def _sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_mean_std_has_no_std_for_one_value() -> None:
    assert mean_std([84.2]) == (84.2, None)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(_sample_std([1.0, 2.0, 4.0]))


def test_one_seed_report_shows_the_value_and_n_1_without_spread(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0,))
    write_report(params, paths.REPORTS)
    md = (workdir / "reports/results.md").read_text()
    assert "±" not in md
    assert "Every cell: the value of seed 0; one seed (n = 1): no spread" in md
    assert "Train min/run" not in md and "wall-clock" not in md
    assert f"Trained on: {HARDWARE} (3 runs)." in md
    sections = _sections(md)

    digits = sections["digits"]
    assert digits.count("One seed (n = 1, seed 0)") == 1
    supcon, supcon_geometry = _rows(digits, "supcon")
    assert supcon[2:6] == [f"{_metric(workdir, 'digits', 'supcon', 0, k):.1f}"
                           for k in ("fine_head_acc", "fine_probe_acc", "fine_knn_acc", "coarse_probe_acc")]
    assert supcon_geometry[1:] == [f"{_metric(workdir, 'digits', 'supcon', 0, k):.3f}" for k in GEOMETRY]
    thanos = _rows(digits, "thanos")[0]
    lift = (_metric(workdir, "digits", "thanos", 0, "fine_head_acc")
            - _metric(workdir, "digits", "supcon", 0, "fine_head_acc"))
    assert thanos[6] == f"{lift:+.1f}"  # the single paired difference, no ±

    robust = sections["spurious_digits"]
    assert robust.count("One seed (n = 1, seed 0)") == 1
    cells = _rows(robust, "ce_ae")[0]
    shown = list(WorstGroup.HEADS)  # the main table's (head, rule) columns, in order
    assert cells[2:2 + len(shown)] == [
        f"{_metric(workdir, 'spurious_digits', 'ce_ae', 0, f'{h}/worst_group_acc'):.1f} / "
        f"{_metric(workdir, 'spurious_digits', 'ce_ae', 0, f'{h}/avg_acc'):.1f}" for h in shown]

    summary = json.loads((workdir / "reports/summary.json").read_text())
    entries = [e for ds in summary.values() for m in ds.values() for e in m.values()]
    assert len(entries) > 100 and all(e["std"] is None and e["n"] == 1 for e in entries)
    assert summary["digits"]["thanos"]["lift_over_supcon"]["mean"] == pytest.approx(lift, abs=1e-4)
    assert '"std": null' in (workdir / "reports/summary.json").read_text()


def test_one_seed_bar_chart_has_no_error_bars(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0,))
    write_report(params, paths.REPORTS)
    assert (workdir / "reports/headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((workdir / "reports/summary.json").read_text())
    fig = bar_chart_figure(params, summary)
    try:
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == ["digits: n = 1 (seed 0)", "spurious_digits: n = 1 (seed 0)"]
        for ax, headline in zip(axes, ("fine_head_acc", WG_HEADLINE)):
            (bars,) = ax.containers  # a BarContainer and no ErrorbarContainer
            assert isinstance(bars, BarContainer) and bars.errorbar is None
            assert len(ax.collections) == 0 and len(ax.lines) == 0  # no error-bar segments or caps
            methods = [t.get_text() for t in ax.get_xticklabels()]
            assert sorted(methods) == sorted(METHODS)
            assert [b.get_height() for b in bars] == pytest.approx(
                [_metric(workdir, ax.get_title().split(":")[0], m, 0, headline) for m in methods], abs=1e-4)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_two_seeds_report_sample_std_and_paired_lift(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0, 1))
    write_report(params, paths.REPORTS)
    summary = json.loads((workdir / "reports/summary.json").read_text())
    md = (workdir / "reports/results.md").read_text()
    assert "Every cell: mean ± sample std over seeds 0, 1 (n = 2)" in md
    assert "n = 1" not in md and "Train min/run" not in md

    for ds, key in (("digits", "fine_head_acc"), ("spurious_digits", WG_HEADLINE),
                    ("digits", "geom_uniformity")):
        for m in METHODS:
            values = [_metric(workdir, ds, m, s, key) for s in (0, 1)]
            entry = summary[ds][m][key]
            assert entry["n"] == 2 and entry["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
            assert entry["std"] == pytest.approx(_sample_std(values), abs=1e-4)
            assert entry["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
    diffs = [_metric(workdir, "digits", "thanos", s, "fine_head_acc")
             - _metric(workdir, "digits", "supcon", s, "fine_head_acc") for s in (0, 1)]
    lift = summary["digits"]["thanos"]["lift_over_supcon"]
    assert lift["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-4)
    assert lift["std"] == pytest.approx(_sample_std(diffs), abs=1e-4)

    digits = _sections(md)["digits"]
    assert "One seed" not in digits
    head = summary["digits"]["supcon"]["fine_head_acc"]
    assert _rows(digits, "supcon")[0][2] == f"{head['mean']:.1f} ± {head['std']:.1f}"
    assert _rows(digits, "thanos")[0][6] == f"{lift['mean']:+.1f} ± {lift['std']:.1f}"
    geom = summary["digits"]["supcon"]["geom_uniformity"]
    assert f"{geom['mean']:.3f} ± {geom['std']:.3f}" in _rows(digits, "supcon")[1]

    fig = bar_chart_figure(params, summary)
    try:
        for ax, ds, headline in zip(fig.axes, ("digits", "spurious_digits"),
                                    ("fine_head_acc", WG_HEADLINE)):
            assert ax.get_title() == f"{ds}: mean ± std over 2 seeds"
            (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
            assert bars.errorbar is not None
            methods = [t.get_text() for t in ax.get_xticklabels()]
            (segments,) = bars.errorbar.lines[2]
            half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments.get_segments()]
            assert half == pytest.approx([summary[ds][m][headline]["std"] for m in methods], abs=1e-6)
            assert [b.get_height() for b in bars] == pytest.approx(
                [summary[ds][m][headline]["mean"] for m in methods], abs=1e-6)
            assert ax.get_ylim()[0] <= min(summary[ds][m][headline]["mean"] - summary[ds][m][headline]["std"]
                                           for m in methods)  # whole error bars, none cut at the axis
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_model(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("damage", [_truncate, _foreign_model, Path.unlink, lambda p: p.write_bytes(b"hello")],
                         ids=["truncated", "foreign", "missing", "garbage"])
@pytest.mark.parametrize("ds, method, seed, stage", [
    ("digits", "supcon", 0, "train@digits-supcon-0"),
    ("spurious_digits", "ce_ae", 1, "train_robust@spurious_digits-ce_ae-1"),
])
def test_a_bad_model_file_names_it_and_its_train_stage(workdir: Path, prepared: Path, damage, ds: str,
                                                       method: str, seed: int, stage: str) -> None:
    _assert_report_refuses(workdir, prepared, paths.model_path(ds, method, seed), damage, stage)


def _assert_report_refuses(workdir: Path, prepared: Path, path: Path, damage, stage: str) -> None:
    """After ``damage(path)``, the report raises one line naming the file and the stage to rerun."""
    params = make_project(workdir, prepared, seeds=(0, 1))
    damage(path)
    with pytest.raises(OutputFileError) as info:
        write_report(params, paths.REPORTS)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"`dvc repro {stage}`" in message
    assert "\n" not in message
    assert not (workdir / "reports").exists()  # every input is checked before any output is written


def _bad_json(path: Path) -> None:
    path.write_text('{"fine_head_acc": 8')


@pytest.mark.parametrize("path, damage, stage", [
    (paths.metrics_path("digits", "thanos", 1), Path.unlink, "evaluate_concat@digits-thanos-1"),
    (paths.metrics_path("spurious_digits", "supcon", 0), _bad_json, "evaluate_robust@spurious_digits-supcon-0"),
    (paths.metrics_path("digits", "ce_ae", 0), lambda p: p.write_text("[1, 2]"), "evaluate@digits-ce_ae-0"),
    (paths.embedding_path("digits", "supcon_cnce", 0), _truncate, "embed@digits-supcon_cnce-0"),
    (paths.embedding_path("spurious_digits", "thanos", 0), Path.unlink,
     "embed_concat_robust@spurious_digits-thanos-0"),
    (Path("data/prepared/digits/meta.json"), Path.unlink, "download@digits"),
], ids=["missing-metrics", "corrupt-metrics", "foreign-metrics", "truncated-embeddings", "missing-embeddings",
        "missing-meta"])
def test_a_bad_input_file_names_it_and_the_stage_that_rewrites_it(workdir: Path, prepared: Path, path: Path,
                                                                  damage, stage: str) -> None:
    _assert_report_refuses(workdir, prepared, path, damage, stage)


def test_report_stage_with_a_truncated_model_file_prints_one_error_line(workdir: Path, prepared: Path) -> None:
    make_project(workdir, prepared, seeds=(0,))
    model = paths.model_path("digits", "supcon_cnce", 0)
    _truncate(model)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "stages.report"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: {model}: ") and "`dvc repro train@digits-supcon_cnce-0`" in errors[0]
    assert not (workdir / "reports").exists()
