"""Faults an unattended run meets, each provoked for real: the tracking server dying mid-run and
re-logging afterwards, a NaN loss, kills (SIGKILL of `dvc repro`, SIGINT / SIGTERM of a stage),
truncated or foreign checkpoints, two stages logging to one SQLite store, params typos."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, copy_project, free_port, repo_params, tiny_params, write_params
from pipeline import paths
from pipeline.jobs.download import download_job
from pipeline.jobs.embed import embed_job
from pipeline.jobs.evaluate import evaluate_job
from pipeline.jobs.train import train_job
from pipeline.cli import exclusive, stage_main
from pipeline.config import ParamsError, validate
from pipeline.tracking import HTTP_DEFAULTS, bound_http_retries, file_md5

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

BIN = Path(sys.executable).parent
TRAIN = [sys.executable, "-m", "stages.train", "--dataset", "digits", "--seed", "0", "--method"]


# ---------------------------------------------------------------- helpers


def _env(root: Path, **extra: str) -> dict[str, str]:
    """A stage subprocess's environment: this venv first, one thread, a store in ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", **extra})
    return env


def _start(cmd: list[str], cwd: Path, env: dict[str, str], log: str) -> subprocess.Popen:
    """A subprocess in its own process group, output to ``cwd/log`` (no pipe to fill up)."""
    with open(cwd / log, "w") as out:
        # A shell starts background jobs with SIGINT ignored, and children inherit that; restore
        # the default so the child behaves like a stage run from a terminal, wherever pytest runs.
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition: Callable[[], bool], what: str, timeout: float,
              proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    """The exit code; a process still running after ``timeout`` s is killed (and the test fails)."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        _kill_all([proc])


def _runs(db: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"])


def _leftover_temporaries(root: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``) under artifacts/."""
    return list(root.glob("artifacts/**/*.tmp"))


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared/digits, made once, copied into each workdir that needs it."""
    root = tmp_path_factory.mktemp("prepared")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    download_job(validate(tiny_params()), "digits")
    mp.undo()
    return root / "data"


def _project_dir(root: Path, prepared: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prepared, root / "data")
    write_params(root / "params.yaml", params)
    return root


# ------------------------------------------------- 1. tracking server down mid-run


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on a free loopback port with a temporary SQLite store."""
    port = free_port()  # a loopback port nothing listens on
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    proc = _start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{server_dir / 'store.db'}",
                   "--artifacts-destination", str(server_dir / "artifacts"), "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1"], server_dir, dict(os.environ), "server.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=1).status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, "mlflow server", 90, proc)
        yield url, proc
    finally:
        _kill_all([proc])


