"""The compiled comparison: reports/results.md, a bar chart, and summary.json for `dvc metrics`.

Every number is a mean ± sample standard deviation over the suite's seeds; a lift is the
mean of per-seed differences to the baseline method (paired by seed), with their std. With one
seed (n = 1) a standard deviation is undefined: summary.json stores ``"std": null`` and the
report and the bar chart show the single value, with no ± and no error bar.

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


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]], baseline: str,
              headlines: dict[str, str]) -> dict[str, Any]:
    """{dataset: {method: {metric: {mean, std, n}}, with lift_over_<baseline> of its headline}}.

    A dataset whose methods do not include ``baseline`` gets no lifts.
    """
    out: dict[str, Any] = {}
    for ds, methods in runs.items():
        out[ds] = {}
        headline = headlines[ds]
        base = [r[headline] for r in methods[baseline]] if baseline in methods else None
        for m, seeds in methods.items():
            entry: dict[str, Any] = {}
            for key in seeds[0]:
                entry[key] = _stat([r[key] for r in seeds])
            if base is not None:
                entry[f"lift_over_{baseline}"] = _stat([r[headline] - b for r, b in zip(seeds, base)])
            out[ds][m] = entry
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
            f"Lift: per-seed difference to `{base}` of each dataset's headline metric {metrics}, mean ± std.",
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


def bar_chart_figure(params: Params, summary: dict[str, Any]) -> Any:
    """The headline metric per method and dataset: mean with ± std error bars over the seeds,
    or, with one seed (n = 1), that seed's value and no error bar. The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(summary)
    # At least 4 inches a panel: titles and y labels of a small suite do not overlap.
    width = max(1.0 + 1.1 * len(params.method_names), 4.0 * len(datasets))
    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        methods = list(summary[ds])
        headline = headline_of(params, ds)
        entries = [summary[ds][m][headline] for m in methods]
        means = [e["mean"] for e in entries]
        spread = all(e["std"] is not None for e in entries)
        ax.bar(range(len(methods)), means, yerr=[e["std"] for e in entries] if spread else None,
               capsize=4 if spread else 0, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        low = max(0.0, min(e["mean"] - (e["std"] or 0.0) for e in entries) - 10.0)  # whole error bars
        ax.set_ylim(low, 100.0)
        title = task_of(params, ds).metric_title(headline)
        n = max(e["n"] for e in entries)
        ax.set(ylabel=f"{title} (%)",
               title=f"{ds}: mean ± std over {n} seeds" if spread
               else f"{ds}: n = 1 (seed {params.suite.seeds[0]})")
    fig.tight_layout()
    return fig


def _write_png(fig: Any, path: Path, dpi: int) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None}))


def _save_png(fig: Any, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    try:
        return _write_png(fig, path, dpi)
    finally:
        plt.close(fig)


def bar_chart(params: Params, summary: dict[str, Any], path: Path) -> Path:
    return _save_png(bar_chart_figure(params, summary), path, dpi=110)


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
    """PCA of each method's test embeddings (first seed), coloured by fine label, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.evaluation.projection import project_2d

    methods = params.methods_for(dataset)
    seed = params.suite.seeds[0]
    arrays = {m: _test_embeddings(params, dataset, m, seed) for m in methods}  # all read before drawing
    cols = 4
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        xy = project_2d(arrays[m]["test_x"], method="pca", seed=seed)
        label = arrays[m].get("test_fine", arrays[m].get("test_group"))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=label, cmap="tab10", s=6, linewidths=0)
        ax.set_title(m, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="fine label")
    fig.suptitle(f"{dataset}: test embeddings, PCA, seed {seed}")
    return fig


def projection_grid(params: Params, dataset: str, path: Path) -> Path:
    return _save_png(projection_figure(params, dataset), path, dpi=90)


def write_report(params: Params, out_dir: Path) -> None:
    """Compile every output of the report stage.

    Every input is read (and checked) before the first output is written, so a bad input
    leaves the previous report untouched rather than half replaced.
    """
    import matplotlib.pyplot as plt

    runs = collect(params)
    summary = summarise(runs, params.report.baseline,
                        {ds: headline_of(params, ds) for ds in params.suite_datasets})
    markdown = results_markdown(params, summary)
    figures: dict[Path, tuple[Any, int]] = {}
    try:
        figures[out_dir / "headline.png"] = (bar_chart_figure(params, summary), 110)
        for ds in params.suite_datasets:
            figures[out_dir / "projections" / f"{ds}.png"] = (projection_figure(params, ds), 90)
        for path, (fig, dpi) in figures.items():
            _write_png(fig, path, dpi)
    finally:
        for fig, _ in figures.values():
            plt.close(fig)
    write_text(out_dir / "results.md", markdown)
    write_json(out_dir / "summary.json", summary)
