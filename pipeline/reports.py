"""The compiled comparison: reports/results.md, its figures, and the compact summary `dvc metrics` prints.

Every number is a mean ± sample standard deviation over the suite's seeds; a lift is the
mean of per-seed differences of the headline metric to the baseline method (paired by seed),
with two 95 % intervals (:mod:`pipeline.intervals`): a t interval of the per-seed differences,
and a paired bootstrap over test images within each seed (from the evaluate stage's per-image
files). A lift counts as different from 0 only when both intervals exclude 0; otherwise the
report marks it "n.s." and ranks it nowhere. With one seed (n = 1) a standard deviation and the
t interval are undefined: summary.json stores ``null`` and the report shows no ± and "—".

Outputs: reports/results.md; reports/summary.json, per dataset and method only the headline
(mean, std, n) and the lift with its intervals (:func:`compact_summary`); the same rows as one
file each, reports/metrics/<dataset>/<method>.json, the files `dvc metrics show` prints (one row
per file, so a row per method); figures reports/headline.png, reports/projections/<dataset>.png
and reports/history/<dataset>.png (images, so that `dvc plots show` needs no script).

The report is a DVC output and a function of its inputs only (metrics, embeddings, model files,
prepared-cache metadata, params): nothing measured at run time, such as training wall-clock,
appears in it. An input that is missing, truncated or foreign raises
:class:`~pipeline.errors.OutputFileError` naming the file and the stage that rewrites it.

Everything that depends on a dataset's task (its headline metric, its section and tables, its
protocol notes) comes from the task object (:mod:`pipeline.tasks`); facts about a dataset (its
published numbers, its averaging convention) from its source's entry in
:mod:`pipeline.data.registry`. This module names no task and no dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.config import Params
from pipeline.data.records import SPLITS
from pipeline.errors import OutputFileError
from pipeline.formats import MODEL_FORMAT
from pipeline.intervals import N_RESAMPLES, Statistic, distinguishable, paired_bootstrap_interval, t_interval
from pipeline.io import atomic_write, load_arrays, read_json, write_json, write_text
from pipeline.tasks import TASKS, SectionInput, Task, frame, markdown_table


def _rerun(stage: str) -> str:
    return f"rerun the stage that writes it: `dvc repro {stage}`"


def _input_error(path: Path, stage: str, err: BaseException) -> OutputFileError:
    """One line naming an unreadable input of the report and the stage that rewrites it."""
    if isinstance(err, FileNotFoundError):
        return OutputFileError(f"{path}: not found; {_rerun(stage)}")
    # pipeline.io's messages start with the path and end with advice: keep what went wrong.
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    detail = detail.removeprefix(f"{path}: ").split("; ")[0]
    return OutputFileError(f"{path}: {detail}; delete it and {_rerun(stage)}")


def _read_input(path: Path, stage: str, read: Any) -> Any:
    """``read(path)``, with a missing or unreadable file as an :class:`OutputFileError`."""
    try:
        return read(path)
    except (OSError, ValueError) as err:  # io's FileNotFoundError / ValueError, or OutputFileError
        raise _input_error(path, stage, err) from None


def _download_stage(params: Params, dataset: str) -> str:
    return ("download_robust" if dataset in params.suite.robustness.datasets else "download") + f"@{dataset}"


def _prepared_meta(params: Params, dataset: str) -> dict[str, Any]:
    path = paths.prepared_path(dataset) / "meta.json"
    meta = _read_input(path, _download_stage(params, dataset), read_json)
    if not isinstance(meta, dict) or "task" not in meta or "statistics" not in meta:
        raise OutputFileError(f"{path}: not a prepared-cache meta.json of this harness; delete it and "
                              f"{_rerun(_download_stage(params, dataset))}")
    return meta


def task_of(params: Params, dataset: str) -> Task:
    """The task recorded in a prepared dataset's cache."""
    name = _prepared_meta(params, dataset)["task"]
    if name not in TASKS:
        path = paths.prepared_path(dataset) / "meta.json"
        raise OutputFileError(f"{path}: records task {name!r}, which this harness does not know (known: "
                              f"{', '.join(TASKS)}); delete it and {_rerun(_download_stage(params, dataset))}")
    return TASKS[name]


