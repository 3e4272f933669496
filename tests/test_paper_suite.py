"""The paper suite's smoke mode, for real: `python -m stages.suite paper --smoke` (what `make paper
SMOKE=1` runs) in a scratch copy of the project, and the fabricated datasets it prepares.

The end-to-end test is the longest of the suite: measured 2026-12-03 on a quiet 2-core machine, its
73 DVC stages took 15 s (download, embed) to 36 s (train) each, mostly process start-up (torch,
torchvision with torch._dynamo, MLflow's import and SQLite store, scikit-learn), whatever their
tiny data; under `make test` it shares the cores with the other pytest-xdist worker. Its time
limit is generous on purpose: a limit only catches a hang, and a slow machine is not one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, repo_params
from pipeline.data.cache import cache_params, read_cache
from pipeline.data.download import DatasetFileError
from pipeline.smoke import SMOKE_PREPARE
from pipeline.data.registry import prepare, smoke_root
from pipeline.suites import PAPER
from pipeline.tasks import WorstGroup

COARSE = ["cifar10", "cifar100", "cifar100u", "mnist"]
ROBUST = ["waterbirds", "celeba"]
# Where the real project writes outputs; a smoke run in a scratch copy must leave them alone.
PROJECT_OUTPUTS = ["data", "artifacts", "reports", "resume", "mlruns", "mlflow.db", "dvc.lock", ".dvc/cache"]


# ---------------------------------------------------------------------------- prepare(fabricated=True)

# (split sizes train/val/test) of each smoke copy, loaded with the smoke mode's prepare options.
SMOKE_SIZES = {
    "cifar10": (40, 40, 40), "cifar100": (100, 100, 100), "cifar100u": (110, 110, 100),
    "mnist": (32, 32, 40), "waterbirds": (32, 10, 14), "celeba": (32, 10, 10),
}


@pytest.mark.parametrize("name", sorted(SMOKE_SIZES))
def test_prepare_fabricated_writes_a_real_format_copy_and_flags_the_cache(name: str, tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prepared" / name
    prepare(name, raw, out, SMOKE_PREPARE[name], fabricated=True)
    records = read_cache(out)
    assert tuple(len(records.splits[s]) for s in ("train", "val", "test")) == SMOKE_SIZES[name]
    built = cache_params(out)
    assert built["dataset"] == name and built["fabricated"] is True
    # The copy lies under <raw>/smoke/<name> and nowhere else under the raw root.
    files = [p.relative_to(raw) for p in raw.rglob("*") if p.is_file()]
    assert files and all(f.parts[:2] == ("smoke", name) for f in files)
    # ... and it is the real loader that read it: a real prepare finds no real files and refuses,
    # rather than taking the fabricated cache for the real data.
    with pytest.raises(DatasetFileError):
        prepare(name, raw, out, SMOKE_PREPARE[name], download=False)
    assert cache_params(out)["fabricated"] is True


@pytest.mark.parametrize("name", sorted(SMOKE_SIZES))
def test_prepare_fabricated_verifies_the_copy_like_real_files(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fabricated copy goes through the loader's md5 / split-size verification."""
    import pipeline.data.fabricate as fabricate

    real_writer = fabricate.SMOKE_WRITERS[name]

    def tampered(root: Path) -> dict[str, object]:
        verification = real_writer(root)
        if "checksums" in verification:
            return {"checksums": {path: "0" * 32 for path in verification["checksums"]}}
        return {"split_sizes": {split: n + 1 for split, n in verification["split_sizes"].items()}}

    monkeypatch.setitem(fabricate.SMOKE_WRITERS, name, tampered)
    with pytest.raises(DatasetFileError, match="md5|split sizes"):
        prepare(name, tmp_path / "raw", tmp_path / "out", SMOKE_PREPARE[name], fabricated=True)
    assert not (tmp_path / "out").exists()


