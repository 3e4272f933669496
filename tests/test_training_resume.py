"""Resume after a real crash: the train stage is SIGKILLed mid-run, rerun, and must end bit-identical.

The stage runs as a subprocess (`python -m stages.train`, as DVC runs it) on the embedded digits
with a checkpoint after every epoch. As soon as the first resume checkpoint exists the process is
killed with SIGKILL (no handler, no cleanup: what an OOM kill or a power cut does), then the same
command is rerun to completion. Its model must equal, tensor for tensor and byte for byte, that
of an uninterrupted run with the same seed, and its history must hold every epoch once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import prepare_in, tiny_params
from pipeline import paths

EPOCHS = 12
METHOD, SEED = "supcon", 0


def _project(root: Path) -> Path:
    """A scratch project: tiny params (checkpoint every epoch) and the prepared digits."""
    prepare_in(root, tiny_params(epochs=EPOCHS, methods=(METHOD,)))
    return root


def _command() -> list[str]:
    return [sys.executable, "-m", "stages.train", "--dataset", "digits", "--method", METHOD, "--seed", str(SEED)]


def _env(root: Path) -> dict[str, str]:
    # One thread in every run: CPU kernels may sum in another order with another thread count.
    return dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", OMP_NUM_THREADS="1")


def _run_to_completion(root: Path) -> str:
    out = subprocess.run(_command(), cwd=root, env=_env(root), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _kill_after_first_checkpoint(root: Path) -> None:
    resume = root / paths.resume_path("digits", METHOD, SEED)
    with open(root / "killed.log", "wb") as log:
        proc = subprocess.Popen(_command(), cwd=root, env=_env(root), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        try:
            while not resume.exists():
                assert proc.poll() is None, f"stage ended before its first checkpoint:\n{(root / 'killed.log').read_text()}"
                assert time.monotonic() < deadline, "no resume checkpoint within 240 s"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _losses(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k.startswith("loss/") or k == "lr"} for h in history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("resume")
    uninterrupted, crashed = _project(base / "uninterrupted"), _project(base / "crashed")
    _run_to_completion(uninterrupted)
    _kill_after_first_checkpoint(crashed)
    return {"uninterrupted": uninterrupted, "crashed": crashed}


def test_killed_stage_left_a_checkpoint_and_no_model(runs: dict[str, Path]) -> None:
    crashed = runs["crashed"]
    assert (crashed / paths.resume_path("digits", METHOD, SEED)).exists()
    assert not (crashed / paths.model_path("digits", METHOD, SEED)).exists()
    state = torch.load(crashed / paths.resume_path("digits", METHOD, SEED), weights_only=True)
    assert 1 <= state["epoch"] < EPOCHS  # killed mid-run


def test_rerun_resumes_and_ends_identical_to_an_uninterrupted_run(runs: dict[str, Path]) -> None:
    crashed, reference = runs["crashed"], runs["uninterrupted"]
    epoch = torch.load(crashed / paths.resume_path("digits", METHOD, SEED), weights_only=True)["epoch"]
    log = _run_to_completion(crashed)
    assert f"at epoch {epoch}" in log  # it resumed from the checkpoint instead of starting over

    model_file = paths.model_path("digits", METHOD, SEED)
    got = torch.load(crashed / model_file, weights_only=True)
    want = torch.load(reference / model_file, weights_only=True)
    assert got["encoder"].keys() == want["encoder"].keys()
    for k, v in want["encoder"].items():
        assert torch.equal(got["encoder"][k], v), k
    assert (crashed / model_file).read_bytes() == (reference / model_file).read_bytes()

    history = json.loads((crashed / paths.history_path("digits", METHOD, SEED)).read_text())
    expected = json.loads((reference / paths.history_path("digits", METHOD, SEED)).read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert _losses(history) == _losses(expected)  # seconds and images/s differ, the rest must not
    assert not (crashed / paths.resume_path("digits", METHOD, SEED)).exists()  # removed when done
