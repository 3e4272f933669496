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
from matplotlib.container import ErrorbarContainer
from scipy import stats

from conftest import ROOT, tiny_params, write_params
from pipeline import paths
from pipeline.config import Params, validate
from pipeline.errors import OutputFileError
from pipeline.formats import MODEL_FORMAT
from pipeline.io import save_arrays
from pipeline.evaluation.robustness import HEAD_RULES
from pipeline.reports import collect, headline_figure, mean_std, write_report
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


N_TEST = 200  # test images of the tiny project's per-image files
WG_HEAD = WG_HEADLINE.split("/")[0]


def _correct(ds: str, method: str, seed: int) -> np.ndarray:
    """(N_TEST,) correct flags of a run's headline head: a fixed, distinct draw per run."""
    rng = np.random.default_rng(zlib.crc32(f"{ds}/{method}/{seed}".encode()))
    return rng.random(N_TEST) < _value(ds, method, seed, "p") / 100.0


def _per_image(ds: str, method: str, seed: int) -> dict[str, np.ndarray]:
    """The evaluate stage's per-image file of a run (see pipeline.tasks.Task.evaluate)."""
    correct = _correct(ds, method, seed)
    if ds == "digits":
        return {"fine_head_acc": correct, "fine_probe_acc": correct, "fine_knn_acc": correct,
                "fine": np.arange(N_TEST) % 10}
    return {WG_HEAD: correct, "group": np.arange(N_TEST) % 4}


def _headline_of_images(ds: str, per_image: dict[str, np.ndarray]) -> float:
    """The headline of a per-image file, computed here by hand (a loop over groups)."""
    if ds == "digits":
        return 100.0 * float(np.mean(per_image["fine_head_acc"]))
    group = per_image["group"]
    return 100.0 * min(float(np.mean(per_image[WG_HEAD][group == g])) for g in np.unique(group))


def make_project(root: Path, prepared: Path, seeds: tuple[int, ...], per_image=_per_image) -> Params:
    """params.yaml, the prepared caches and every metrics, per-image, embedding, model and history
    file the report reads; each metrics file's headline is that of its per-image file."""
    write_params(root / "params.yaml", _params_dict(seeds))
    params = validate(_params_dict(seeds))
    shutil.copytree(prepared, root / "data" / "prepared", dirs_exist_ok=True)
    rng = np.random.default_rng(0)
    for ds, task in (("digits", "coarse_to_fine"), ("spurious_digits", "worst_group")):
        for m in params.methods_for(ds):
            for s in seeds:
                metrics = {k: _value(ds, m, s, k) for k in _metric_keys(task)}
                images = per_image(ds, m, s)
                save_arrays(root / paths.predictions_path(ds, m, s), images)
                metrics["fine_head_acc" if ds == "digits" else WG_HEADLINE] = _headline_of_images(ds, images)
                path = root / paths.metrics_path(ds, m, s)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
                labels = np.arange(40) % (10 if task == "coarse_to_fine" else 4)
                save_arrays(root / paths.embedding_path(ds, m, s),
                            {"test_x": rng.normal(size=(40, 6)).astype(np.float32),
                             "test_fine" if task == "coarse_to_fine" else "test_group": labels})
                if not params.is_concat(m):
                    history = root / paths.history_path(ds, m, s)
                    history.parent.mkdir(parents=True, exist_ok=True)
                    history.write_text(json.dumps([{"epoch": e, "loss/total": 3.0 / e + s} for e in (1, 2, 3)]))
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


SUMMARY_KEYS = {"metric", "mean", "std", "n"}
LIFT_KEYS = {"lift", "lift_std", "lift_t95_low", "lift_t95_high", "lift_boot95_low", "lift_boot95_high"}


