"""The benchmark's tasks, each one object: coarse-to-fine transfer and worst-group robustness.

A :class:`Task` carries what differs between them: its label roles and training label (the
data layer's, :mod:`pipeline.data.records`, where the task names are defined), the metrics the
evaluate stage computes (:mod:`pipeline.evaluation.metrics`), its headline metric, and its
part of reports/results.md. The evaluate and report stages look a dataset's task up in
:data:`TASKS` and call it; nothing else branches on a task's name.

Facts about a dataset (its published reference numbers, its "average accuracy" convention)
live with the dataset, in :mod:`pipeline.data.registry`: the report hands a task the
:class:`~pipeline.data.registry.DatasetSpec` of the dataset's source (:class:`SectionInput`).
This module does not import the registry (not even for type hints: dvc.yaml's code deps count
every import), so the evaluate stage does not depend on the dataset loaders.

Report tables are pandas DataFrames (:func:`frame`), written as markdown by one function,
:func:`markdown_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.config import EvaluateParams, Params, check_knn_k, check_names
from pipeline.data.records import COARSE_TO_FINE, LABEL_KEYS, TRAIN_LABEL, WORST_GROUP

if TYPE_CHECKING:
    import pandas as pd

# A table cell with nothing to show (no value, or no published number).
MISSING = "—"

# Geometry of the test embeddings (both tasks, pipeline/evaluation/geometry.py), with their column titles.
GEOMETRY_COLUMNS = {
    "geom_class_spread_ratio": "Within / between class spread (training label)",
    "geom_fine_knn_purity": "Fine-label kNN purity inside class",
    "geom_uniformity": "Uniformity (lower = more uniform)",
    "geom_alignment": "Alignment of two augmented views (lower = closer)",
}


class DatasetFacts(Protocol):
    """What a report section reads of a dataset's registry entry (pipeline.data.registry.DatasetSpec)."""

    name: str
    title: str  # its usual spelling ("CIFAR-10"); empty: its name
    reference: Mapping[str, float | str] | None  # published numbers (METHOD.md section 6)
    reference_source: str  # where they come from
    weighted_average: bool  # its "average accuracy" weights groups by training frequency


def stat_cell(entry: dict[str, Any] | None, signed: bool = False, digits: int = 1) -> str:
    """A summary entry ``{mean, std, n}`` as ``mean ± std``, or the mean alone when there is no
    spread to show (n = 1: ``std`` is None); :data:`MISSING` for no entry."""
    if entry is None:
        return MISSING
    sign = "+" if signed else ""
    mean = f"{entry['mean']:{sign}.{digits}f}"
    return mean if entry["std"] is None else f"{mean} ± {entry['std']:.{digits}f}"


def lift_cell(entry: dict[str, Any] | None, digits: int = 1) -> str:
    """A lift ``{mean, t95, boot95, distinguishable}`` as ``+9.3 [+6.1, +12.4]; [+7.0, +11.5]`` (its 95 %
    intervals over seeds and over test images; — for an undefined one), then ``n.s.`` where the
    lift is not distinguishable from 0; :data:`MISSING` for no entry (the baseline itself)."""
    if entry is None:
        return MISSING

    def interval(bounds: Sequence[float] | None) -> str:
        return f"[{MISSING}]" if bounds is None else f"[{bounds[0]:+.{digits}f}, {bounds[1]:+.{digits}f}]"

    cell = f"{entry['mean']:+.{digits}f} {interval(entry['t95'])}; {interval(entry['boot95'])}"
    return cell if entry["distinguishable"] else f"{cell} n.s."


def lift_title(baseline: str) -> str:
    """The title of a lift column: what :func:`lift_cell`'s two intervals are."""
    return f"Lift over {baseline} [95 % CI: seeds; test images]"


def frame(rows: Sequence[Sequence[Any]], index: Sequence[Any], columns: Sequence[str],
          index_names: Sequence[str] = ("Method",)) -> pd.DataFrame:
    """A report table: one row of cells per index entry (a tuple per entry for several label columns).

    The index holds the row labels (one level per label column), the columns the values.
    """
    import pandas as pd

    labels = (pd.MultiIndex.from_tuples(list(index), names=list(index_names)) if len(index_names) > 1
              else pd.Index(list(index), name=index_names[0]))
    return pd.DataFrame([list(r) for r in rows], index=labels, columns=list(columns), dtype=object)