def headline_of(params: Params, dataset: str) -> str:
    """The metric a dataset's lifts and bar chart use."""
    return task_of(params, dataset).headline(params)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1); the std is None for a single value."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def collect(params: Params) -> dict[str, dict[str, list[dict[str, float]]]]:
    """{dataset: {method: [metrics of each seed, in suite order]}} from the evaluate outputs.

    A missing, unreadable or foreign metrics file raises :class:`OutputFileError` naming it
    and its evaluate stage.
    """
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for ds in params.suite_datasets:
        headline = headline_of(params, ds)
        runs[ds] = {}
        for m in params.methods_for(ds):
            seeds = []
            for s in params.suite.seeds:
                path = paths.metrics_path(ds, m, s)
                stage = paths.stage_name(params.stage_kind("evaluate", ds, m), ds, m, s)
                metrics = _read_input(path, stage, read_json)
                if not (isinstance(metrics, dict) and all(_is_number(v) for v in metrics.values())):
                    raise OutputFileError(f"{path}: not a metrics file of this harness (a JSON object of "
                                          f"numbers); delete it and {_rerun(stage)}")
                if headline not in metrics:
                    raise OutputFileError(f"{path}: has no {headline!r} metric; {_rerun(stage)}")
                if seeds and set(metrics) != set(seeds[0]):
                    first = paths.metrics_path(ds, m, params.suite.seeds[0])
                    raise OutputFileError(
                        f"{path}: holds other metrics than {first} (written by another version?); "
                        f"{_rerun(stage)} and that of {first}")
                seeds.append(metrics)
            runs[ds][m] = seeds
    return runs


def headline_statistics(params: Params, runs: dict[str, dict[str, list[dict[str, float]]]]
                        ) -> dict[str, dict[str, list[tuple[Statistic, int]]]]:
    """{dataset: {method: [(headline statistic over test images, N test images) per seed]}}.

    Read from the evaluate stage's per-image files; each must give, on all its images, the
    headline of the metrics file beside it (else the two are from different runs), and a
    method must have as many test images as the baseline on the same seed (the bootstrap pairs them).
    """
    out: dict[str, dict[str, list[tuple[Statistic, int]]]] = {}
    for ds, methods in runs.items():
        task, headline = task_of(params, ds), headline_of(params, ds)
        out[ds] = {}
        for m, seeds in methods.items():
            out[ds][m] = []
            for s, metrics in zip(params.suite.seeds, seeds):
                path = paths.predictions_path(ds, m, s)
                stage = paths.stage_name(params.stage_kind("evaluate", ds, m), ds, m, s)
                arrays = _read_input(path, stage, load_arrays)
                sizes = {len(np.atleast_1d(a)) for a in arrays.values()}
                try:
                    if len(sizes) != 1:
                        raise ValueError(f"arrays of different lengths {sorted(sizes)}")
                    statistic, n = task.headline_statistic(arrays, headline), sizes.pop()
                    value = float(statistic(np.arange(n)))
                except (KeyError, ValueError) as err:
                    raise OutputFileError(f"{path}: not a per-image file of this harness for {headline!r} "
                                          f"({type(err).__name__}: {err}); delete it and {_rerun(stage)}") from None
                if abs(value - metrics[headline]) > 1e-6:
                    raise OutputFileError(
                        f"{path}: gives {headline} = {value:.4f}, its metrics file {paths.metrics_path(ds, m, s)} "
                        f"{metrics[headline]:.4f} (written by different runs); {_rerun(stage)}")
                out[ds][m].append((statistic, n))
    for ds, methods in out.items():
        for m, per_seed in methods.items():
            first = next(iter(methods.values()))
            for s, (_, n), (_, n0) in zip(params.suite.seeds, per_seed, first):
                if n != n0:
                    stage = paths.stage_name(params.stage_kind("evaluate", ds, m), ds, m, s)
                    raise OutputFileError(f"{paths.predictions_path(ds, m, s)}: {n} test images, "
                                          f"{paths.predictions_path(ds, next(iter(methods)), s)} {n0} (another "
                                          f"version of the dataset?); {_rerun(stage)}")
    return out