def test_server_dying_mid_run_costs_one_warning_not_the_outputs(tmp_path: Path, prepared: Path,
                                                                mlflow_server) -> None:
    from mlflow import MlflowClient

    url, server = mlflow_server
    work = _project_dir(tmp_path / "work", prepared, tiny_params(epochs=12))
    # MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) stall the first call to a
    # dead server for ~4 minutes, and its exit hook for as long again: the timeout below fails then.
    proc = _start(TRAIN + ["supcon"], work, _env(work, MLFLOW_TRACKING_URI=url), "train.log")
    _wait_for((work / paths.resume_path("digits", "supcon", 0)).exists, "first checkpoint", 120, proc)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    rc = _finish(proc, timeout=120)
    log = (work / "train.log").read_text()
    assert rc == 0, log
    assert log.count("MLflow: could not") == 1 and "MLflow: could not log metrics" in log, log
    assert (work / paths.model_path("digits", "supcon", 0)).is_file()
    history = json.loads((work / paths.history_path("digits", "supcon", 0)).read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    # The server got the first epochs, then nothing more: its run was cut off, not ended.
    (run,) = _runs(tmp_path / "server" / "store.db")
    assert run.info.status == "RUNNING" and run.data.tags["dvc_stage"] == "train@digits-supcon-0"
    steps = [m.step for m in MlflowClient(f"sqlite:///{tmp_path / 'server' / 'store.db'}")
             .get_metric_history(run.info.run_id, "loss/total")]
    assert 1 <= len(steps) < 12 and steps == list(range(1, len(steps) + 1))


def test_http_retry_bounds_apply_only_where_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


# ------------------------------------------------- 2. re-logging from the stage outputs


def _by_stage(db: Path) -> dict[str, Any]:
    return {r.data.tags["dvc_stage"]: r for r in _runs(db)}


def _by_model(db: Path) -> dict[tuple[str, str], Any]:
    """The runs of a store by (method, seed); fails if a model has two runs."""
    runs = _runs(db)
    by = {(r.data.tags["method"], r.data.tags["seed"]): r for r in runs}
    assert len(by) == len(runs), [r.info.run_name for r in runs]
    return by


def test_relog_recreates_the_live_runs_and_skips_what_is_present(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from pipeline.relog import relog_runs
    from stages.log_runs import main as log_runs_main

    raw = tiny_params(epochs=2, methods=("supcon", "ce", "simclr"))
    raw["methods"]["concat"] = {"both": ["supcon", "ce"]}
    write_params(workdir / "params.yaml", raw)
    params = validate(raw)
    live_db, relog_db = workdir / "live.db", workdir / "relog.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{live_db}")
    download_job(params, "digits")
    for m in ("supcon", "ce"):
        train_job(params, "digits", m, 0, progress=False)
        embed_job(params, "digits", m, 0)
    embed_job(params, "digits", "both", 0)
    for m in ("supcon", "both"):
        evaluate_job(params, "digits", m, 0)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{relog_db}")
    first = {r.stage: r.status for r in relog_runs()}
    assert first == {"train@digits-supcon-0": "logged", "evaluate@digits-supcon-0": "logged",
                     "train@digits-ce-0": "logged", "evaluate@digits-ce-0": "missing",
                     "train@digits-simclr-0": "missing", "evaluate@digits-simclr-0": "missing",
                     "evaluate_concat@digits-both-0": "logged", "report": "missing"}

    # The same layout as live: one run per model (the evaluation logged into the training run), the
    # same params, tags and numbers, step by step.
    live, relogged = _by_model(live_db), _by_model(relog_db)
    assert set(live) == set(relogged) == {("supcon", "0"), ("ce", "0"), ("both", "0")}
    for key, stage in ((("supcon", "0"), "train+evaluate"), (("ce", "0"), "train"), (("both", "0"), "evaluate")):
        a, b = live[key], relogged[key]
        assert a.info.run_name == b.info.run_name == f"{key[0]} s0"
        assert b.info.status == "FINISHED" and b.data.tags["relogged"] == "true"
        assert a.data.tags["stage"] == b.data.tags["stage"] == stage
        assert a.data.params == b.data.params
        for tag in ("dataset", "method", "seed", "dvc_stage", "git_commit", "model_md5", "metrics_md5"):
            assert a.data.tags.get(tag) == b.data.tags.get(tag), tag
        assert a.data.metrics == b.data.metrics
    supcon = relogged[("supcon", "0")]
    assert supcon.data.tags["model_md5"] == file_md5(paths.model_path("digits", "supcon", 0))
    assert supcon.data.tags["metrics_md5"] == file_md5(paths.metrics_path("digits", "supcon", 0))
    assert supcon.data.tags["dvc_stage_evaluate"] == "evaluate@digits-supcon-0"
    assert supcon.data.params["parts"] == "supcon" and supcon.data.params["weights.supcon"] == "1.0"
    assert supcon.data.params["evaluate.knn_k"] == str(params.evaluate.knn_k)
    assert relogged[("both", "0")].data.params["parts"] == "supcon+ce"
    assert not any(k.startswith("weights.") for k in relogged[("both", "0")].data.params)
    steps = {db: [(m.step, m.value) for m in MlflowClient(f"sqlite:///{db}").get_metric_history(
        r[("supcon", "0")].info.run_id, "loss/total")] for db, r in ((live_db, live), (relog_db, relogged))}
    assert steps[live_db] == steps[relog_db] and [s for s, _ in steps[live_db]] == [1, 2]

    # Rerunning adds nothing; the live store is recognised as complete too (its runs carry the md5 tags).
    methods = ["supcon", "both"]
    assert {r.status for r in relog_runs(methods=methods)} == {"present"}
    assert len(_runs(relog_db)) == 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{live_db}")
    assert {r.status for r in relog_runs(methods=methods)} == {"present"}
    assert len(_runs(live_db)) == 3

    # dvc.lock is the record of what made each output: a mismatch is reported, not logged.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'third.db'}")
    model = paths.model_path("digits", "supcon", 0)
    lock = {"schema": "2.0", "stages": {"train@digits-supcon-0": {
        "params": {"params.yaml": {"train": {**yaml.safe_load((workdir / "params.yaml").read_text())["train"],
                                             "temperature": 0.1}}},
        "outs": [{"path": str(model), "md5": file_md5(model)}]},
        "evaluate@digits-supcon-0": {"outs": [{"path": str(paths.metrics_path("digits", "supcon", 0)),
                                               "md5": "0" * 32}]}}}
    (workdir / "dvc.lock").write_text(yaml.safe_dump(lock))
    stale = {r.stage: r for r in relog_runs(methods=["supcon"], dry_run=True)}
    assert stale["train@digits-supcon-0"].status == "stale"
    assert "params changed since it ran (train)" in stale["train@digits-supcon-0"].detail
    assert stale["evaluate@digits-supcon-0"].status == "stale"
    assert "differs from the file dvc.lock records" in stale["evaluate@digits-supcon-0"].detail

    # The command: a typo is a params error (exit 2) naming the near miss.
    capsys.readouterr()
    assert log_runs_main(["--method", "supcn"]) == 2
    assert "'supcn' is not in params methods (did you mean 'supcon'?)" in capsys.readouterr().err
    (workdir / "dvc.lock").unlink()
    assert log_runs_main(["--method", "supcon", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would log  train@digits-supcon-0" in out and "2 would log" in out
    assert not (workdir / "third.db").exists() or _runs(workdir / "third.db") == []


def test_relog_to_an_unreachable_store_is_an_error(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from stages.log_runs import main as log_runs_main

    write_params(workdir / "params.yaml", tiny_params(methods=("supcon",)))
    port = free_port()  # a loopback port nothing listens on
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert log_runs_main([]) == 1
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------- 3. a non-finite loss


def test_absurd_learning_rate_stops_with_a_clear_failure_and_no_result(workdir: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    p = tiny_params(epochs=2)
    p["datasets"]["digits"]["recipe"]["lr"] = 1e30  # finite, valid, and blows the weights up at once
    write_params(workdir / "params.yaml", p)
    download_job(validate(p), "digits")
    argv = ["--dataset", "digits", "--method", "supcon", "--seed", "0"]
    assert stage_main("train", train_job, argv=argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"error: non-finite loss at epoch 1, step \d+: terms \{'\w+': (nan|-?inf)", err), err
    assert not (workdir / paths.model_path("digits", "supcon", 0)).exists()
    assert not (workdir / paths.history_path("digits", "supcon", 0)).exists()
    (run,) = _runs(workdir / "mlflow.db")
    assert run.info.status == "FAILED" and "NonFiniteLossError: non-finite loss" in run.data.tags["error"]
    assert "model_md5" not in run.data.tags
    # Nothing downstream can take it for a result.
    assert stage_main("embed", embed_job, argv=argv) == 1
    assert "model file not found; run its train stage" in capsys.readouterr().err


def test_nan_keeps_the_last_good_checkpoint_and_a_rerun_resumes_from_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pipeline.training as training

    params = validate(tiny_params(epochs=3))
    download_job(params, "digits")
    saves: list[int] = []
    real_save, real_losses = training._save_resume, training.contrastive_losses

    def counting_save(path: Path, state: dict) -> None:
        real_save(path, state)
        saves.append(state["epoch"])

    def poisoned(*args: Any, **kwargs: Any) -> dict:
        out = real_losses(*args, **kwargs)
        if len(saves) == 2:  # after the epoch-2 checkpoint: the first step of epoch 3
            out["supcon"] = out["supcon"] * float("nan")
        return out

    monkeypatch.setattr(training, "_save_resume", counting_save)
    monkeypatch.setattr(training, "contrastive_losses", poisoned)
    with pytest.raises(training.NonFiniteLossError, match=r"epoch 3, step 1: terms \{'supcon': nan\}"):
        train_job(params, "digits", "supcon", 0, progress=False)
    resume = workdir / paths.resume_path("digits", "supcon", 0)
    state = torch.load(resume, weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["learner"].values())
    assert not (workdir / paths.model_path("digits", "supcon", 0)).exists()
    (run,) = _runs(workdir / "mlflow.db")
    assert run.info.status == "FAILED"

    monkeypatch.setattr(training, "contrastive_losses", real_losses)
    capsys.readouterr()
    train_job(params, "digits", "supcon", 0, progress=False)
    assert f"resuming from {paths.resume_path('digits', 'supcon', 0)} at epoch 2" in capsys.readouterr().out
    assert (workdir / paths.model_path("digits", "supcon", 0)).is_file() and not resume.exists()
    assert [r.info.status for r in _runs(workdir / "mlflow.db")] == ["FAILED", "FINISHED"]


# ------------------------------------------------- 4. kills



def test_sigkill_of_dvc_repro_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    target = "embed@digits-supcon-0"  # download -> train -> embed
    params = tiny_params(epochs=8, methods=("supcon",))
    killed, reference = copy_project(tmp_path / "killed", params), copy_project(tmp_path / "reference", params)
    dvc = [sys.executable, "-m", "dvc", "repro", target]
    # The project copies import their own pipeline/: no PYTHONPATH.
    env = {k: v for k, v in _env(killed).items() if k != "PYTHONPATH"}
    ref = _start(dvc, reference, dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{reference / 'mlflow.db'}"), "repro.log")
    run = _start(dvc, killed, env, "repro.log")
    try:
        _wait_for((killed / paths.resume_path("digits", "supcon", 0)).exists, "first checkpoint", 150, run)
        os.killpg(run.pid, signal.SIGKILL)  # dvc and its stage, as a killed job or a lost machine would
        run.wait()
        assert not (killed / paths.model_path("digits", "supcon", 0)).exists(), "killed too late"

        again = subprocess.run(dvc, cwd=killed, env=env, capture_output=True, text=True, timeout=300)
        log = again.stdout + again.stderr
        assert again.returncode == 0, log  # no stale lock: DVC clears the dead process's entries itself
        assert "Stage 'download@digits' didn't change, skipping" in log
        assert "resuming from resume/digits/seed0/supcon.pt at epoch" in log
        assert _finish(ref, timeout=300) == 0, (reference / "repro.log").read_text()
    finally:
        _kill_all([ref, run])

    def load(root: Path) -> tuple[dict, dict, list]:
        model = torch.load(root / paths.model_path("digits", "supcon", 0), weights_only=True)
        with np.load(root / paths.embedding_path("digits", "supcon", 0)) as arrays:
            embeddings = {k: arrays[k] for k in arrays.files}
        history = json.loads((root / paths.history_path("digits", "supcon", 0)).read_text())
        return model["encoder"], embeddings, [{k: v for k, v in h.items() if k.startswith("loss/")} for h in history]

    (enc_a, emb_a, losses_a), (enc_b, emb_b, losses_b) = load(killed), load(reference)
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert emb_a.keys() == emb_b.keys() and all(np.array_equal(emb_a[k], emb_b[k]) for k in emb_a)
    assert losses_a == losses_b and len(losses_a) == 8
    assert _leftover_temporaries(killed) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_a_stage_exits_cleanly_without_outputs(tmp_path: Path, prepared: Path, sig: int) -> None:
    work = _project_dir(tmp_path, prepared, tiny_params(epochs=30))
    proc = _start(TRAIN + ["supcon"], work, _env(work), "train.log")
    resume = work / paths.resume_path("digits", "supcon", 0)
    _wait_for(resume.exists, "first checkpoint", 120, proc)
    proc.send_signal(sig)
    rc = _finish(proc, timeout=60)
    log = (work / "train.log").read_text()
    assert rc == 128 + sig, log
    assert f"interrupted by {signal.Signals(sig).name}: train@digits-supcon-0 did not finish" in log
    assert "Traceback" not in log
    assert not (work / paths.model_path("digits", "supcon", 0)).exists()
    assert not (work / paths.history_path("digits", "supcon", 0)).exists()
    assert _leftover_temporaries(work) == [] and list(resume.parent.glob("*.tmp")) == []
    assert torch.load(resume, weights_only=True)["epoch"] >= 1  # kept for the rerun
    (run,) = _runs(work / "mlflow.db")
    assert run.info.status == "KILLED"


def test_a_stage_already_running_in_the_workspace_is_refused(workdir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_params(workdir / "params.yaml", tiny_params())
    ran = []

    def train_job(*args: Any) -> None:
        ran.append(args)

    argv = ["--dataset", "digits", "--method", "supcon", "--seed", "0"]
    with exclusive("train@digits-supcon-0"):  # e.g. the orphaned stage of a killed `dvc`
        assert stage_main("train", train_job, argv=argv) == 1
    assert not ran
    assert "train@digits-supcon-0 is already running in this workspace (process " in capsys.readouterr().err
    assert stage_main("train", train_job, argv=argv) == 0 and len(ran) == 1  # released with its holder
    assert stage_main("train", train_job, argv=[*argv[:-1], "1"]) == 0  # another stage is another lock


# ------------------------------------------------- 5. truncated and foreign checkpoints


class _Payload:
    """A pickle that would run code when unpickled: weights_only=True must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def small_digits():
    """200 training images: each resume test trains for a second or two."""
    from pipeline.data.digits import load_digits
    from pipeline.data.records import Split

    r = load_digits()
    tr = r.splits["train"]
    keep = np.arange(200)
    return dataclasses.replace(r, splits={**r.splits, "train": Split(tr.images[keep],
                                                                     {k: v[keep] for k, v in tr.labels.items()})})


def _interrupted_at_epoch_2(small_digits, resume: Path) -> None:
    from pipeline.training import train

    p = validate(tiny_params(epochs=3))

    def stop(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_digits, p.datasets["digits"], p.methods.trained["supcon"], p.train, 0,
              resume_path=resume, on_epoch=stop, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "foreign_pickle", "other_file"])
def test_unusable_resume_state_is_ignored_with_a_message(small_digits, tmp_path: Path, damage: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.training import train

    resume = tmp_path / "resume.pt"
    _interrupted_at_epoch_2(small_digits, resume)
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    elif damage == "foreign_pickle":
        torch.save({"format": "thanos-bench/resume/v1", "x": _Payload(marker)}, resume)
    else:  # a loadable file of another kind, e.g. a model file copied to the wrong place
        torch.save({"format": "thanos-bench/encoder/v1", "encoder": {}}, resume)
    capsys.readouterr()
    p = validate(tiny_params(epochs=3))
    seen: list[int] = []
    train(small_digits, p.datasets["digits"], p.methods.trained["supcon"], p.train, 0, resume_path=resume,
          on_epoch=lambda r: seen.append(int(r["epoch"])), progress=False)
    out = capsys.readouterr().out
    assert seen == [1, 2, 3]  # started over
    expected = "it belongs to other settings" if damage == "other_file" else "ignoring unreadable resume state"
    assert expected in out and str(resume) in out
    assert not marker.exists()


def test_foreign_model_file_is_refused_without_running_it(tmp_path: Path) -> None:
    from pipeline.embeddings import ModelFileError, load_encoder

    marker, path = tmp_path / "code-ran", tmp_path / "model.pt"
    torch.save({"format": "thanos-bench/encoder/v1", "encoder": _Payload(marker)}, path)
    with pytest.raises(ModelFileError, match=rf"(?s){re.escape(str(path))}: not a readable model file .*"
                                             r"Unsupported global.*truncated or foreign"):
        load_encoder(path)
    assert not marker.exists()
    torch.save({"format": "something/else"}, path)
    with pytest.raises(ModelFileError, match="not a thanos-bench/encoder/v1 model file"):
        load_encoder(path)


# ------------------------------------------------- 6. two stages, one SQLite store


LOGGER = """
import sys
from pipeline.tracking import start_run

with start_run("evaluate@digits-m{i}-0", "digits", "m{i}", 0, {{"x": {{"i": {i}}}}}) as run:
    for step in range(40):
        run.log_metrics({{"v": float(step)}}, step=step)
"""


def test_concurrent_stages_share_a_fresh_sqlite_store(tmp_path: Path, prepared: Path) -> None:
    work = _project_dir(tmp_path, prepared, tiny_params(epochs=2, methods=("supcon", "ce")))
    env = _env(work)
    # A fresh store: its schema is created by whichever process comes first (MLflow alone races here).
    procs = [_start(TRAIN + [m], work, env, f"train-{m}.log") for m in ("supcon", "ce")]
    procs += [_start([sys.executable, "-c", LOGGER.format(i=i)], work, env, f"log-{i}.log") for i in range(3)]
    try:
        codes = [_finish(p, timeout=240) for p in procs]
    finally:
        _kill_all(procs)
    texts = {f.name: f.read_text() for f in work.glob("*.log")}
    assert codes == [0] * 5, texts
    assert not any("MLflow:" in t for t in texts.values()), texts
    runs = _by_stage(work / "mlflow.db")
    assert set(runs) == {"train@digits-supcon-0", "train@digits-ce-0", *(f"evaluate@digits-m{i}-0" for i in range(3))}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for m in ("supcon", "ce"):
        assert runs[f"train@digits-{m}-0"].data.tags["model_md5"] == file_md5(work / paths.model_path("digits", m, 0))
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    for i in range(3):
        history = client.get_metric_history(runs[f"evaluate@digits-m{i}-0"].info.run_id, "v")
        assert sorted(m.step for m in history) == list(range(40))


# ------------------------------------------------- 7. params: typos fail first, and clearly


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        *parents, last = path.split(".")
        node = p
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (_set("train.temperature", -0.1), "train.temperature: -0.1 must be > 0.0"),
    (_set("train.temperature", float("nan")), "train.temperature: expected a finite number, got nan"),
    (_set("train.temperature", "0.1"), "train.temperature: expected a number, got str '0.1'"),
    # alpha of the spread loss is the cnce weight with supcon = 1 - alpha: alpha outside [0, 1]
    # makes one of the two weights negative.
    (_set("methods.trained.supcon_cnce.supcon", -0.5), "methods.trained.supcon_cnce.supcon: -0.5 must be >= 0.0"),
    (_set("methods.trained.supcon_cnce.cnce", -0.25), "methods.trained.supcon_cnce.cnce: -0.25 must be >= 0.0"),
    (_set("methods.trained.supcon.cnse", 0.5),
     "methods.trained.supcon.cnse: unknown key (did you mean 'cnce'?)"),
    (_set("methods.trained.supcon.ce", True), "methods.trained.supcon.ce: expected a number, got bool True"),
    (_set("datasets.digits.recipe.batchsize", 32),
     "datasets.digits.recipe.batchsize: unknown key (did you mean 'batch_size'?)"),
    (_set("datasets.digits.recipe.epochs", 0), "datasets.digits.recipe.epochs: 0 must be >= 1"),
    (_set("datasets.digits.recipe.lr", 0), "datasets.digits.recipe.lr: 0.0 must be > 0.0"),
    # (backbone, augmentation and source names: checked against their registries, tests/test_config.py)
    (_set("train.device", "gpu"),
     "train.device: 'gpu' is not allowed (did you mean 'cpu'?); allowed: 'auto', 'cpu', 'cuda'"),
    (_set("suite.seeds", [0, 0]), "suite.seeds: seeds must be distinct"),
    (_set("suite.seeds", [-1]), "suite.seeds[0]: -1 must be >= 0"),
    (_set("evaluate.probe_cs", [1.0, -1.0]), "evaluate.probe_cs[1]: -1.0 must be > 0.0"),
    (_set("evaluate.knn_k", 0), "evaluate.knn_k: 0 must be >= 1"),
    (_set("report.headline", "fine_acc"), "report.headline: 'fine_acc' is not allowed"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_params_mistakes_name_the_key_and_what_is_allowed(mutate: Callable[[dict], None], expected: str) -> None:
    p = repo_params()
    mutate(p)
    with pytest.raises(ParamsError) as info:
        validate(p)
    assert expected in str(info.value)


@pytest.mark.parametrize("job, argv, expected", [
    ("train", ["--dataset", "digits", "--method", "supcn", "--seed", "0"],
     "method 'supcn' is not in params methods (did you mean 'supcon'?)"),
    ("train", ["--dataset", "digit", "--method", "supcon", "--seed", "0"],
     "dataset 'digit' is not in params datasets (did you mean 'digits'?)"),
    ("train", ["--dataset", "digits", "--method", "thanos", "--seed", "0"],
     "method 'thanos' is a concatenation (methods.concat): it has no train stage"),
    ("evaluate", ["--dataset", "digits", "--method", "thanoss", "--seed", "0"], "(did you mean 'thanos'?)"),
])
def test_stage_command_typos_exit_2_before_any_work(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                    job: str, argv: list[str], expected: str) -> None:
    write_params(workdir / "params.yaml", repo_params())
    assert stage_main(job, {"train": train_job, "evaluate": evaluate_job}[job], argv=argv) == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]