def _paired_t(diffs: list[float]) -> tuple[float, float]:
    """The t interval of the mean of per-seed differences, by its textbook formula."""
    n = len(diffs)
    half = stats.t.ppf(0.975, n - 1) * _sample_std(diffs) / math.sqrt(n)
    return sum(diffs) / n - half, sum(diffs) / n + half


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
    assert supcon[6] == "—"  # the baseline has no lift over itself
    assert supcon_geometry[1:] == [f"{_metric(workdir, 'digits', 'supcon', 0, k):.3f}" for k in GEOMETRY]
    thanos = _rows(digits, "thanos")[0]
    lift = (_metric(workdir, "digits", "thanos", 0, "fine_head_acc")
            - _metric(workdir, "digits", "supcon", 0, "fine_head_acc"))
    # The single paired difference; no seeds' interval (—); the test images' interval; never significant.
    assert thanos[6].startswith(f"{lift:+.1f} [—]; [") and thanos[6].endswith("] n.s.")
    assert "above `supcon`, largest lift first: none; below `supcon`: none; not distinguishable" in digits

    robust = sections["spurious_digits"]
    assert robust.count("One seed (n = 1, seed 0)") == 1
    cells = _rows(robust, "ce_ae")[0]
    shown = list(WorstGroup.HEADS)  # the main table's (head, rule) columns, in order
    assert cells[2:2 + len(shown)] == [
        f"{_metric(workdir, 'spurious_digits', 'ce_ae', 0, f'{h}/worst_group_acc'):.1f} / "
        f"{_metric(workdir, 'spurious_digits', 'ce_ae', 0, f'{h}/avg_acc'):.1f}" for h in shown]

    text = (workdir / "reports/summary.json").read_text()
    summary = json.loads(text)
    rows = [row for ds in summary.values() for row in ds.values()]
    assert len(rows) == 8 and all(r["std"] is None and r["n"] == 1 for r in rows)
    thanos_row = summary["digits"]["thanos"]
    assert thanos_row["lift"] == pytest.approx(lift, abs=1e-4)
    assert thanos_row["lift_t95_low"] is None and thanos_row["lift_t95_high"] is None  # undefined for n = 1
    assert thanos_row["lift_boot95_low"] <= thanos_row["lift"] <= thanos_row["lift_boot95_high"]
    assert '"std": null' in text


def test_summary_is_compact_and_its_rows_are_the_dvc_metrics_files(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0, 1))
    write_report(params, paths.REPORTS)
    summary = json.loads((workdir / "reports/summary.json").read_text())
    assert {ds: set(methods) for ds, methods in summary.items()} == {
        ds: set(params.methods_for(ds)) for ds in ("digits", "spurious_digits")}
    for ds, methods in summary.items():
        for m, row in methods.items():
            # Only the headline and its lift: the baseline has no lift over itself.
            assert set(row) == (SUMMARY_KEYS if m == "supcon" else SUMMARY_KEYS | LIFT_KEYS), (ds, m)
            assert row["metric"] == ("fine_head_acc" if ds == "digits" else WG_HEADLINE)
            assert json.loads((workdir / f"reports/metrics/{ds}/{m}.json").read_text()) == row
    assert sorted(p.relative_to(workdir / "reports/metrics").as_posix()
                  for p in (workdir / "reports/metrics").rglob("*.json")) == sorted(
        f"{ds}/{m}.json" for ds in summary for m in summary[ds])