def lifts(runs: dict[str, dict[str, list[dict[str, float]]]], statistics: dict[str, dict[str, list[tuple[Statistic, int]]]],
          baseline: str, headlines: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {method: lift}} of each method but the baseline: {mean, std, n, t95, boot95,
    distinguishable}, t95 / boot95 a [low, high] 95 % interval (t95 None for one seed).

    A dataset whose methods do not include ``baseline`` gets no lifts.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ds, methods in runs.items():
        out[ds] = {}
        if baseline not in methods:
            continue
        headline = headlines[ds]
        base = statistics[ds][baseline]
        for m, seeds in methods.items():
            if m == baseline:
                continue  # its lift over itself is 0 by construction
            diffs = [r[headline] - b[headline] for r, b in zip(seeds, methods[baseline])]
            seeds_ci = t_interval(diffs)
            images_ci = paired_bootstrap_interval([st for st, _ in statistics[ds][m]], [st for st, _ in base],
                                                  [n for _, n in base])
            out[ds][m] = {**_stat(diffs), "t95": _rounded(seeds_ci), "boot95": _rounded(images_ci),
                          "distinguishable": distinguishable(seeds_ci, images_ci)}
    return out


def _rounded(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]], baseline: str,
              lift: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """{dataset: {method: {metric: {mean, std, n}}}}, every metric: what results.md is written from;
    with ``lift_over_<baseline>`` from ``lift`` (:func:`lifts`) where it has the method."""
    out: dict[str, Any] = {}
    for ds, methods in runs.items():
        out[ds] = {}
        for m, seeds in methods.items():
            entry: dict[str, Any] = {key: _stat([r[key] for r in seeds]) for key in seeds[0]}
            if lift is not None and m in lift.get(ds, {}):
                entry[f"lift_over_{baseline}"] = lift[ds][m]
            out[ds][m] = entry
    return out


def compact_summary(summary: dict[str, Any], baseline: str, headlines: dict[str, str]) -> dict[str, Any]:
    """summary.json: {dataset: {method: row}}, a row holding only the headline and its lift:

    ``metric`` (the headline's name), ``mean``, ``std``, ``n``; and, for every method but the
    baseline, ``lift`` (mean of the per-seed differences), ``lift_std``, ``lift_t95_low`` /
    ``lift_t95_high`` (t interval over seeds; null for one seed) and ``lift_boot95_low`` /
    ``lift_boot95_high`` (paired bootstrap over test images). Percentage points.
    """
    out: dict[str, Any] = {}
    for ds, methods in summary.items():
        out[ds] = {}
        for m, entry in methods.items():
            row: dict[str, Any] = {"metric": headlines[ds], **entry[headlines[ds]]}
            lift = entry.get(f"lift_over_{baseline}")
            if lift is not None:
                t95, boot95 = lift["t95"] or [None, None], lift["boot95"]
                row |= {"lift": lift["mean"], "lift_std": lift["std"], "lift_t95_low": t95[0],
                        "lift_t95_high": t95[1], "lift_boot95_low": boot95[0], "lift_boot95_high": boot95[1]}
            out[ds][m] = row
    return out


def _stat(values: list[float]) -> dict[str, Any]:
    """{mean, std, n} as summary.json stores it: std is null for one value (n = 1)."""
    mu, sd = mean_std(values)
    return {"mean": round(mu, 4), "std": None if sd is None else round(sd, 4), "n": len(values)}


