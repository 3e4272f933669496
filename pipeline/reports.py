"""The compiled comparison: reports/results.md, a bar chart, and summary.json for `dvc metrics`.

Every number is a mean ± sample standard deviation over the suite's seeds; a lift is the
mean of per-seed differences to the baseline method (paired by seed), with their std.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.config import Params
from pipeline.io import atomic_write, read_json, write_json, write_text

# METHOD.md section 6: CIFAR-10 coarse (2) -> fine (10) top-1, from the official repository's README.
PAPER_CIFAR10_FINE = {"supcon": 51.8, "supcon_cnce": 77.1, "supcon_ae": 71.7, "thanos": 79.1}

# Metrics shown in the table, in order, with their column titles.
COARSE_TO_FINE_COLUMNS = {
    "fine_head_acc": "Fine acc. (reference head)",
    "fine_probe_acc": "Fine acc. (logreg probe)",
    "fine_knn_acc": "Fine kNN acc.",
    "coarse_probe_acc": "Coarse acc. (logreg)",
}


def machine_description() -> str:
    """CPU model and core count (and GPU, if any) of this machine, for the report."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
        text += f", torch {torch.__version__}"
    except ImportError:
        pass
    return text


ROBUSTNESS_METHODS = {
    "erm": "ERM",
    "discovered_gdro": "Discovered groups + gDRO",
    "oracle_gdro": "Oracle gDRO",
    "oracle_balanced": "Oracle balanced",
}
WORST_GROUP_HEADLINE = "discovered_gdro/worst_group_acc"
HEADLINE_TITLES = {"discovered_gdro/worst_group_acc": "Worst-group acc., discovered groups + gDRO"}

GEOMETRY_COLUMNS = {
    "geom_class_spread_ratio": "Within / between class spread (training label)",
    "geom_fine_knn_purity": "Fine-label kNN purity inside class",
    "geom_uniformity": "Uniformity (lower = more uniform)",
}


def loss_curve_figure(history: list[dict[str, float]], title: str) -> Any:
    """A matplotlib figure of every loss term per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for key in sorted(k for k in history[0] if k.startswith("loss/")):
        ax.plot(epochs, [h[key] for h in history], label=key.removeprefix("loss/"))
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def dataset_task(dataset: str) -> str:
    """The task recorded in a prepared dataset's cache."""
    return read_json(Path("data/prepared") / dataset / "meta.json")["task"]


def headline_of(params: Params, dataset: str) -> str:
    """The metric a dataset's lifts and bar chart use."""
    return WORST_GROUP_HEADLINE if dataset_task(dataset) == "worst_group" else params.report.headline


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def collect(params: Params) -> dict[str, dict[str, list[dict[str, float]]]]:
    """{dataset: {method: [metrics of each seed, in suite order]}} from the evaluate outputs."""
    return {
        ds: {m: [read_json(paths.metrics_path(ds, m, s)) for s in params.suite.seeds]
             for m in params.method_names}
        for ds in params.suite.datasets
    }


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]], baseline: str,
              headlines: dict[str, str]) -> dict[str, Any]:
    """{dataset: {method: {metric: {mean, std, n}}, with lift_over_<baseline> of its headline}}."""
    out: dict[str, Any] = {}
    for ds, methods in runs.items():
        out[ds] = {}
        headline = headlines[ds]
        base = [r[headline] for r in methods[baseline]]
        for m, seeds in methods.items():
            entry: dict[str, Any] = {}
            for key in seeds[0]:
                mu, sd = mean_std([r[key] for r in seeds])
                entry[key] = {"mean": round(mu, 4), "std": round(sd, 4), "n": len(seeds)}
            mu, sd = mean_std([r[headline] - b for r, b in zip(seeds, base)])
            entry[f"lift_over_{baseline}"] = {"mean": round(mu, 4), "std": round(sd, 4), "n": len(seeds)}
            out[ds][m] = entry
    return out


def _fmt(entry: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.1f} ± {entry['std']:.1f}"


def _describe(params: Params, method: str) -> str:
    if params.is_concat(method):
        return "concat[" + ", ".join(params.methods.concat[method]) + "]"
    return " + ".join(f"{w:g}·{t}" for t, w in params.methods.trained[method].active().items())


def dataset_section(dataset: str) -> list[str]:
    """Markdown tables of image counts per split for each label of a prepared dataset."""
    meta_path = Path("data/prepared") / dataset / "meta.json"
    stats = read_json(meta_path)["statistics"]
    lines = [f"Images per split, from the prepared cache (`{meta_path}`):", ""]
    for label in dict.fromkeys(r["label"] for r in stats):
        rows = [r for r in stats if r["label"] == label]
        values = list(dict.fromkeys((r["value"], r["name"]) for r in rows))
        count = {(r["split"], r["value"]): r["count"] for r in rows}
        lines += [f"| {label} | train | val | test |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | " + " | ".join(str(count.get((s, v), 0)) for s in ("train", "val", "test")) + " |"
                  for v, name in values]
        lines.append("")
    return lines


