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



def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
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
    # digits: download, train x3, embed x3, embed_concat, evaluate x4; the robustness grid on
    # spurious_digits: download, train x2, embed x2, embed_concat, evaluate x3; report
    assert len(first) == (1 + 3 + 3 + 1 + 4) + (1 + 2 + 2 + 1 + 3) + 1
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
    # supcon's own stages, the report, and thanos's concat stage (it depends on the seed's model
    # folder, so it re-embeds; its output is byte-identical, so its evaluate stage is skipped).
    assert third == {"train@digits-supcon-0", "embed@digits-supcon-0", "evaluate@digits-supcon-0",
                     "embed_concat@digits-thanos-0", "report"}


def test_stage_names_are_readable(project: Path) -> None:
    names = set(_run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], project).split())
    expected = {"download@digits", "report", "embed_concat@digits-thanos-0", "evaluate_concat@digits-thanos-0"}
    for m in ("supcon", "supcon_cnce", "ce_ae"):
        expected |= {f"train@digits-{m}-0", f"embed@digits-{m}-0", f"evaluate@digits-{m}-0"}
    expected |= {"download_robust@spurious_digits", "embed_concat_robust@spurious_digits-thanos-0",
                 "evaluate_concat_robust@spurious_digits-thanos-0"}
    for m in ("supcon_cnce", "ce_ae"):
        expected |= {f"{kind}_robust@spurious_digits-{m}-0" for kind in ("train", "embed", "evaluate")}
    assert names == expected