def test_prepare_fabricated_keeps_real_files_and_loads_embedded_data_as_usual(tmp_path: Path) -> None:
    real = tmp_path / "raw" / "cifar-10-batches-py" / "data_batch_1"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real file")
    prepare("cifar10", tmp_path / "raw", tmp_path / "c10", SMOKE_PREPARE["cifar10"], fabricated=True)
    assert real.read_bytes() == b"a real file"
    assert (smoke_root(tmp_path / "raw", "cifar10") / "cifar-10-batches-py" / "data_batch_1").is_file()

    prepare("digits", tmp_path / "raw", tmp_path / "digits", fabricated=True)
    assert "fabricated" not in cache_params(tmp_path / "digits")
    assert len(read_cache(tmp_path / "digits").splits["train"]) > 1000  # the real 1,797 digits
    assert not smoke_root(tmp_path / "raw", "digits").exists()


# ---------------------------------------------------------------------------- the smoke run, end to end


@dataclass(frozen=True)
class SmokeRun:
    project: Path
    outside: Path
    log: str
    ran: set[str]
    project_outputs_before: dict[str, tuple[int, int]]
    git_status_after: str  # of the scratch workspace, right after the run
    params_after: dict


def _snapshot(root: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``root/name`` for each name."""
    files: dict[str, tuple[int, int]] = {}
    for name in names:
        top = root / name
        for path in ([top] if top.is_file() else top.rglob("*") if top.is_dir() else []):
            if path.is_file():
                st = path.stat()
                files[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return files


def _git(project: Path, *args: str, env: dict[str, str]) -> str:
    return subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmokeRun]:
    base = tmp_path_factory.mktemp("paper_smoke")
    project = copy_project(base / "project", repo_params())
    outside = base / "outside"  # HOME and TMPDIR of the run: nothing may be left there
    for d in ("home", "tmp"):
        (outside / d).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MLFLOW_", "DVC_", "GIT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HOME=str(outside / "home"), TMPDIR=str(outside / "tmp"), OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        # The tools' own caches, which a user's machine keeps in its home or /var/tmp, go into the
        # scratch copy's ignored .dvc/tmp, so that any other file written outside it is a finding.
        DVC_SITE_CACHE_DIR=str(project / ".dvc" / "tmp" / "site_cache"),
        MPLCONFIGDIR=str(project / ".dvc" / "tmp" / "matplotlib"),
        GIT_AUTHOR_NAME="smoke", GIT_AUTHOR_EMAIL="smoke@example.invalid",
        GIT_COMMITTER_NAME="smoke", GIT_COMMITTER_EMAIL="smoke@example.invalid",
    )
    _git(project, "add", "-A", env=env)
    _git(project, "commit", "-q", "-m", "scratch copy", env=env)
    before = _snapshot(ROOT, PROJECT_OUTPUTS)
    out = subprocess.run([sys.executable, "-m", "stages.suite", "paper", "--smoke"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=3600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"the paper suite's smoke run failed:\n{log[-20000:]}"
    yield SmokeRun(project, outside, log, set(re.findall(r"Running stage '([^']+)'", log)), before,
                   _git(project, "status", "--porcelain", env=env),
                   yaml.safe_load((project / "params.yaml").read_text()))


def _group_and_dataset(stage: str) -> tuple[str, str | None]:
    """'evaluate_concat@cifar100u-thanos-0' -> ('evaluate_concat', 'cifar100u'); 'report' -> ('report', None)."""
    group, _, item = stage.partition("@")
    if not item:
        return group, None
    return group, item if group.startswith("download") else item.rsplit("-", 2)[0]


@pytest.mark.slow
def test_smoke_runs_every_stage_group_for_every_paper_dataset(smoke: SmokeRun) -> None:
    groups = list(yaml.safe_load((smoke.project / "dvc.yaml").read_text())["stages"])
    singletons = {"validate", "report"}  # one stage each for the whole suite, not one per dataset
    expected = {(group, None) for group in singletons}
    for group in groups:
        if group not in singletons:
            expected |= {(group, d) for d in (ROBUST if group.endswith("_robust") else COARSE)}
    ran = {_group_and_dataset(stage) for stage in smoke.ran}
    assert expected <= ran, f"stage groups that did not run: {sorted(expected - ran, key=str)}"
    # The smoke's own trimming: one seed, the robustness protocol's methods, nothing else.
    seeds = {stage.rsplit("-", 1)[1] for stage in smoke.ran if stage.count("-") >= 2}
    methods = {stage.split("@")[1].rsplit("-", 2)[1] for stage in smoke.ran if stage.count("-") >= 2}
    assert seeds == {"0"} and methods == set(PAPER.smoke_methods)
    # Per dataset: its download, train + embed + evaluate per trained method, embed + evaluate per concatenation.
    trained = [m for m in PAPER.smoke_methods if m in repo_params()["methods"]["trained"]]
    per_dataset = 1 + 3 * len(trained) + 2 * (len(PAPER.smoke_methods) - len(trained))
    assert len(smoke.ran) == len(singletons) + len(COARSE + ROBUST) * per_dataset


@pytest.mark.slow
def test_smoke_leaves_the_workspace_and_everything_outside_the_copy_alone(smoke: SmokeRun) -> None:
    # `dvc exp run --temp`: the scratch workspace itself still holds the committed project.
    assert smoke.git_status_after == ""
    assert smoke.params_after == repo_params()
    # The one exception, by design: the empty fcntl lock files of pipeline/cli.py (one per stage) and
    # pipeline/tracking.py (MLflow store creation) live in the temporary folder, so that the
    # workspace gains no file; they are emptied on release and never deleted (deleting a lock
    # file races with its next user).
    locks = [p for p in (smoke.outside / "tmp").glob("thanos-bench-*.lock") if p.stat().st_size == 0]
    left = [str(p.relative_to(smoke.outside)) for p in smoke.outside.rglob("*") if p.is_file() and p not in locks]
    assert left == [], f"files written outside the scratch copy (HOME / TMPDIR): {left}"
    assert _snapshot(ROOT, PROJECT_OUTPUTS) == smoke.project_outputs_before, \
        "the smoke run changed outputs of the real project"
    assert not (ROOT / "data" / "raw" / "smoke").exists()


@pytest.mark.slow
def test_smoke_experiment_reports_cover_every_paper_dataset(smoke: SmokeRun) -> None:
    env = dict(os.environ, DVC_SITE_CACHE_DIR=str(smoke.project / ".dvc" / "tmp" / "site_cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    refs = _git(smoke.project, "for-each-ref", "--format=%(refname)", "refs/exps", env=env).split()
    assert len(refs) == 1, refs
    # What a user does to look at the smoke's results: bring the experiment into the workspace.
    name = refs[0].rsplit("/", 1)[1]
    subprocess.run([sys.executable, "-m", "dvc", "exp", "apply", name], cwd=smoke.project, env=env, check=True,
                   capture_output=True)
    params = yaml.safe_load((smoke.project / "params.yaml").read_text())
    assert params["suite"]["smoke"] is True and params["suite"]["datasets"] == COARSE

    summary = json.loads((smoke.project / "reports" / "summary.json").read_text())
    results = (smoke.project / "reports" / "results.md").read_text()
    headings = [line for line in results.splitlines() if line.startswith("## ")]
    for dataset in COARSE + ROBUST:
        assert set(summary[dataset]) == set(PAPER.smoke_methods), dataset
        kind, metric = (("coarse-to-fine", "fine_head_acc") if dataset in COARSE
                        else ("worst-group", WorstGroup.HEADLINE))
        assert all(summary[dataset][m]["metric"] == metric for m in PAPER.smoke_methods), (dataset, metric)
        assert any(h.startswith(f"## {dataset}") and kind in h for h in headings), (dataset, headings)
        # Every prepared cache came from a fabricated copy, flagged as such.
        assert cache_params(smoke.project / "data" / "prepared" / dataset)["fabricated"] is True