def _chance(methods: dict[str, Any]) -> str:
    values = [e["geom_fine_knn_chance"]["mean"] for e in methods.values() if "geom_fine_knn_chance" in e]
    return f"{values[0]:.3f}" if values else "—"


def _training_minutes(params: Params, ds: str, method: str) -> str:
    if params.is_concat(method):
        return "—"
    totals = []
    for s in params.suite.seeds:
        history = read_json(paths.history_path(ds, method, s))
        totals.append(sum(h.get("seconds", 0.0) for h in history) / 60.0)
    return f"{np.mean(totals):.2f}"


def _recipe_line(params: Params, ds: str) -> str:
    r = params.datasets[ds].recipe
    return (f"Backbone `{r.backbone}`, {r.epochs} epochs, batch {r.batch_size} x {r.views} views, AdamW lr "
            f"{r.lr:g}, weight decay {r.weight_decay:g}, temperature {params.train.temperature:g}, "
            f"augmentation `{r.augment}`.")


def _geometry_section(methods: dict[str, Any], inside: str) -> list[str]:
    lines = [
        f"Geometry of the test embeddings (L2-normalised; METHOD.md section 1): a collapsed class has a "
        f"small within/between spread ratio and a kNN purity of the sub-label near chance "
        f"({_chance(methods)}) inside its {inside}.",
        "",
        "| Method | " + " | ".join(GEOMETRY_COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(GEOMETRY_COLUMNS),
    ]
    for m, entry in methods.items():
        cells = [f"{entry[k]['mean']:.3f} ± {entry[k]['std']:.3f}" if k in entry else "—"
                 for k in GEOMETRY_COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _coarse_to_fine_section(params: Params, ds: str, methods: dict[str, Any]) -> list[str]:
    base = params.report.baseline
    lines = [
        f"## {ds}: coarse-to-fine transfer",
        "",
        _recipe_line(params, ds),
        "",
        "| Method | Loss / embedding | " + " | ".join(COARSE_TO_FINE_COLUMNS.values())
        + f" | Lift over {base} | Train min/run | Paper, CIFAR-10 |",
        "|---|---|" + "---:|" * (len(COARSE_TO_FINE_COLUMNS) + 3),
    ]
    for m, entry in methods.items():
        cells = [_fmt(entry[k]) for k in COARSE_TO_FINE_COLUMNS]
        paper = PAPER_CIFAR10_FINE.get(m)
        lines.append(
            f"| {m} | {_describe(params, m)} | " + " | ".join(cells)
            + f" | {_fmt(entry[f'lift_over_{base}'], signed=True)} | {_training_minutes(params, ds, m)}"
            + f" | {paper if paper is not None else '—'} |")
    lines += [
        "",
        "Paper column: CIFAR-10 coarse (2) -> fine (10) top-1 from the official repository "
        "(METHOD.md section 6), a different dataset and scale, shown for the expected ordering only.",
        "",
    ]
    return lines + _geometry_section(methods, "coarse class")


def _worst_group_section(params: Params, ds: str, methods: dict[str, Any]) -> list[str]:
    base = params.report.baseline
    lines = [
        f"## {ds}: worst-group robustness",
        "",
        _recipe_line(params, ds) + " Trained on the task label y.",
        "",
        "Each cell: worst-group / average test accuracy (%). Heads on the frozen embeddings: ERM (plain "
        "linear head); discovered groups (k-means inside each class, k by silhouette, no group labels) "
        "+ group DRO; the oracles that see the true training groups (group DRO; group-balanced "
        "retraining, DFR-style). Model selection on validation, on the groups each head may see.",
        "",
        "| Method | Loss / embedding | " + " | ".join(ROBUSTNESS_METHODS.values())
        + f" | Discovery ARI within class | Smallest-group recall | Lift over {base} |",
        "|---|---|" + "---:|" * (len(ROBUSTNESS_METHODS) + 3),
    ]
    for m, entry in methods.items():
        cells = [f"{entry[f'{h}/worst_group_acc']['mean']:.1f} ± {entry[f'{h}/worst_group_acc']['std']:.1f}"
                 f" / {entry[f'{h}/avg_acc']['mean']:.1f}" for h in ROBUSTNESS_METHODS]
        lines.append(
            f"| {m} | {_describe(params, m)} | " + " | ".join(cells)
            + f" | {entry['discovery/ari_within_class']['mean']:.2f}"
            + f" | {entry['discovery/smallest_group_recall']['mean']:.2f}"
            + f" | {_fmt(entry[f'lift_over_{base}'], signed=True)} |")
    groups = sorted({k.split("/")[1] for e in methods.values() for k in e if k.startswith("erm/group_")})
    lines += ["", "Per-group test accuracy (%), ERM and discovered groups + gDRO:", "",
              "| Method | " + " | ".join(f"ERM {g.removesuffix('_acc')}" for g in groups) + " | "
              + " | ".join(f"disc. {g.removesuffix('_acc')}" for g in groups) + " |",
              "|---|" + "---:|" * (2 * len(groups))]
    for m, entry in methods.items():
        cells = [f"{entry[f'{h}/{g}']['mean']:.1f}" for h in ("erm", "discovered_gdro") for g in groups]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines + _geometry_section(methods, "task class")


def results_markdown(params: Params, summary: dict[str, Any]) -> str:
    base = params.report.baseline
    head = params.evaluate.head
    seeds = ", ".join(str(s) for s in params.suite.seeds)
    lines = [
        "# Results",
        "",
        "Compiled by the `report` stage (`dvc repro`) from the evaluate outputs; do not edit by hand.",
        f"Every cell: mean ± sample std over seeds {seeds} (n = {len(params.suite.seeds)}); accuracies in %.",
        f"Lift: per-seed difference to `{base}` of each dataset's headline metric "
        f"(coarse-to-fine: `{params.report.headline}`; worst-group: `{WORST_GROUP_HEADLINE}`), mean ± std.",
        "",
        "Coarse-to-fine protocol: the frozen encoder embeds every split once, in eval mode. Then, on "
        "fine labels (train split), evaluated top-1 on test:",
        f"- *reference head*: the paper's transfer protocol (METHOD.md section 4), a linear head on the raw "
        f"embeddings trained with AdamW (lr {head.lr:g}, weight decay {head.weight_decay:g}, batch "
        f"{head.batch_size}) for {head.epochs} epochs;",
        "- *logreg probe*: multinomial logistic regression on standardised embeddings, fitted to "
        "convergence, C chosen on validation: the most a linear read-out can recover;",
        f"- *kNN*: cosine similarity, k = {params.evaluate.knn_k}.",
        "",
        "A collapsed class keeps a tiny, still linearly separable within-class spread: the reference "
        "head (raw scale, fixed budget) and kNN see the collapse, the converged logreg probe mostly "
        "does not. Both are reported; the gap between them is itself a measure of collapse.",
        "",
    ]
    for ds, methods in summary.items():
        if dataset_task(ds) == "worst_group":
            lines += _worst_group_section(params, ds, methods)
        else:
            lines += _coarse_to_fine_section(params, ds, methods)
        lines += ["", f"![test embeddings, PCA](projections/{ds}.png)", ""]
        lines += dataset_section(ds)
    lines += [
        "![headline metric per method](headline.png)",
        "",
        f"Machine of the last report run: {machine_description()}.",
        "",
    ]
    return "\n".join(lines)


def bar_chart(params: Params, summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(summary)
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.0 + 1.1 * len(params.method_names), 4),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        methods = list(summary[ds])
        headline = headline_of(params, ds)
        means = [summary[ds][m][headline]["mean"] for m in methods]
        stds = [summary[ds][m][headline]["std"] for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        low = max(0.0, min(means) - 10.0)
        ax.set_ylim(low, 100.0)
        title = COARSE_TO_FINE_COLUMNS.get(headline) or HEADLINE_TITLES[headline]
        ax.set(ylabel=f"{title} (%)",
               title=f"{ds}: mean ± std over {len(params.suite.seeds)} seeds")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, metadata={"Software": None}))
    plt.close(fig)
    return path


def projection_grid(params: Params, dataset: str, path: Path) -> Path:
    """PCA of each method's test embeddings (first seed), coloured by fine label, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.evaluation.projection import project_2d
    from pipeline.io import load_arrays

    methods = params.method_names
    cols = 4
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    seed = params.suite.seeds[0]
    for ax, m in zip(axes.flat, methods):
        arrays = load_arrays(paths.embedding_path(dataset, m, seed))
        xy = project_2d(arrays["test_x"], method="pca", seed=seed)
        label = arrays.get("test_fine", arrays.get("test_group"))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=label, cmap="tab10", s=6, linewidths=0)
        ax.set_title(m, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="fine label")
    fig.suptitle(f"{dataset}: test embeddings, PCA, seed {seed}")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90, metadata={"Software": None}))
    plt.close(fig)
    return path


def write_report(params: Params, out_dir: Path) -> None:
    runs = collect(params)
    summary = summarise(runs, params.report.baseline,
                        {ds: headline_of(params, ds) for ds in params.suite.datasets})
    bar_chart(params, summary, out_dir / "headline.png")
    for ds in params.suite.datasets:
        projection_grid(params, ds, out_dir / "projections" / f"{ds}.png")
    write_text(out_dir / "results.md", results_markdown(params, summary))
    write_json(out_dir / "summary.json", summary)