def _one_seed_line(params: Params) -> list[str]:
    """Above a results table when n = 1: the cells are one seed's values, not means."""
    if len(params.suite.seeds) > 1:
        return []
    return [f"One seed (n = 1, seed {params.suite.seeds[0]}): each cell is that run's value, with no spread.",
            ""]


def _describe(params: Params, method: str, dataset: str) -> str:
    if params.is_concat(method):
        return "concat[" + ", ".join(params.methods.concat[method]) + "]"
    active = params.methods.trained[method].active()
    if not active:  # every weight 0: the initial encoder, never trained
        start = params.datasets[dataset].recipe.pretrained
        return f"untrained: frozen {start} weights" if start else "untrained: frozen random initialisation"
    return " + ".join(f"{w:g}·{t}" for t, w in active.items())


def dataset_section(params: Params, dataset: str) -> list[str]:
    """Markdown tables of image counts per split for each label of a prepared dataset."""
    meta_path = paths.prepared_path(dataset) / "meta.json"
    stats = _prepared_meta(params, dataset)["statistics"]
    lines = [f"Images per split, from the prepared cache (`{meta_path}`):", ""]
    for label in dict.fromkeys(r["label"] for r in stats):
        rows = [r for r in stats if r["label"] == label]
        values = list(dict.fromkeys((r["value"], r["name"]) for r in rows))
        count = {(r["split"], r["value"]): r["count"] for r in rows}
        table = frame([[count.get((s, v), 0) for s in SPLITS] for v, _ in values], [name for _, name in values],
                      SPLITS, index_names=(label,))
        lines += [*markdown_table(table), ""]
    return lines


