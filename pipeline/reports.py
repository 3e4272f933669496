"""The compiled comparison: reports/results.md, a bar chart, and summary.json for `dvc metrics`.

Every number is a mean ± sample standard deviation over the suite's seeds; a lift is the
mean of per-seed differences to the baseline method (paired by seed), with their std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.config import Params
from pipeline.io import atomic_write, read_json, write_json, write_text

# METHOD.md section 6: CIFAR-10 coarse (2) -> fine (10) top-1, from the official repository's README.
PAPER_CIFAR10_FINE = {"supcon": 51.8, "supcon_cnce": 77.1, "supcon_ae": 71.7, "thanos": 79.1}
# METHOD.md section 6, the paper's abstract: Thanos over SupCon, mean over 5 coarse-to-fine datasets.
PAPER_MEAN_LIFT = 11.1
# METHOD.md section 6: common worst-group reference points (ResNet-50, ImageNet-pretrained),
# worst-group / average test accuracy (%); ERM's are ranges across papers.
PAPER_WORST_GROUP = {
    "waterbirds": {"ERM": "73-75 / 97-98", "group DRO (true groups)": "91.4 / 93.5", "DFR": "92.9 / 94.2"},
    "celeba": {"ERM": "47 / 95", "group DRO (true groups)": "88.9 / 92.9", "DFR": "88.3 / 91.3"},
}

# Metrics shown in the table, in order, with their column titles.
COARSE_TO_FINE_COLUMNS = {
    "fine_head_acc": "Fine acc. (reference head)",
    "fine_probe_acc": "Fine acc. (logreg probe)",
    "fine_knn_acc": "Fine kNN acc.",
    "coarse_probe_acc": "Coarse acc. (logreg)",
}


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
    "geom_alignment": "Alignment of two augmented views (lower = closer)",
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
             for m in params.methods_for(ds)}
        for ds in params.suite_datasets
    }


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
                mu, sd = mean_std([r[key] for r in seeds])
                entry[key] = {"mean": round(mu, 4), "std": round(sd, 4), "n": len(seeds)}
            if base is not None:
                mu, sd = mean_std([r[headline] - b for r, b in zip(seeds, base)])
                entry[f"lift_over_{baseline}"] = {"mean": round(mu, 4), "std": round(sd, 4), "n": len(seeds)}
            out[ds][m] = entry
    return out


def _fmt(entry: dict[str, float] | None, signed: bool = False) -> str:
    if entry is None:
        return "—"
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
    """Wall-clock of one training run (its epochs), mean ± std over seeds, in minutes."""
    if params.is_concat(method):
        return "—"
    totals = []
    for s in params.suite.seeds:
        history = read_json(paths.history_path(ds, method, s))
        totals.append(sum(h.get("seconds", 0.0) for h in history) / 60.0)
    mu, sd = mean_std(totals)
    return f"{mu:.2f} ± {sd:.2f}"


def _hardware_line(params: Params, ds: str) -> str:
    """Which hardware trained this dataset's models, read from the model files themselves."""
    import torch

    seen: dict[str, int] = {}
    for m in params.methods_for(ds):
        if params.is_concat(m):
            continue
        for s in params.suite.seeds:
            state = torch.load(paths.model_path(ds, m, s), map_location="cpu", weights_only=True)
            name = state.get("hardware", "not recorded (model file older than this field)")
            seen[name] = seen.get(name, 0) + 1
    runs = "; ".join(f"{name} ({n} runs)" for name, n in seen.items())
    return (f"Trained on: {runs}. Train min/run: wall-clock of the training epochs of one run "
            "(mean ± std over seeds; start-up and evaluation not included).")


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
        _hardware_line(params, ds),
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
            + f" | {_fmt(entry.get(f'lift_over_{base}'), signed=True)} | {_training_minutes(params, ds, m)}"
            + f" | {paper if paper is not None else '—'} |")
    same = "the same task, so the numbers are directly comparable" if ds == "cifar10" else (
        "a different dataset and scale, shown for the expected ordering only")
    lines += [
        "",
        "Paper column: CIFAR-10 coarse (2) -> fine (10) top-1 from the official repository "
        f"(METHOD.md section 6), {same}. The paper reports Thanos {PAPER_MEAN_LIFT:+.1f} points over "
        "SupCon on average over 5 coarse-to-fine datasets (abstract).",
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
        _hardware_line(params, ds),
        "",
        "Each cell: worst-group / average test accuracy (%). Heads on the frozen embeddings: ERM (plain "
        "linear head); discovered groups (k-means on the L2-normalised embeddings inside each class, k by "
        "cluster-averaged silhouette against a Gaussian null, no group labels) "
        "+ group DRO; the oracles that see the true training groups (group DRO; group-balanced "
        "retraining, DFR-style). Model selection on validation, on the groups each head may see.",
        "",
        "| Method | Loss / embedding | " + " | ".join(ROBUSTNESS_METHODS.values())
        + f" | Discovery ARI within class | Smallest-group recall | Lift over {base} | Train min/run |",
        "|---|---|" + "---:|" * (len(ROBUSTNESS_METHODS) + 4),
    ]
    # Waterbirds' "average" is conventionally weighted by training-group frequencies (METHOD.md 5).
    weighted = ds == "waterbirds"
    for m, entry in methods.items():
        cells = [f"{entry[f'{h}/worst_group_acc']['mean']:.1f} ± {entry[f'{h}/worst_group_acc']['std']:.1f}"
                 f" / {entry[f'{h}/avg_acc']['mean']:.1f}"
                 + (f" ({entry[f'{h}/weighted_acc']['mean']:.1f} weighted)" if weighted else "")
                 for h in ROBUSTNESS_METHODS]
        lines.append(
            f"| {m} | {_describe(params, m)} | " + " | ".join(cells)
            + f" | {entry['discovery/ari_within_class']['mean']:.2f}"
            + f" | {entry['discovery/smallest_group_recall']['mean']:.2f}"
            + f" | {_fmt(entry.get(f'lift_over_{base}'), signed=True)} | {_training_minutes(params, ds, m)} |")
    groups = sorted({k.split("/")[1] for e in methods.values() for k in e if k.startswith("erm/group_")})
    lines += ["", "Per-group test accuracy (%), ERM and discovered groups + gDRO:", "",
              "| Method | " + " | ".join(f"ERM {g.removesuffix('_acc')}" for g in groups) + " | "
              + " | ".join(f"disc. {g.removesuffix('_acc')}" for g in groups) + " |",
              "|---|" + "---:|" * (2 * len(groups))]
    for m, entry in methods.items():
        cells = [f"{entry[f'{h}/{g}']['mean']:.1f}" for h in ("erm", "discovered_gdro") for g in groups]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", _worst_group_references(ds), ""]
    return lines + _geometry_section(methods, "task class")