def test_two_seeds_report_sample_std_and_paired_lift_intervals(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0, 1))
    write_report(params, paths.REPORTS)
    summary = json.loads((workdir / "reports/summary.json").read_text())
    md = (workdir / "reports/results.md").read_text()
    assert "Every cell: mean ± sample std over seeds 0, 1 (n = 2)" in md
    assert "n = 1" not in md and "Train min/run" not in md

    for ds, key in (("digits", "fine_head_acc"), ("spurious_digits", WG_HEADLINE)):
        for m in METHODS:
            values = [_metric(workdir, ds, m, s, key) for s in (0, 1)]
            row = summary[ds][m]
            assert row["n"] == 2 and row["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
            assert row["std"] == pytest.approx(_sample_std(values), abs=1e-4)
            assert row["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
        for m in ("supcon_cnce", "ce_ae", "thanos"):
            diffs = [_metric(workdir, ds, m, s, key) - _metric(workdir, ds, "supcon", s, key) for s in (0, 1)]
            row = summary[ds][m]
            assert row["lift"] == pytest.approx(sum(diffs) / 2, abs=1e-4)
            assert row["lift_std"] == pytest.approx(_sample_std(diffs), abs=1e-4)
            assert (row["lift_t95_low"], row["lift_t95_high"]) == pytest.approx(_paired_t(diffs), abs=1e-4)
            assert row["lift_boot95_low"] < row["lift"] < row["lift_boot95_high"]

    digits = _sections(md)["digits"]
    assert "One seed" not in digits
    head = summary["digits"]["supcon"]
    assert _rows(digits, "supcon")[0][2] == f"{head['mean']:.1f} ± {head['std']:.1f}"
    lift = summary["digits"]["thanos"]
    cell = (f"{lift['lift']:+.1f} [{lift['lift_t95_low']:+.1f}, {lift['lift_t95_high']:+.1f}]; "
            f"[{lift['lift_boot95_low']:+.1f}, {lift['lift_boot95_high']:+.1f}]")
    assert _rows(digits, "thanos")[0][6] in (cell, f"{cell} n.s.")


def _shifted(ds: str, method: str, seed: int) -> dict[str, np.ndarray]:
    """supcon's images for every method, except thanos: supcon with 30 of its wrong images right
    (a clear lift on every seed), and ce_ae: the same as supcon (no lift at all)."""
    images = _per_image(ds, "supcon", seed)
    key = "fine_head_acc" if ds == "digits" else WG_HEAD
    correct = images[key].copy()
    if method == "thanos":
        correct[np.flatnonzero(~correct)[:30]] = True
    elif method == "supcon_cnce":
        correct[np.flatnonzero(correct)[: 5 + 20 * seed]] = False  # below supcon, by a varying amount
    images[key] = correct
    if ds == "digits":
        images.update({k: correct for k in ("fine_probe_acc", "fine_knn_acc")})
    return images


def test_a_lift_whose_interval_includes_0_is_marked_and_not_ranked(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0, 1, 2), per_image=_shifted)
    write_report(params, paths.REPORTS)
    summary = json.loads((workdir / "reports/summary.json").read_text())
    digits = _sections((workdir / "reports/results.md").read_text())["digits"]
    same = summary["digits"]["ce_ae"]
    assert same["lift"] == 0.0 and same["lift_boot95_low"] == same["lift_boot95_high"] == 0.0
    assert _rows(digits, "ce_ae")[0][6] == "+0.0 [+0.0, +0.0]; [+0.0, +0.0] n.s."
    assert summary["digits"]["thanos"]["lift_t95_low"] > 0 and summary["digits"]["thanos"]["lift_boot95_low"] > 0
    assert not _rows(digits, "thanos")[0][6].endswith("n.s.")
    assert ("above `supcon`, largest lift first: `thanos` (+15.0); below `supcon`: none; not distinguishable "
            "from `supcon` (n.s.: an interval includes 0): `supcon_cnce`, `ce_ae`.") in digits


def test_report_is_byte_identical_on_rerun(workdir: Path, prepared: Path) -> None:
    params = make_project(workdir, prepared, seeds=(0, 1))
    write_report(params, paths.REPORTS)
    files = sorted(p for p in (workdir / "reports").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    write_report(params, paths.REPORTS)
    assert sorted(p for p in (workdir / "reports").rglob("*") if p.is_file()) == files
    assert all(p.read_bytes() == before[p] for p in files)
    assert {p.relative_to(workdir / "reports").as_posix() for p in files if p.suffix == ".png"} == {
        "headline.png", "projections/digits.png", "projections/spurious_digits.png", "history/digits.png",
        "history/spurious_digits.png"}


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_headline_figure_has_a_dot_per_seed_an_honest_axis_and_a_lift_panel(workdir: Path, prepared: Path,
                                                                          seeds: tuple[int, ...]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    params = make_project(workdir, prepared, seeds=seeds)
    write_report(params, paths.REPORTS)
    assert (workdir / "reports/headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = collect(params)
    from pipeline.reports import headline_statistics, lifts, summarise

    headlines = {"digits": "fine_head_acc", "spurious_digits": WG_HEADLINE}
    summary = summarise(runs, "supcon", lifts(runs, headline_statistics(params, runs), "supcon", headlines))
    fig = headline_figure(params, runs, summary)
    try:
        panels = np.array(fig.axes).reshape(2, 2)
        for (ax, lift_ax), ds, chance in zip(panels, ("digits", "spurious_digits"), (10.0, 0.0)):
            headline = headlines[ds]
            methods = [t.get_text() for t in ax.get_xticklabels()]
            assert sorted(methods) == sorted(METHODS)
            assert ax.get_ylim() == (chance, 100.0)  # from chance (10 fine classes) or 0, not from the data
            dots = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
            assert len(dots) == len(methods)
            for i, (m, xy) in enumerate(zip(methods, dots)):
                assert len(xy) == len(seeds)  # one dot per seed
                assert np.all(np.abs(xy[:, 0] - i) < 0.3)
                assert sorted(xy[:, 1]) == pytest.approx(sorted(_metric(workdir, ds, m, s, headline) for s in seeds))
            bars = [p for p in ax.patches]
            assert [b.get_y() for b in bars] == pytest.approx([chance] * len(methods))
            assert [b.get_y() + b.get_height() for b in bars] == pytest.approx(
                [np.mean([_metric(workdir, ds, m, s, headline) for s in seeds]) for m in methods])
            errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert len(errorbars) == (len(methods) if len(seeds) > 1 else 0)  # no interval from one seed
            if len(seeds) > 1:
                values = [_metric(workdir, ds, methods[0], s, headline) for s in seeds]
                (segments,) = errorbars[0].lines[2]
                (low, high) = segments.get_segments()[0][:, 1]
                mean, std = np.mean(values), _sample_std(values)
                half = stats.t.ppf(0.975, len(seeds) - 1) * std / math.sqrt(len(seeds))
                assert (low, high) == pytest.approx((mean - half, mean + half), abs=1e-6)

            others = [t.get_text() for t in lift_ax.get_xticklabels()]
            assert others == [m for m in methods if m != "supcon"]  # a lift for each method but the baseline
            lift_dots = [c.get_offsets() for c in lift_ax.collections if isinstance(c, PathCollection)]
            for m, xy in zip(others, lift_dots):
                diffs = [_metric(workdir, ds, m, s, headline) - _metric(workdir, ds, "supcon", s, headline)
                         for s in seeds]
                assert sorted(xy[:, 1]) == pytest.approx(sorted(diffs))
            zero = [line for line in lift_ax.lines if list(line.get_ydata()) == [0.0, 0.0]]
            assert len(zero) == 1  # the line at no lift
    finally:
        plt.close(fig)


def test_projection_is_coloured_by_group_with_a_named_legend(workdir: Path, prepared: Path) -> None:
    import matplotlib.pyplot as plt

    from pipeline.reports import projection_figure

    params = make_project(workdir, prepared, seeds=(0,))
    fig = projection_figure(params, "spurious_digits")
    try:
        (legend,) = fig.legends
        assert legend.get_title().get_text() == "group"
        assert [t.get_text() for t in legend.get_texts()] == ["0-4 / red", "0-4 / blue", "5-9 / red", "5-9 / blue"]
        assert not any(ax.get_label() == "<colorbar>" for ax in fig.axes)  # categorical: no colour bar
        assert [ax.get_title() for ax in fig.axes if ax.collections] == list(params.methods_for("spurious_digits"))
    finally:
        plt.close(fig)
    fig = projection_figure(params, "digits")
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [str(d) for d in range(10)]
    finally:
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