def _model_hardware(params: Params, ds: str, method: str, seed: int) -> str:
    """The hardware recorded in one model file; :class:`OutputFileError` if it is not one."""
    import torch

    path = paths.model_path(ds, method, seed)
    stage = paths.stage_name(params.stage_kind("train", ds, method), ds, method, seed)
    if not path.is_file():
        raise OutputFileError(f"{path}: model file not found; {_rerun(stage)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, unreadable: torch raises many kinds
        detail = (str(err).splitlines() or [""])[0].split(". ")[0]  # torch appends paragraphs of advice
        detail = detail if len(detail) <= 160 else detail[:159] + "…"
        raise OutputFileError(f"{path}: not a readable model file ({type(err).__name__}: {detail}); it may be "
                              f"truncated or foreign: delete it and {_rerun(stage)}") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise OutputFileError(f"{path}: not a {MODEL_FORMAT} model file (foreign, or written by another "
                              f"version); delete it and {_rerun(stage)}")
    return str(state.get("hardware", "not recorded (model file older than this field)"))


def _hardware_line(params: Params, ds: str) -> str:
    """Which hardware trained this dataset's models, read from the model files themselves."""
    seen: dict[str, int] = {}
    for m in params.methods_for(ds):
        if params.is_concat(m):
            continue
        for s in params.suite.seeds:
            name = _model_hardware(params, ds, m, s)
            seen[name] = seen.get(name, 0) + 1
    runs = "; ".join(f"{name} ({n} run{'s' if n != 1 else ''})" for name, n in seen.items())
    return f"Trained on: {runs}."


def _recipe_line(params: Params, ds: str) -> str:
    r = params.datasets[ds].recipe
    start = f" from `{r.pretrained}` weights" if r.pretrained else ""
    return (f"Backbone `{r.backbone}`{start}, {r.epochs} epochs, batch {r.batch_size} x {r.views} views, AdamW lr "
            f"{r.lr:g}, weight decay {r.weight_decay:g}, temperature {params.train.temperature:g}, "
            f"augmentation `{r.augment}`.")


def _section_input(params: Params, ds: str, methods: dict[str, Any]) -> SectionInput:
    """What a dataset's task writes its section from: the summary, the shared lines, and the
    registry entries of the dataset's source and of every dataset of its task with published numbers."""
    from pipeline.data.registry import DATASETS

    task = task_of(params, ds)
    return SectionInput(
        dataset=ds,
        spec=DATASETS[params.datasets[ds].source],
        references=tuple(s for s in DATASETS.values() if s.task == task.name and s.reference),
        methods=methods,
        describe={m: _describe(params, m, ds) for m in methods},
        baseline=params.report.baseline,
        recipe=_recipe_line(params, ds),
        hardware=_hardware_line(params, ds),
        one_seed=_one_seed_line(params),
        label_names=_label_names(params, ds),
        ranking=lift_ranking(params, ds, methods),
    )


def _label_names(params: Params, dataset: str) -> dict[str, dict[int, str]]:
    """{label: {value: readable name}} from the prepared cache's statistics ("5-9 / red")."""
    names: dict[str, dict[int, str]] = {}
    for row in _prepared_meta(params, dataset)["statistics"]:
        names.setdefault(row["label"], {})[int(row["value"])] = str(row["name"])
    return names


def results_markdown(params: Params, summary: dict[str, Any]) -> str:
    base = params.report.baseline
    seeds = ", ".join(str(s) for s in params.suite.seeds)
    metrics = "(" + "; ".join(f"{t.label}: `{t.headline(params)}`" for t in TASKS.values()) + ")"
    if len(params.suite.seeds) == 1:
        spread = [
            f"Every cell: the value of seed {seeds}; one seed (n = 1): no spread (the standard deviation "
            "of one run is undefined, so none is shown); accuracies in %.",
            f"Lift: the difference to `{base}` of each dataset's headline metric {metrics} on that seed.",
        ]
    else:
        spread = [
            f"Every cell: mean ± sample std over seeds {seeds} (n = {len(params.suite.seeds)}); accuracies in %.",
            f"Lift: the mean over seeds of the per-seed difference to `{base}` of each dataset's headline "
            f"metric {metrics}, in points.",
        ]
    spread += [
        f"Each lift carries two 95 % intervals, `lift [seeds]; [test images]`: a t interval of the per-seed "
        f"differences (n - 1 degrees of freedom; undefined, —, for one seed), and a paired bootstrap over test "
        f"images ({N_RESAMPLES} resamples, percentile interval, fixed RNG seed): within each seed the same "
        f"resampled images score the method and `{base}`, and a replicate is the mean over seeds of the "
        "differences. The first measures how much a lift moves between training runs, the second how much "
        "it moves with the test sample. A lift counts as different from 0 only when both intervals exclude "
        "0; otherwise it is marked n.s. (not significant) and not ranked.",
    ]
    lines = [
        "# Results",
        "",
        "Compiled by the `report` stage (`dvc repro`) from the evaluate outputs; do not edit by hand.",
        *spread,
        "",
    ]
    for task in TASKS.values():
        lines += task.preamble(params)
    for ds, methods in summary.items():
        lines += task_of(params, ds).report_section(_section_input(params, ds, methods))
        lines += ["", f"![test embeddings, PCA](projections/{ds}.png)", ""]
        lines += dataset_section(params, ds)
    lines += ["![headline metric per method](headline.png)", ""]
    return "\n".join(lines)


def lift_ranking(params: Params, dataset: str, methods: dict[str, Any]) -> list[str]:
    """The sentence that ranks a dataset's lifts: only those whose intervals both exclude 0, largest
    first; the rest are listed as indistinguishable from the baseline, in suite order."""
    base = params.report.baseline
    entries = {m: e[f"lift_over_{base}"] for m, e in methods.items() if f"lift_over_{base}" in e}
    if not entries:
        return []
    real = sorted((m for m, e in entries.items() if e["distinguishable"]), key=lambda m: -entries[m]["mean"])
    above = [f"`{m}` ({entries[m]['mean']:+.1f})" for m in real if entries[m]["mean"] > 0]
    below = [f"`{m}` ({entries[m]['mean']:+.1f})" for m in real if entries[m]["mean"] < 0]
    unclear = [f"`{m}`" for m, e in entries.items() if not e["distinguishable"]]
    parts = [f"above `{base}`, largest lift first: {', '.join(above) or 'none'}",
             f"below `{base}`: {', '.join(below) or 'none'}"]
    if unclear:
        parts.append(f"not distinguishable from `{base}` (n.s.: an interval includes 0): {', '.join(unclear)}")
    title = task_of(params, dataset).metric_title(headline_of(params, dataset))
    return [f"Lifts in {title} over `{base}`, ranked only where both 95 % intervals exclude 0: "
            f"{'; '.join(parts)}.", ""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Colours of the headline figure: a lift both intervals separate from 0, and one they do not.
_REAL, _UNCLEAR, _SEED = "#1f5fa6", "#9a9a9a", "#333333"


def headline_figure(params: Params, runs: dict[str, dict[str, list[dict[str, float]]]],
                    summary: dict[str, Any]) -> Any:
    """Per dataset (a row), two panels; the caller closes the figure.

    Left, the headline of each method: one dot per seed, the mean (a bar from the axis's start,
    chance or 0) and its 95 % t interval over seeds (none for one seed). Right, the lift over the
    baseline: one dot per seed's difference, the mean with its t interval over seeds (thick) and
    its paired bootstrap interval over test images (thin); grey, with "n.s.", where either
    interval includes 0. Dots are jittered sideways by a fixed amount, so the figure is deterministic.
    """
    plt = _pyplot()
    base = params.report.baseline
    datasets = list(summary)
    n_methods = max(len(summary[ds]) for ds in datasets)
    width = max(10.0, 1.2 * n_methods * 2)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(width, 4.2 * len(datasets)), squeeze=False,
                             layout="constrained", width_ratios=[1, 1])
    seeds = params.suite.seeds
    jitter = np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for (ax, lift_ax), ds in zip(axes, datasets):
        task, headline = task_of(params, ds), headline_of(params, ds)
        title = task.metric_title(headline)
        methods = list(summary[ds])
        floor = task.chance(_label_names(params, ds))
        x = np.arange(len(methods))
        for i, m in enumerate(methods):
            values = np.array([r[headline] for r in runs[ds][m]])
            mean = summary[ds][m][headline]["mean"]
            ax.bar(i, mean - floor, bottom=floor, width=0.6, color="#c9d7ea", zorder=1)
            ax.scatter(i + jitter, values, s=18, color=_SEED, zorder=3)
            interval = t_interval(values)
            if interval is not None:
                ax.errorbar(i, mean, yerr=[[mean - interval[0]], [interval[1] - mean]], fmt="none", ecolor=_REAL,
                            elinewidth=2, capsize=5, zorder=4)
        ax.set_xticks(x, methods, rotation=35, ha="right")
        ax.set_ylim(floor, 100.0)
        start = f"chance, {floor:.0f} %" if floor > 0 else "0"
        spread = f"{len(seeds)} seeds" if len(seeds) > 1 else f"one seed ({seeds[0]}), no interval"
        ax.set_ylabel(f"{title} (%)\naxis from {start}", fontsize=9)
        ax.set_title(f"{ds}: {spread}", fontsize=10)

        others = [m for m in methods if f"lift_over_{base}" in summary[ds][m]]
        lift_ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
        for i, m in enumerate(others):
            entry = summary[ds][m][f"lift_over_{base}"]
            colour = _REAL if entry["distinguishable"] else _UNCLEAR
            diffs = [r[headline] - b[headline] for r, b in zip(runs[ds][m], runs[ds][base])]
            lift_ax.scatter(i + jitter, diffs, s=18, color=_SEED, zorder=3)
            low, high = entry["boot95"]
            lift_ax.vlines(i + 0.28, low, high, color=colour, linewidth=1.2, zorder=2)
            if entry["t95"] is not None:
                lift_ax.vlines(i, *entry["t95"], color=colour, linewidth=4, alpha=0.6, zorder=2)
            lift_ax.plot([i - 0.25, i + 0.25], [entry["mean"]] * 2, color=colour, linewidth=2, zorder=4)
            if not entry["distinguishable"]:
                lift_ax.annotate("n.s.", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                                 fontsize=8, color=_UNCLEAR)
        lift_ax.set_xticks(range(len(others)), others, rotation=35, ha="right")
        lift_ax.set_xlim(-0.6, max(len(others), 1) - 0.4)
        lift_ax.set_ylabel(f"lift over {base} (points)", fontsize=9)
        lift_ax.set_title(f"{ds}: lift over {base}", fontsize=10)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", color=_SEED, markersize=5, label="one seed"),
        Line2D([], [], color=_REAL, linewidth=2, marker="_", markersize=10, label="mean, 95 % t interval over seeds"),
        Line2D([], [], color=_REAL, linewidth=4, alpha=0.6, label="lift: 95 % t interval over seeds"),
        Line2D([], [], color=_REAL, linewidth=1.2, label="lift: 95 % paired bootstrap over test images"),
        Line2D([], [], color=_UNCLEAR, linewidth=4, label="an interval includes 0: n.s., not ranked"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def _write_png(fig: Any, path: Path, dpi: int) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None}))