def _worst_group_references(ds: str) -> str:
    """The published reference points for a real worst-group dataset, or where to find them."""
    if ds in PAPER_WORST_GROUP:
        points = "; ".join(f"{k} {v}" for k, v in PAPER_WORST_GROUP[ds].items())
        return (f"Reference points for {ds} (METHOD.md section 6; ResNet-50, ImageNet-pretrained; "
                f"worst / average): {points}. The paper reports Thanos 4.7 points of worst-group lift "
                "over prior work across 3 datasets.")
    names = {"waterbirds": "Waterbirds", "celeba": "CelebA"}
    points = "; ".join(f"{names[d]} ERM {p['ERM']}, group DRO {p['group DRO (true groups)']}"
                       for d, p in PAPER_WORST_GROUP.items())
    return ("Published reference points (METHOD.md section 6; ResNet-50, ImageNet-pretrained; worst / "
            f"average) exist for the real datasets only: {points}. The same pattern is expected here: "
            "ERM's worst group well below its average, the oracle closing most of the gap.")


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
    lines += ["![headline metric per method](headline.png)", ""]
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

    methods = params.methods_for(dataset)
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
                        {ds: headline_of(params, ds) for ds in params.suite_datasets})
    bar_chart(params, summary, out_dir / "headline.png")
    for ds in params.suite_datasets:
        projection_grid(params, ds, out_dir / "projections" / f"{ds}.png")
    write_text(out_dir / "results.md", results_markdown(params, summary))
    write_json(out_dir / "summary.json", summary)
