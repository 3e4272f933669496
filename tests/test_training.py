"""The training loop: determinism, resume after an interruption, the non-finite loss guard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_params
from pipeline.config import validate
from pipeline.data.digits import load_digits
from pipeline.data.records import Records, Split
from pipeline.training import NonFiniteLossError, cosine_with_warmup, train


@pytest.fixture(scope="module")
def small_digits() -> Records:
    """A 200-image training split keeps each test to a second or two."""
    r = load_digits()
    tr = r.splits["train"]
    keep = np.arange(200)
    train_split = Split(tr.images[keep], {k: v[keep] for k, v in tr.labels.items()})
    return dataclasses.replace(r, splits={**r.splits, "train": train_split})


def _setup(epochs: int = 3, method: str = "supcon"):
    p = validate(tiny_params(epochs=epochs))
    return p.datasets["digits"], p.methods.trained[method], p.train


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_differs(small_digits: Records) -> None:
    ds, w, opts = _setup(epochs=2)
    a = train(small_digits, ds, w, opts, seed=0, progress=False)
    b = train(small_digits, ds, w, opts, seed=0, progress=False)
    c = train(small_digits, ds, w, opts, seed=1, progress=False)
    assert _same_state(a.model["encoder"], b.model["encoder"])
    assert not _same_state(a.model["encoder"], c.model["encoder"])
    assert [h["loss/total"] for h in a.history] == [h["loss/total"] for h in b.history]


def test_history_has_every_active_term(small_digits: Records) -> None:
    ds, w, opts = _setup(epochs=2, method="ce_ae")
    out = train(small_digits, ds, w, opts, seed=0, progress=False)
    assert [h["epoch"] for h in out.history] == [1, 2]
    h = out.history[-1]
    assert h["loss/total"] == pytest.approx(h["loss/ce"] + h["loss/recon"], rel=1e-6)  # float32 sums
    assert out.model["embed_dim"] == 128 and out.model["image_shape"] == [1, 8, 8]


def test_interrupted_run_resumes_to_identical_weights(small_digits: Records, tmp_path: Path) -> None:
    ds, w, opts = _setup(epochs=4)
    reference = train(small_digits, ds, w, opts, seed=0, progress=False)

    resume = tmp_path / "resume.pt"

    def crash_after_epoch_2(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        train(small_digits, ds, w, opts, seed=0, resume_path=resume, on_epoch=crash_after_epoch_2,
              progress=False)
    assert resume.exists()  # checkpoint_every = 1: epochs 1 is saved (2 raised before saving)
    seen: list[int] = []
    resumed = train(small_digits, ds, w, opts, seed=0, resume_path=resume,
                    on_epoch=lambda r: seen.append(int(r["epoch"])), progress=False)
    assert seen == [2, 3, 4]  # restarted after the last checkpoint, not from scratch
    assert _same_state(resumed.model["encoder"], reference.model["encoder"])
    assert [h["loss/total"] for h in resumed.history] == [h["loss/total"] for h in reference.history]


def test_resume_state_of_other_settings_is_ignored(small_digits: Records, tmp_path: Path) -> None:
    ds, w, opts = _setup(epochs=2)
    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train(small_digits, ds, w, opts, seed=0, resume_path=resume, progress=False,
              on_epoch=lambda r: (_ for _ in ()).throw(KeyboardInterrupt) if r["epoch"] == 2 else None)
    other = dataclasses.replace(opts, temperature=0.2)
    seen: list[int] = []
    train(small_digits, ds, w, other, seed=0, resume_path=resume, progress=False,
          on_epoch=lambda r: seen.append(int(r["epoch"])))
    assert seen == [1, 2]


def test_non_finite_loss_stops_with_epoch_step_and_term(small_digits: Records,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.training as training

    real = training.contrastive_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # third step of the first epoch (200 images / batch 64 = 3 steps)
            out["supcon"] = out["supcon"] * float("nan")
        return out

    monkeypatch.setattr(training, "contrastive_losses", poisoned)
    ds, w, opts = _setup(epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3: terms \{'supcon': nan\}"):
        train(small_digits, ds, w, opts, seed=0, progress=False)


def test_cosine_schedule_endpoints() -> None:
    assert cosine_with_warmup(0, 100, 0) == 1.0
    assert cosine_with_warmup(50, 100, 0) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 0) == pytest.approx(0.0)
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 100, 10) == 1.0