def _test_embeddings(params: Params, dataset: str, method: str, seed: int) -> dict[str, np.ndarray]:
    """The test split of one embedding file; :class:`OutputFileError` if it is not readable."""
    path = paths.embedding_path(dataset, method, seed)
    stage = paths.stage_name(params.stage_kind("embed", dataset, method), dataset, method, seed)
    arrays = _read_input(path, stage, load_arrays)
    if "test_x" not in arrays or getattr(arrays["test_x"], "ndim", 0) != 2:
        raise OutputFileError(f"{path}: not an embedding file of this harness (no (N, d) `test_x`); "
                              f"delete it and {_rerun(stage)}")
    return arrays


def projection_figure(params: Params, dataset: str) -> Any:
    """PCA of each method's test embeddings (first seed), one panel each, coloured by the task's
    projection label (fine class; group = label x attribute) with a categorical legend of the
    prepared cache's names ("5-9 / red"). The caller closes it."""
    from matplotlib.lines import Line2D

    from pipeline.evaluation.projection import categorical_colours, project_2d

    plt = _pyplot()
    task = task_of(params, dataset)
    label = task.projection_label
    names = _label_names(params, dataset).get(label, {})
    methods = params.methods_for(dataset)
    seed = params.suite.seeds[0]
    arrays = {m: _test_embeddings(params, dataset, m, seed) for m in methods}  # all read before drawing
    for m, a in arrays.items():
        if f"test_{label}" not in a:
            path = paths.embedding_path(dataset, m, seed)
            raise OutputFileError(f"{path}: has no `test_{label}` labels; delete it and "
                                  f"{_rerun(paths.stage_name(params.stage_kind('embed', dataset, m), dataset, m, seed))}")
    values = np.unique(np.concatenate([arrays[m][f"test_{label}"] for m in methods]))
    # Groups of a binary attribute (ids label x 2 + attribute): a hue per label, a shade per attribute.
    paired = label == "group" and len(_label_names(params, dataset).get("attribute", {})) == 2
    colours = categorical_colours(len(values), paired=paired)
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.8, 3.0 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax, m in zip(axes.flat, methods):
        xy = project_2d(arrays[m]["test_x"], method="pca", seed=seed)
        y = arrays[m][f"test_{label}"]
        if colours is None:  # too many classes to tell apart by colour: a continuous map, no legend
            ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="turbo", s=5, linewidths=0)
        else:
            for value, colour in zip(values, colours):
                inside = y == value
                ax.scatter(xy[inside, 0], xy[inside, 1], color=colour, s=5, linewidths=0, alpha=0.8)
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    if colours is not None:
        handles = [Line2D([], [], marker="o", linestyle="", color=c, label=names.get(int(v), str(v)))
                   for v, c in zip(values, colours)]
        fig.legend(handles=handles, title=label, loc="outside right upper", fontsize=8, title_fontsize=9,
                   frameon=False)
    fig.suptitle(f"{dataset}: test embeddings, PCA, seed {seed}, coloured by {label}", fontsize=11)
    return fig