def markdown_table(table: pd.DataFrame) -> list[str]:
    """The lines of a :func:`frame` as a GitHub-flavoured markdown table: label columns (the index)
    left-aligned, value columns right-aligned, each cell ``str(cell)`` with one space around it and
    no padding (a diff of reports/results.md shows the cells that changed, not a re-padded table)."""
    labels = [str(name) for name in table.index.names]
    header = [*labels, *(str(c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(labels) + "---:|" * len(table.columns)]
    for key, row in zip(table.index, table.itertuples(index=False, name=None)):
        keys = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join(str(cell) for cell in (*keys, *row)) + " |")
    return lines


@dataclass(frozen=True)
class SectionInput:
    """What a task's section of results.md is written from (assembled by :mod:`pipeline.reports`)."""

    dataset: str  # the suite's name for it (params.yaml ``datasets``)
    spec: DatasetFacts  # its source's registry entry: reference numbers, conventions
    references: tuple[DatasetFacts, ...]  # every dataset of this task with published numbers
    methods: dict[str, dict[str, Any]]  # summary.json's entries: {method: {metric: {mean, std, n}}}
    describe: dict[str, str]  # {method: its loss terms or the parts it concatenates}
    baseline: str  # report.baseline
    recipe: str  # the training recipe, one sentence
    hardware: str  # "Trained on: ..."
    one_seed: list[str]  # the n = 1 note above a results table (empty with several seeds)
    # {label: {value: readable name}} from the prepared cache ("group": {2: "5-9 / red"}); may be empty.
    label_names: dict[str, dict[int, str]] = field(default_factory=dict)
    # The sentence ranking the lifts that both intervals separate from 0 (below the results table).
    ranking: list[str] = field(default_factory=list)


class Task:
    """One task: its labels, metrics, headline metric and report section."""

    name: str
    label: str  # how prose names it ("coarse-to-fine")
    title: str  # its results.md section heading, after the dataset's name
    # The labels the evaluate stage colours its MLflow projections by, where the embedding file has them.
    picture_labels: tuple[str, ...]
    # The label the report's projection of each method colours points by (a categorical legend).
    projection_label: str

    @property
    def label_roles(self) -> tuple[str, ...]:
        """The labels every dataset of this task has in every split."""
        return LABEL_KEYS[self.name]

    @property
    def train_label(self) -> str:
        """The label the encoder trains on."""
        return TRAIN_LABEL[self.name]

    def check(self, params: Params, dataset: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Settings checks that need the embedding file; a :class:`~pipeline.config.ParamsError`."""

    def evaluate(self, arrays: Mapping[str, np.ndarray], opts: EvaluateParams,
                 seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The evaluate stage's metrics of one embedding file (accuracies in %), and its per-image
        results ({name: (N_test,) array}: what :meth:`headline_statistic` recomputes a headline from)."""
        raise NotImplementedError

    def metrics(self, arrays: Mapping[str, np.ndarray], opts: EvaluateParams, seed: int = 0) -> dict[str, float]:
        """The evaluate stage's metrics of one embedding file (accuracies in %)."""
        return self.evaluate(arrays, opts, seed)[0]

    def headline(self, params: Params) -> str:
        """The metric of the lifts and of the bar chart."""
        raise NotImplementedError

    def headline_statistic(self, per_image: Mapping[str, np.ndarray], headline: str) -> Callable[[np.ndarray], np.ndarray]:
        """The headline computed from per-image results: (..., K) indices of test images -> (...) values (%).

        Called with all N test images in order it gives the metrics file's value; the report's
        bootstrap calls it on resampled images. A KeyError or ValueError: the file lacks what it needs.
        """
        raise NotImplementedError

    def chance(self, label_names: Mapping[str, Mapping[int, str]]) -> float:
        """The headline of a guess (%), where its figure's axis starts; ``label_names`` as in :class:`SectionInput`."""
        raise NotImplementedError

    def metric_title(self, metric: str) -> str:
        """A metric's column title (the headline's is the bar chart's axis label)."""
        raise NotImplementedError

    def preamble(self, params: Params) -> list[str]:
        """Lines at the top of results.md that explain this task's protocol (may be none)."""
        return []

    def report_section(self, section: SectionInput) -> list[str]:
        """This task's section of results.md for one dataset."""
        raise NotImplementedError


def _flags(per_image: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """The (N,) bool correct flags ``per_image[key]``; a KeyError if absent, a ValueError if not flags."""
    flags = np.asarray(per_image[key])
    if flags.ndim != 1 or flags.dtype != np.bool_:
        raise ValueError(f"{key!r} is not (N,) correct flags (bool); got {flags.dtype} {flags.shape}")
    return flags


def _stat_rows(section: SectionInput, cells: Any) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Rows ``cells(method, entry)`` and their (method, loss / embedding) labels, in summary order."""
    rows = [cells(m, e) for m, e in section.methods.items()]
    return rows, [(m, section.describe[m]) for m in section.methods]


def _chance(methods: dict[str, Any]) -> str:
    values = [e["geom_fine_knn_chance"]["mean"] for e in methods.values() if "geom_fine_knn_chance" in e]
    return f"{values[0]:.3f}" if values else MISSING


def geometry_section(methods: dict[str, Any], inside: str) -> list[str]:
    """The geometry table of a dataset, after a line on what a collapsed class looks like."""
    table = frame([[stat_cell(e.get(k), digits=3) for k in GEOMETRY_COLUMNS] for e in methods.values()],
                  list(methods), GEOMETRY_COLUMNS.values())
    return [
        f"Geometry of the test embeddings (L2-normalised; METHOD.md section 1): a collapsed class has a "
        f"small within/between spread ratio and a kNN purity of the sub-label near chance "
        f"({_chance(methods)}) inside its {inside}.",
        "",
        *markdown_table(table),
    ]


class CoarseToFine(Task):
    """Train on coarse labels, linear-probe the fine ones (METHOD.md section 4)."""

    name = COARSE_TO_FINE
    label = "coarse-to-fine"
    title = "coarse-to-fine transfer"
    picture_labels = ("coarse", "fine")
    projection_label = "fine"
    # Metrics shown in the results table, in order, with their column titles.
    COLUMNS = {
        "fine_head_acc": "Fine acc. (reference head)",
        "fine_probe_acc": "Fine acc. (logreg probe)",
        "fine_knn_acc": "Fine kNN acc.",
        "coarse_probe_acc": "Coarse acc. (logreg)",
    }
    # METHOD.md section 6, the paper's abstract: Thanos over SupCon, mean over 5 coarse-to-fine datasets.
    PAPER_MEAN_LIFT = 11.1

    def check(self, params: Params, dataset: str, arrays: Mapping[str, np.ndarray]) -> None:
        check_knn_k(params, dataset, len(arrays["train_x"]))  # the kNN probe searches the training split

    def evaluate(self, arrays: Mapping[str, np.ndarray], opts: EvaluateParams,
                 seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from pipeline.evaluation.metrics import coarse_to_fine_metrics

        per_image: dict[str, np.ndarray] = {}  # every headline report.headline may pick: the correct flags
        return coarse_to_fine_metrics(arrays, opts, per_image), per_image

    def headline(self, params: Params) -> str:
        return params.report.headline

    def headline_statistic(self, per_image: Mapping[str, np.ndarray], headline: str) -> Callable[[np.ndarray], np.ndarray]:
        correct = _flags(per_image, headline)  # an accuracy: the mean of the correct flags
        return lambda index: 100.0 * correct[index].mean(axis=-1)

    def chance(self, label_names: Mapping[str, Mapping[int, str]]) -> float:
        return 100.0 / max(1, len(label_names.get("fine", {})))  # fine accuracy of a uniform guess

    def metric_title(self, metric: str) -> str:
        return self.COLUMNS[metric]

    def preamble(self, params: Params) -> list[str]:
        head = params.evaluate.head
        return [
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

    def report_section(self, section: SectionInput) -> list[str]:
        base, refs = section.baseline, section.references
        lift = f"lift_over_{base}"

        def cells(method: str, entry: dict[str, Any]) -> list[str]:
            papers = [(ref.reference or {}).get(method) for ref in refs]
            return ([stat_cell(entry.get(k)) for k in self.COLUMNS] + [lift_cell(entry.get(lift))]
                    + [MISSING if p is None else str(p) for p in papers])

        rows, index = _stat_rows(section, cells)
        columns = [*self.COLUMNS.values(), lift_title(base), *(f"Paper, {ref.title or ref.name}" for ref in refs)]
        table = frame(rows, index, columns, index_names=("Method", "Loss / embedding"))
        notes = []
        for ref in refs:
            same = ("the same task, so the numbers are directly comparable" if ref.name == section.spec.name else
                    "a different dataset and scale, shown for the expected ordering only")
            column = "Paper column" if len(refs) == 1 else f"Paper, {ref.title or ref.name} column"
            notes.append(f"{column}: {ref.title or ref.name} {ref.reference_source} (METHOD.md section 6), {same}.")
        notes.append(f"The paper reports Thanos {self.PAPER_MEAN_LIFT:+.1f} points over SupCon on average over 5 "
                     "coarse-to-fine datasets (abstract).")
        return [
            f"## {section.dataset}: {self.title}",
            "",
            section.recipe,
            "",
            section.hardware,
            "",
            *section.one_seed,
            *markdown_table(table),
            "",
            *section.ranking,
            " ".join(notes),
            "",
            *geometry_section(section.methods, "coarse class"),
        ]


class WorstGroup(Task):
    """Train on the task label y; worst-group accuracy over the (y, attribute) groups (METHOD.md section 5)."""

    name = WORST_GROUP
    label = "worst-group"
    title = "worst-group robustness"
    # The group (it already shows y) and, where a dataset keeps one for pictures (spurious digits), the fine label.
    picture_labels = ("fine", "group")
    projection_label = "group"
    # Each result is a head chosen by a model-selection rule (pipeline.evaluation.robustness.HEAD_RULES):
    # its key prefix "{head}.{rule}", and how a column names it.
    HEADS = {
        "erm.average": "ERM, avg. acc.",
        "erm.worst_class": "ERM, worst class",
        "discovered_gdro.discovered": "GEORGE + gDRO, disc. groups",
        "discovered_gdro.worst_class": "GEORGE + gDRO, worst class",
        "kmeans_gdro.discovered": "k-means + gDRO, disc. groups",
        "oracle_gdro.oracle": "Oracle gDRO, true groups",
        "oracle_balanced.oracle": "Oracle balanced, true groups",
    }
    # How each rule is named in prose, and whether it needs group labels.
    RULES = {
        "average": "validation accuracy (no group information)",
        "worst_class": "validation worst-class accuracy (no group information)",
        "discovered": "validation worst discovered-group accuracy (no group labels)",
        "oracle": "validation worst-group accuracy on the true groups (group labels)",
    }
    HEADLINE = "discovered_gdro.discovered/worst_group_acc"
    HEADLINE_TITLE = "Worst-group acc., GEORGE groups + gDRO"
    # The heads of the per-group table, with the prefix of their columns.
    PER_GROUP = {"erm.average": "ERM", "discovered_gdro.discovered": "GEORGE"}
    # The sub-group discovery scores shown: (metrics prefix, score) -> column title.
    DISCOVERY = {
        ("discovery", "minority_precision"): "GEORGE minority precision",
        ("discovery", "minority_recall"): "GEORGE minority recall",
        ("discovery", "ari_within_class"): "GEORGE ARI within class",
        ("discovery_kmeans", "minority_recall"): "k-means minority recall",
        ("discovery_kmeans", "ari_within_class"): "k-means ARI within class",
    }
    # The published baselines quoted for a dataset without its own (reference keys -> how to name them).
    QUOTED_BASELINES = {"ERM": "ERM", "group DRO (true groups)": "group DRO"}
    # METHOD.md section 6, the paper's abstract.
    PAPER_LIFT = "The paper reports Thanos 4.7 points of worst-group lift over prior work across 3 datasets."

    def check(self, params: Params, dataset: str, arrays: Mapping[str, np.ndarray]) -> None:
        from pipeline.evaluation.george import CLUSTER_METHODS, REDUCTIONS

        check_names(params, datasets=[dataset], reductions=REDUCTIONS, cluster_methods=CLUSTER_METHODS)

    def evaluate(self, arrays: Mapping[str, np.ndarray], opts: EvaluateParams,
                 seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from pipeline.evaluation.metrics import worst_group_metrics

        per_image: dict[str, np.ndarray] = {}
        metrics = worst_group_metrics(arrays, opts, seed, per_image)
        # The headline's head and the true groups: all its worst-group accuracy needs.
        head = self.HEADLINE.split("/")[0]
        return metrics, {head: per_image[head], "group": per_image["group"]}

    def headline(self, params: Params) -> str:
        return self.HEADLINE

    def headline_statistic(self, per_image: Mapping[str, np.ndarray], headline: str) -> Callable[[np.ndarray], np.ndarray]:
        head, _, metric = headline.partition("/")
        if metric != "worst_group_acc":
            raise ValueError(f"no per-image statistic for {headline!r}")
        correct = _flags(per_image, head)
        group = np.asarray(per_image["group"])
        if group.shape != correct.shape:
            raise ValueError(f"'group' has shape {group.shape}, its correct flags {correct.shape}")
        ids, group = np.unique(group, return_inverse=True)

        def worst_group(index: np.ndarray) -> np.ndarray:
            # Per resample (row), the accuracy of each true group present in it; the smallest.
            flat = index.reshape(-1, index.shape[-1])
            rows = np.arange(len(flat))[:, None] * len(ids) + group[flat]
            size = np.bincount(rows.ravel(), minlength=len(flat) * len(ids)).reshape(len(flat), len(ids))
            hits = np.bincount(rows.ravel(), weights=correct[flat].ravel(),
                               minlength=len(flat) * len(ids)).reshape(len(flat), len(ids))
            accuracy = np.where(size > 0, hits / np.maximum(size, 1), np.inf)  # a group left out: not its minimum
            return 100.0 * accuracy.min(axis=1).reshape(index.shape[:-1])

        return worst_group

    def chance(self, label_names: Mapping[str, Mapping[int, str]]) -> float:
        return 0.0  # a constant guess gets a whole group wrong

    def metric_title(self, metric: str) -> str:
        return {self.HEADLINE: self.HEADLINE_TITLE}[metric]

    def report_section(self, section: SectionInput) -> list[str]:
        base, methods = section.baseline, section.methods
        # A dataset whose papers weight the "average" by training-group frequencies (METHOD.md 5) shows that too.
        weighted = section.spec.weighted_average

        def head_cell(entry: dict[str, Any], h: str) -> str:
            cell = f"{stat_cell(entry[f'{h}/worst_group_acc'])} / {entry[f'{h}/avg_acc']['mean']:.1f}"
            return cell + (f" ({entry[f'{h}/weighted_acc']['mean']:.1f} weighted)" if weighted else "")

        def cells(method: str, entry: dict[str, Any]) -> list[str]:
            return [*(head_cell(entry, h) for h in self.HEADS),
                    *(f"{entry[f'{p}/{k}']['mean']:.2f}" for p, k in self.DISCOVERY),
                    lift_cell(entry.get(f"lift_over_{base}"))]

        rows, index = _stat_rows(section, cells)
        results = frame(rows, index, [*self.HEADS.values(), *self.DISCOVERY.values(), lift_title(base)],
                        index_names=("Method", "Loss / embedding"))
        # Every head under every rule: worst-group / worst-class / balanced accuracy, one column per method.
        first_entry = next(iter(methods.values()))
        every = [tuple(k.removesuffix("/worst_group_acc").split(".")) for k in first_entry
                 if k.endswith("/worst_group_acc") and "." in k]
        def rule_cell(e: dict[str, Any], key: str) -> str:
            return " / ".join(f"{e[f'{key}/{m}']['mean']:.1f}" for m in ("worst_group_acc", "worst_class_acc",
                                                                          "balanced_acc"))

        all_rules = frame([[rule_cell(e, f"{h}.{r}") for e in methods.values()] for h, r in every],
                          every, list(methods), index_names=("Head", "Selected by"))
        first = next(iter(self.PER_GROUP))
        groups = sorted({k.split("/")[1] for e in methods.values() for k in e if k.startswith(f"{first}/group_")},
                        key=lambda g: int(g.removeprefix("group_").removesuffix("_acc")))
        names = section.label_names.get("group", {})

        def group_title(g: str) -> str:  # "group_2_acc" -> "5-9 / red" where the cache names it
            value = int(g.removeprefix("group_").removesuffix("_acc"))
            return names.get(value, f"group {value}")

        per_group = frame([[f"{e[f'{h}/{g}']['mean']:.1f}" for h in self.PER_GROUP for g in groups]
                           for e in methods.values()], list(methods),
                          [f"{p}: {group_title(g)}" for p in self.PER_GROUP.values() for g in groups])
        references = self._references(section)
        rules = "; ".join(f"{name} = {text}" for name, text in self.RULES.items())
        return [
            f"## {section.dataset}: {self.title}",
            "",
            f"{section.recipe} Trained on the task label {self.train_label}.",
            "",
            section.hardware,
            "",
            "Each cell: worst-group / average test accuracy (%) of a linear head on the frozen embeddings, "
            "and the rule that selected it on validation. Heads: ERM (plain linear head); group DRO on the "
            "groups GEORGE discovers (per class: L2-normalised embeddings, clusters with k by silhouette, "
            "over-clustering kept where it beats its parent's silhouette and ERM loss; no group labels) and "
            "on the simpler k-means groups (k by silhouette against a Gaussian null); the oracles that train "
            "on the true groups (group DRO; group-balanced retraining, DFR-style). Minority precision / "
            "recall: for each true minority group, its best-matching discovered cluster (by F1), averaged.",
            "",
            *section.one_seed,
            *markdown_table(results),
            "",
            *section.ranking,
            f"Every head under every selection rule it allows (mean over seeds; worst-group / worst-class / "
            f"balanced test accuracy, %). Rules: {rules}.",
            "",
            *markdown_table(all_rules),
            "",
            "Per-group test accuracy (%), ERM (selected by validation accuracy) and GEORGE + gDRO (selected "
            "by worst discovered group):",
            "",
            *markdown_table(per_group),
            *(["", references] if references else []),
            "",
            *geometry_section(methods, "task class"),
        ]

    def _references(self, section: SectionInput) -> str:
        """The dataset's published reference points, or, without any, those of the datasets that have them."""
        spec = section.spec
        if spec.reference:
            points = "; ".join(f"{k} {v}" for k, v in spec.reference.items())
            return (f"Reference points for {section.dataset} (METHOD.md section 6; {spec.reference_source}): "
                    f"{points}. {self.PAPER_LIFT}")
        refs = [r for r in section.references if r.reference]
        if not refs:
            return ""
        sources = "; ".join(dict.fromkeys(r.reference_source for r in refs))
        points = "; ".join(
            f"{r.title or r.name} " + ", ".join(f"{name} {r.reference[key]}"
                                                for key, name in self.QUOTED_BASELINES.items() if key in r.reference)
            for r in refs)
        return (f"Published reference points (METHOD.md section 6; {sources}) exist for the real datasets only: "
                f"{points}. The same pattern is expected here: ERM's worst group well below its average, the "
                "oracle closing most of the gap.")


# Every task by name, in the order results.md explains them.
TASKS: dict[str, Task] = {task.name: task for task in (CoarseToFine(), WorstGroup())}


def task_named(name: str) -> Task:
    """The task called ``name``; a ValueError naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"no task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def evaluate_embeddings(arrays: Mapping[str, np.ndarray], task: str, opts: EvaluateParams,
                        seed: int = 0) -> dict[str, float]:
    """All metrics of one (dataset, method, seed) embedding file for its task."""
    return task_named(task).metrics(arrays, opts, seed)
