"""Tasks are objects (pipeline/tasks.py): evaluation and reports dispatch through them, facts about a
dataset live in its registry entry, and the modules that dispatch name no task and no dataset."""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, repo_params
from pipeline.config import EvaluateParams, GeorgeParams, GroupDROParams, KMeansDiscoveryParams, validate
from pipeline.data.records import LABEL_KEYS, TASK_NAMES, TRAIN_LABEL
from pipeline.data.registry import DATASETS
from pipeline.tasks import (TASKS, CoarseToFine, SectionInput, WorstGroup, evaluate_embeddings, frame,
                            markdown_table, task_named)

# The modules that dispatch on a task, or read a dataset's facts: no name of either may appear in them.
DISPATCHERS = ["pipeline/reports.py", "pipeline/tasks.py", "pipeline/jobs/evaluate.py", "pipeline/jobs/report.py",
               *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pipeline/evaluation").glob("*.py"))]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose, not code)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def name_literals(path: Path, names: set[str]) -> list[str]:
    """Every string constant of the module at ``path`` (f-string parts included, docstrings not)
    that holds one of ``names`` as a whole word."""
    word = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w-])")
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [f"{path.name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and word.search(node.value)]


@pytest.mark.parametrize("module", DISPATCHERS)
def test_dispatching_modules_hold_no_dataset_or_task_name(module: str) -> None:
    names = {*DATASETS, *TASK_NAMES}
    assert name_literals(ROOT / module, names) == []


def test_the_literal_check_finds_a_name(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text('"""Mentions worst_group in prose."""\n'
                                   'def f(ds):\n    """cifar10 in prose."""\n'
                                   '    return ds == "cifar10" or f"{ds}" == "worst_group" or "digits-like"\n')
    found = name_literals(tmp_path / "m.py", {"cifar10", "worst_group", "digits"})
    assert [f.split(": ", 1)[1] for f in found] == ["'cifar10'", "'worst_group'"]


def test_one_task_object_per_task_name_with_the_data_layers_labels() -> None:
    assert tuple(TASKS) == TASK_NAMES
    for name, task in TASKS.items():
        assert task.name == name and task_named(name) is task
        assert task.label_roles == LABEL_KEYS[name] and task.train_label == TRAIN_LABEL[name]
        assert task.train_label in task.label_roles
    assert {spec.task for spec in DATASETS.values()} <= set(TASKS)
    with pytest.raises(ValueError, match="no task 'regression'; known: coarse_to_fine, worst_group"):
        evaluate_embeddings({}, "regression", validate(repo_params()).evaluate)


def test_headlines_and_their_titles() -> None:
    from conftest import tiny_params
    from pipeline.config import validate

    params = validate(tiny_params())
    c2f, wg = TASKS.values()
    assert c2f.headline(params) == params.report.headline
    assert c2f.metric_title(c2f.headline(params)) == "Fine acc. (reference head)"
    assert wg.metric_title(wg.headline(params)) == "Worst-group acc., GEORGE groups + gDRO"
    assert wg.preamble(params) == [] and c2f.preamble(params)[-1] == ""


def test_dataset_facts_live_in_the_registry() -> None:
    assert [n for n, s in DATASETS.items() if s.weighted_average] == ["waterbirds"]
    with_reference = {n: s.task for n, s in DATASETS.items() if s.reference}
    assert with_reference == {"cifar10": "coarse_to_fine", "waterbirds": "worst_group", "celeba": "worst_group"}
    # METHOD.md section 6: the official repository's CIFAR-10 table.
    assert dict(DATASETS["cifar10"].reference) == {"supcon": 51.8, "supcon_cnce": 77.1, "supcon_ae": 71.7,
                                                   "thanos": 79.1}
    for spec in DATASETS.values():
        if spec.reference:
            assert spec.title and spec.reference_source


def test_a_report_table_is_a_dataframe_written_as_unpadded_markdown() -> None:
    table = frame([["1.0", "+2.0 ± 0.5"], ["—", "3"]], [("a", "1·ce"), ("bb", "concat[a]")], ["X", "Lift"],
                  index_names=("Method", "Loss / embedding"))
    assert list(table.columns) == ["X", "Lift"] and table.index.names == ["Method", "Loss / embedding"]
    assert markdown_table(table) == [
        "| Method | Loss / embedding | X | Lift |",
        "|---|---|---:|---:|",
        "| a | 1·ce | 1.0 | +2.0 ± 0.5 |",
        "| bb | concat[a] | — | 3 |",
    ]
    counts = frame([[5, 0, 7]], ["0-4"], ["train", "val", "test"], index_names=("coarse",))
    assert markdown_table(counts) == ["| coarse | train | val | test |", "|---|---:|---:|---:|", "| 0-4 | 5 | 0 | 7 |"]


@dataclass(frozen=True)
class Facts:
    """A registry entry's facts, as a test builds them."""

    name: str
    title: str = ""
    reference: dict[str, Any] | None = None
    reference_source: str = ""
    weighted_average: bool = False


def _entry(value: float, std: float | None = 1.0) -> dict[str, Any]:
    return {"mean": value, "std": std, "n": 2}


def _section(task_keys: list[str], spec: Facts, references: tuple[Facts, ...]) -> SectionInput:
    entry = {k: _entry(60.0 + i) for i, k in enumerate(task_keys)}
    entry["lift_over_supcon"] = {"mean": 0.5, "std": 0.1, "n": 2, "t95": [-0.4, 1.4], "boot95": [0.1, 0.9],
                                 "distinguishable": False}
    return SectionInput(dataset="mine", spec=spec, references=references, methods={"supcon": entry},
                        describe={"supcon": "1·supcon"}, baseline="supcon", recipe="Recipe.",
                        hardware="Trained on: here.", one_seed=[], label_names={"group": {1: "5-9 / red"}})


WG_KEYS = [f"{h}/{k}" for h in WorstGroup.HEADS for k in ("worst_group_acc", "avg_acc", "weighted_acc",
                                                             "worst_class_acc", "balanced_acc",
                                                             "group_0_acc", "group_1_acc")]
WG_KEYS += [f"{prefix}/{score}" for prefix, score in WorstGroup.DISCOVERY]


def test_worst_group_section_reads_the_averaging_convention_and_references_from_the_dataset() -> None:
    task = TASKS["worst_group"]
    published = Facts("birds", "Birds", {"ERM": "1 / 2", "group DRO (true groups)": "3 / 4", "DFR": "5 / 6"},
                      "some network; worst / average", weighted_average=True)
    own = "\n".join(task.report_section(_section(WG_KEYS, published, (published,))))
    assert own.startswith("## mine: worst-group robustness\n\nRecipe. Trained on the task label y.")
    assert "| supcon | 1·supcon | 60.0 ± 1.0 / 61.0 (62.0 weighted) |" in own
    # Every result names the rule that selected it; the all-rules table lists each (head, rule) present.
    assert all(title in own for title in WorstGroup.HEADS.values())
    assert "| erm | worst_class | 67.0 / 70.0 / 71.0 |" in own  # worst-group / worst-class / balanced
    # Per-group columns under the cache's readable names where it has them.
    assert "| Method | ERM: group 0 | ERM: 5-9 / red | GEORGE: group 0 | GEORGE: 5-9 / red |" in own
    assert ("Reference points for mine (METHOD.md section 6; some network; worst / average): ERM 1 / 2; "
            "group DRO (true groups) 3 / 4; DFR 5 / 6.") in own

    other = "\n".join(task.report_section(_section(WG_KEYS, Facts("synthetic"), (published,))))
    assert "weighted" not in other and "| supcon | 1·supcon | 60.0 ± 1.0 / 61.0 |" in other
    assert ("Published reference points (METHOD.md section 6; some network; worst / average) exist for the real "
            "datasets only: Birds ERM 1 / 2, group DRO 3 / 4.") in other


def test_coarse_to_fine_paper_column_comes_from_the_reference_datasets() -> None:
    task = TASKS["coarse_to_fine"]
    keys = [*CoarseToFine.COLUMNS, "geom_uniformity"]
    ref = Facts("tenclass", "Ten-Class", {"supcon": 51.8}, "coarse -> fine top-1")
    same = "\n".join(task.report_section(_section(keys, ref, (ref,))))
    assert "| Lift over supcon [95 % CI: seeds; test images] | Paper, Ten-Class |" in same
    assert same.count("| 51.8 |") == 1 and "| +0.5 [-0.4, +1.4]; [+0.1, +0.9] n.s. | 51.8 |" in same
    assert "Paper column: Ten-Class coarse -> fine top-1 (METHOD.md section 6), the same task" in same
    other = "\n".join(task.report_section(_section(keys, Facts("small"), (ref,))))
    assert "(METHOD.md section 6), a different dataset and scale" in other
    none = "\n".join(task.report_section(_section(keys, Facts("small"), ())))
    assert "Paper" not in none and "The paper reports Thanos +11.1 points over SupCon" in none


def test_robustness_defaults_in_params_are_the_functions_defaults() -> None:
    """The schema's defaults are the functions' (GEORGE's published settings, group DRO's grid)."""
    from pipeline.evaluation.george import george_discover
    from pipeline.evaluation.grouping import discover_groups
    from pipeline.evaluation.probes import DEFAULT_CS
    from pipeline.evaluation.robustness import DEFAULT_ETAS, DEFAULT_WEIGHT_DECAYS, fit_group_dro

    robustness_cs = next(f for f in fields(EvaluateParams) if f.name == "robustness_cs")
    assert tuple(robustness_cs.default_factory()) == DEFAULT_CS
    dro, fit = GroupDROParams(), inspect.signature(fit_group_dro).parameters
    assert tuple(dro.etas) == DEFAULT_ETAS and tuple(dro.weight_decays) == DEFAULT_WEIGHT_DECAYS
    for key in ("steps", "lr", "eval_every", "adjustment"):
        assert getattr(dro, key) == fit[key].default, key
    discover = inspect.signature(discover_groups).parameters
    for key, value in vars(KMeansDiscoveryParams()).items():
        assert discover[key].default == value, key
    george, defaults = inspect.signature(george_discover).parameters, GeorgeParams("none", "gmm")
    for key, value in vars(defaults).items():
        if key != "reduction":  # (the function defaults to no reduction; params name it per dataset)
            assert george[key].default == value, key
