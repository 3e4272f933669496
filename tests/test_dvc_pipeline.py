"""The DVC wiring: a tiny `dvc repro` on a copy of the project, then a no-op, then one edited method."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, tiny_params, write_params

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)



def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _ran(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tiny_params(epochs=1, methods=("supcon", "supcon_cnce", "ce_ae", "thanos"),
                    robustness=("spurious_digits",))
    p["suite"]["robustness"]["trained"] = ["supcon_cnce", "ce_ae"]  # the second grid, kept small
    return copy_project(tmp_path_factory.mktemp("project"), p)




def test_repro_then_noop_then_only_the_edited_method(project: Path) -> None:
    first = _ran(_run([sys.executable, "-m", "dvc", "repro"], project))
    # validate; digits: download, train x3, embed x3, embed_concat, evaluate x4; the robustness
    # grid on spurious_digits: download, train x2, embed x2, embed_concat, evaluate x3; report
    assert len(first) == 1 + (1 + 3 + 3 + 1 + 4) + (1 + 2 + 2 + 1 + 3) + 1
    summary = json.loads((project / "reports/summary.json").read_text())
    assert set(summary["digits"]) == {"supcon", "supcon_cnce", "ce_ae", "thanos"}
    assert set(summary["spurious_digits"]) == {"supcon_cnce", "ce_ae", "thanos"}
    assert "## spurious_digits: worst-group robustness" in (project / "reports/results.md").read_text()
    metrics = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project)
    assert "fine_head_acc" in metrics

    second = _run([sys.executable, "-m", "dvc", "repro"], project)
    assert _ran(second) == set()
    assert "Data and pipelines are up to date" in second

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"]["trained"]["supcon"]["ce"] = 0.5
    write_params(project / "params.yaml", params)
    third = _ran(_run([sys.executable, "-m", "dvc", "repro"], project))
    # validate (params.yaml changed), supcon's own stages, the report, and thanos's concat stage (it
    # depends on the seed's model folder, so it re-embeds; its output is byte-identical, so its
    # evaluate stage is skipped).
    assert third == {"validate", "train@digits-supcon-0", "embed@digits-supcon-0", "evaluate@digits-supcon-0",
                     "embed_concat@digits-thanos-0", "report"}


def test_stage_names_are_readable(project: Path) -> None:
    names = set(_run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], project).split())
    expected = {"validate", "download@digits", "report", "embed_concat@digits-thanos-0", "evaluate_concat@digits-thanos-0"}
    for m in ("supcon", "supcon_cnce", "ce_ae"):
        expected |= {f"train@digits-{m}-0", f"embed@digits-{m}-0", f"evaluate@digits-{m}-0"}
    expected |= {"download_robust@spurious_digits", "embed_concat_robust@spurious_digits-thanos-0",
                 "evaluate_concat_robust@spurious_digits-thanos-0"}
    for m in ("supcon_cnce", "ce_ae"):
        expected |= {f"{kind}_robust@spurious_digits-{m}-0" for kind in ("train", "embed", "evaluate")}
    assert names == expected


def _status(project: Path) -> set[str]:
    """The stages `dvc status` says must rerun."""
    return set(json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], project).strip() or "{}"))


def _groups(project: Path) -> dict[str, str]:
    """{stage instance: its group} of the tiny project (train@digits-supcon-0 -> train)."""
    names = _run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], project).split()
    return {name: name.split("@")[0] for name in names}


@pytest.mark.parametrize("edited", [
    "pipeline/losses.py", "pipeline/training.py", "pipeline/jobs/train.py", "pipeline/embeddings.py",
    "pipeline/evaluation/probes.py", "pipeline/reports.py", "pipeline/data/cifar.py", "pipeline/io.py",
    "pipeline/config.py",
])
def test_a_code_edit_reruns_exactly_the_stages_that_run_it(project: Path, edited: str) -> None:
    from test_code_deps import closure_of, stage_templates

    assert _status(project) == set(), "the project must be up to date before the edit"
    templates = stage_templates(project / "dvc.yaml")
    expected = {name for name, group in _groups(project).items()
                if Path(edited) in closure_of(templates[group]["cmd"], project)}
    assert expected, f"no stage runs {edited}?"
    path = project / edited
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        assert _status(project) == expected
    finally:
        path.write_text(original)
    assert _status(project) == set()


def test_params_are_validated_before_any_work_even_when_up_to_date(project: Path) -> None:
    """A typo in a key no stage reads used to give "up to date", exit 0: the validate stage at the
    root of the graph reruns whenever params.yaml changes and fails naming the key."""
    path = project / "params.yaml"
    original = path.read_text()
    assert "  raw_root: " in original
    typos = {"suit": original + "\nsuit: {smoke: false}\n",                  # a top-level key
             "data.raw_rot": original.replace("  raw_root: ", "  raw_rot: ")}  # a key of a section
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    try:
        for key, text in typos.items():
            path.write_text(text)
            out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=300)
            log = out.stdout + out.stderr
            assert out.returncode != 0, log
            assert _ran(log) == {"validate"}, log
            assert f"{key}: unknown key" in log and "Traceback" not in log, log
    finally:
        path.write_text(original)
    # Fixed: the next run validates again (DVC removed the failed stage's output) and, its output
    # being the same bytes as before, reruns nothing else.
    assert _ran(_run([sys.executable, "-m", "dvc", "repro"], project)) == {"validate"}
    assert _status(project) == set()


def test_yaml_1_2_numbers_mean_the_same_to_dvc_and_the_stages(project: Path) -> None:
    """`3e-3` is a number for DVC (YAML 1.2); PyYAML read it as a string, so DVC said "up to date"
    while the stage failed. Rewriting values in other YAML 1.2 spellings changes nothing."""
    path = project / "params.yaml"
    original = path.read_text()
    forms = {"lr: 0.003": "lr: 3e-3", "temperature: 0.5": "temperature: .5",
             "weight_decay: 0.01": "weight_decay: 1.0e-2", "probe_cs:\n  - 0.001": "probe_cs:\n  - 1e-3"}
    try:
        text = original
        for old, new in forms.items():
            assert old in text, f"{old!r} not in the tiny params"
            text = text.replace(old, new)
        path.write_text(text)
        assert _status(project) == {"validate"}  # only the file changed, no value a stage reads
        assert _ran(_run([sys.executable, "-m", "dvc", "repro"], project)) == {"validate"}
        assert _status(project) == set()
    finally:
        path.write_text(original)
        _run([sys.executable, "-m", "dvc", "repro"], project)


def test_a_byte_identical_retrain_changes_nothing_downstream(project: Path) -> None:
    """DVC outputs are functions of their inputs only: the history held wall-clock fields, so a
    forced retrain that reproduced the model bit for bit still changed an output and reran the
    report. Now nothing downstream is out of date after it."""
    stage = "train@digits-supcon_cnce-0"
    model = project / "artifacts/digits/seed0/models/supcon_cnce.pt"
    before = model.read_bytes()
    assert _ran(_run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage], project)) == {stage}
    assert model.read_bytes() == before
    assert _status(project) == set()