def history_figure(params: Params, dataset: str) -> Any | None:
    """Total training loss per epoch of each trained method (a panel each), a line per seed; None
    when no method trains (the untrained baseline has an empty history). The caller closes it."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    histories: dict[str, list[list[dict[str, float]]]] = {}
    for m in params.methods_for(dataset):
        if params.is_concat(m):
            continue
        runs = []
        for s in params.suite.seeds:
            path = paths.history_path(dataset, m, s)
            stage = paths.stage_name(params.stage_kind("train", dataset, m), dataset, m, s)
            history = _read_input(path, stage, read_json)
            if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h and "loss/total" in h
                                                        for h in history):
                raise OutputFileError(f"{path}: not a training history of this harness (a list of epochs with "
                                      f"`loss/total`); delete it and {_rerun(stage)}")
            runs.append(history)
        if any(runs):
            histories[m] = runs
    if not histories:
        return None
    cols = min(4, len(histories))
    rows = -(-len(histories) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax, (m, runs) in zip(axes.flat, histories.items()):
        for s, history in zip(params.suite.seeds, runs):
            ax.plot([h["epoch"] for h in history], [h["loss/total"] for h in history], linewidth=1,
                    label=f"seed {s}")
        ax.set_title(m, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].set_ylabel("total loss", fontsize=8)
    axes.flat[0].legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    fig.suptitle(f"{dataset}: training loss per epoch", fontsize=11)
    return fig


def _replace_folder_files(folder: Path, keep: set[Path], suffix: str) -> None:
    """Remove the ``suffix`` files of ``folder`` (recursively) that this run did not write: a method
    or dataset left out of the suite leaves no stale row or figure behind."""
    if folder.is_dir():
        for path in folder.rglob(f"*{suffix}"):
            if path not in keep:
                path.unlink()


def write_report(params: Params, out_dir: Path) -> None:
    """Compile every output of the report stage.

    Every input is read (and checked) before the first output is written, so a bad input
    leaves the previous report untouched rather than half replaced.
    """
    plt = _pyplot()
    runs = collect(params)
    headlines = {ds: headline_of(params, ds) for ds in params.suite_datasets}
    statistics = headline_statistics(params, runs)
    summary = summarise(runs, params.report.baseline, lifts(runs, statistics, params.report.baseline, headlines))
    compact = compact_summary(summary, params.report.baseline, headlines)
    markdown = results_markdown(params, summary)
    figures: dict[Path, tuple[Any, int]] = {}
    try:
        figures[out_dir / "headline.png"] = (headline_figure(params, runs, summary), 100)
        for ds in params.suite_datasets:
            figures[out_dir / "projections" / f"{ds}.png"] = (projection_figure(params, ds), 90)
            history = history_figure(params, ds)
            if history is not None:
                figures[out_dir / "history" / f"{ds}.png"] = (history, 80)
        for path, (fig, dpi) in figures.items():
            _write_png(fig, path, dpi)
    finally:
        for fig, _ in figures.values():
            plt.close(fig)
    rows = {out_dir / "metrics" / ds / f"{m}.json": row for ds, methods in compact.items() for m, row in methods.items()}
    for path, row in rows.items():
        write_json(path, row)
    _replace_folder_files(out_dir / "metrics", set(rows), ".json")
    for folder in ("projections", "history"):
        _replace_folder_files(out_dir / folder, set(figures), ".png")
    write_text(out_dir / "results.md", markdown)
    write_json(out_dir / "summary.json", compact)
