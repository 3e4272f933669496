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

from conftest import copy_project, prepare_in, tiny_params
from pipeline import paths

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

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
    assert _losses(history) == _losses(expected)
    # No timings in the history (a DVC output): the resumed run's file is the same bytes.
    history_file = paths.history_path("digits", METHOD, SEED)
    assert (crashed / history_file).read_bytes() == (reference / history_file).read_bytes()
    assert not (crashed / paths.resume_path("digits", METHOD, SEED)).exists()  # removed when done


# ------------------------------------------------------------------ a code edit between kill and rerun

# The edit: a different learning-rate schedule (cosine decays to 10% of the peak instead of 0).
SCHEDULE = "return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))"
EDITED_SCHEDULE = "return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress)))"


def _project_with_code(root: Path) -> Path:
    """A scratch project holding its own copy of the code: `python -m stages.train` run there
    imports that copy (the working directory comes first on sys.path), so the test can edit it."""
    params = tiny_params(epochs=EPOCHS, methods=(METHOD,))
    copy_project(root, params)
    prepare_in(root, params)
    return root


def _edit_schedule(root: Path) -> None:
    training = root / "pipeline" / "training.py"
    text = training.read_text()
    assert text.count(SCHEDULE) == 1, "the schedule this test edits has moved; update SCHEDULE"
    training.write_text(text.replace(SCHEDULE, EDITED_SCHEDULE))


def test_a_checkpoint_of_other_code_is_discarded_not_spliced(tmp_path: Path) -> None:
    """Kill after a checkpoint, edit the code, rerun: the result must be the new code's from
    epoch 0, byte for byte, not old epochs spliced with new ones (the resume fingerprint used
    to cover the params only, and this rerun said "resuming ... at epoch N")."""
    crashed, clean = _project_with_code(tmp_path / "crashed"), _project_with_code(tmp_path / "clean")
    _kill_after_first_checkpoint(crashed)
    _edit_schedule(crashed)
    _edit_schedule(clean)

    log = _run_to_completion(crashed)
    assert "resuming" not in log
    assert "written by other code (changed since: pipeline/training.py)" in log
    _run_to_completion(clean)
    model_file = paths.model_path("digits", METHOD, SEED)
    assert (crashed / model_file).read_bytes() == (clean / model_file).read_bytes()
    history = paths.history_path("digits", METHOD, SEED)
    assert (crashed / history).read_bytes() == (clean / history).read_bytes()
