"""The MLflow UI as a person sees it: the runs table that `make ui` links to, rendered by headless
Chromium over a store the tiny pipeline logged; and `make ui` being light (one web worker, no
background job runner, 127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_params
from pipeline import paths, ui

DATASETS = {"digits": ("untrained", "supcon"), "spurious_digits": ("untrained", "supcon")}

try:
    ui.chromium()
    NO_CHROMIUM = ""
except ui.ChromiumMissing as err:
    NO_CHROMIUM = f"{err} (.ci/run installs it)"
needs_chromium = pytest.mark.skipif(bool(NO_CHROMIUM), reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of both tasks (2 methods each, 1 seed, 1 epoch), logged as the stages log it."""
    from pipeline.config import validate
    from pipeline.jobs.download import download_job
    from pipeline.jobs.embed import embed_job
    from pipeline.jobs.evaluate import evaluate_job
    from pipeline.jobs.report import report_job
    from pipeline.jobs.train import train_job

    root = tmp_path_factory.mktemp("ui")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    try:
        p = tiny_params(epochs=1, methods=DATASETS["digits"], robustness=("spurious_digits",))
        params = validate(p)
        for dataset, methods in DATASETS.items():
            download_job(params, dataset)
            for m in methods:
                train_job(params, dataset, m, 0, progress=False)
                embed_job(params, dataset, m, 0)
                evaluate_job(params, dataset, m, 0)
        report_job(params)
    finally:
        mp.undo()
    return root


def _rendered_rows(url: str, names: list[str]) -> list[dict[str, str]]:
    """The runs table Chromium renders at ``url``, read again with a longer script budget if a row
    named in ``names`` is missing (a loaded machine)."""
    for budget in (ui.BUDGET_MS, 4 * ui.BUDGET_MS):
        rows = ui.runs_table(ui.dump_dom(url, budget_ms=budget))
        shown = " | ".join(r.get("run_name", "") for r in rows)
        if all(name in shown for name in names):
            break
    return rows


def _headline(metrics: dict[str, float], dataset: str) -> tuple[str, float]:
    from pipeline.tasks import WorstGroup

    key = WorstGroup.HEADLINE if dataset.startswith("spurious") else "fine_head_acc"
    return key, metrics[key]


@pytest.mark.slow
@needs_chromium
def test_runs_table_shows_every_method_with_its_headline_metric(tiny_store: Path) -> None:
    store = f"sqlite:///{tiny_store / 'mlflow.db'}"
    views = {v.name: v for v in ui.headline_views(store)}  # what `make ui` does before it prints links
    assert set(views) == {f"thanos-bench/{d}" for d in DATASETS}
    with ui.running_server(store) as (base, _):
        for dataset, methods in DATASETS.items():
            view = views[f"thanos-bench/{dataset}"]
            url = view.url(base)  # the link `make ui` prints
            assert "viewStateShareKey=headline" in url
            rows = _rendered_rows(url, [f"{m} s0" for m in methods])
            names = [r.get("run_name", "") for r in rows]
            for method in methods:
                metrics = json.loads((tiny_store / paths.metrics_path(dataset, method, 0)).read_text())
                key, value = _headline(metrics, dataset)
                assert view.metric == key
                row = [r for r in rows if re.search(rf"(^|\s){re.escape(method)} s0$", r.get("run_name", ""))]
                assert len(row) == 1, f"{dataset}: one row named '{method} s0' in the runs table, got {names}"
                shown = row[0].get(ui.column("metrics", key))
                assert shown is not None, f"{dataset}: no {key} column in the runs table (columns: {sorted(row[0])})"
                assert float(shown) == pytest.approx(value, rel=6e-4, abs=1e-9), (dataset, method, shown, value)
                assert row[0].get(ui.column("params", "method")) == method
            assert any(n == "report" or n.endswith(" report") for n in names), f"{dataset}: no report row in {names}"
            # best first: the saved view sorts by the headline metric, descending
            shown = [float(r[ui.column("metrics", view.metric)]) for r in rows
                     if r.get(ui.column("metrics", view.metric), "-") not in ("-", "")]
            assert shown == sorted(shown, reverse=True)


def test_the_view_and_its_link_are_what_mlflow_reads() -> None:
    state = ui.view_state("discovered_gdro.discovered/worst_group_acc")
    assert state["selectedColumns"][-1] == "metrics.`discovered_gdro.discovered/worst_group_acc`"
    assert state["orderByKey"] == state["selectedColumns"][-1] and state["orderByAsc"] is False
    envelope = json.loads(ui._envelope(state, 1, 2))
    assert envelope["name"] == ui.VIEW_NAME and json.loads(envelope["state"]) == state
    url = ui.view_url("http://127.0.0.1:5000", "7")
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=headline&")


def test_make_ui_runs_the_light_server_on_loopback() -> None:
    recipe = subprocess.run(["make", "-n", "-o", ".venv/.installed", "ui"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert "pipeline.ui serve" in recipe, recipe
    cmd = ui.server_command("sqlite:////x/mlflow.db", 5000)
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert ui.server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.slow
def test_make_ui_is_three_light_processes_and_prints_the_links(tmp_path: Path) -> None:
    """`python -m pipeline.ui serve` (make ui): itself, the MLflow CLI and one uvicorn worker, no job
    runner (MLflow's defaults start 15 processes: 4 workers, the job runner and its 7 huey consumers);
    Ctrl-C ends them all."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    exp = client.create_experiment("thanos-bench/digits")
    run = client.create_run(exp, run_name="supcon s0")
    client.log_metric(run.info.run_id, "fine_head_acc", 91.25)
    port = ui.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.ui", "serve", "--store", store, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "thanos-bench/digits" in line:
                break
        assert any(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?viewStateShareKey=headline" in x
                   for x in lines), "".join(lines)
        time.sleep(3)  # MLflow starts its job runner, when enabled, right after the server
        pids = ui.group_pids(proc.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in pids]
        assert len(pids) == 3, commands  # python -m pipeline.ui, the mlflow CLI, one uvicorn worker
        assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
        assert sum("uvicorn" in c for c in commands) == 1, commands
        tag = client.get_experiment(exp).tags[ui.VIEW_TAG_PREFIX + ui.VIEW_KEY]
        assert "fine_head_acc" in json.loads(tag)["state"]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    assert not ui.group_pids(proc.pid), "a process of `make ui` outlived Ctrl-C"
