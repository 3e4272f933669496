"""Training with DistributedDataParallel on 2 CPU (gloo) processes.

Two ranks each train on their half of every global batch. With the encoder's and decoder's
BatchNorm swapped for GroupNorm (no batch statistics, so nothing legitimately differs between
one process with B images and two with B / 2), the loss of every step, the first one included
(computed before any optimiser step), must equal the one-process loss, and the weights must
stay equal up to float rounding. One case gives the ranks unequal shares (31 + 32 of 63).

With the real BatchNorm backbone the two ranks normalise with their own half-batch statistics,
so the run differs from one process by design; there the test checks what DDP must still
guarantee: both ranks see the same whole-batch loss values and end with identical weights.

Finally the train stage itself runs under ``torchrun --standalone --nproc_per_node 2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import free_port, prepare_in, tiny_params
from pipeline import distributed, paths
from pipeline.config import validate
from pipeline.data.digits import load_digits
from pipeline.data.records import Records, Split

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

WORLD = 2
# name: (method, training images = one global batch per epoch, BatchNorm kept?)
CASES = {
    "supcon": ("supcon", 64, False),            # equal shares, 32 + 32
    "ce_ae_unequal": ("ce_ae", 63, False),      # unequal shares, 31 + 32; ce and recon row means
    "supcon_cnce_bn": ("supcon_cnce", 64, True),  # the real small CNN: per-rank BatchNorm
}
EPOCHS = 3


def _records(n: int) -> Records:
    """The first ``n`` training digits, so that one epoch is one step (batch 64 or n)."""
    r = load_digits()
    tr = r.splits["train"]
    train_split = Split(tr.images[:n], {k: v[:n] for k, v in tr.labels.items()})
    return dataclasses.replace(r, splits={**r.splits, "train": train_split})


def _setup(method: str, n: int):
    raw = tiny_params(epochs=EPOCHS)
    raw["datasets"]["digits"]["recipe"]["batch_size"] = n
    p = validate(raw)
    return p.datasets["digits"], p.methods.trained[method], p.train


def _batchnorm_to_groupnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a one-group GroupNorm: per-sample statistics only."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            _batchnorm_to_groupnorm(child)
    return module


def _train(case: str):
    """train() for one case, in whatever process group is current."""
    import pipeline.models as models
    import pipeline.training as training

    method, n, keep_bn = CASES[case]
    build_encoder, build_decoder = models.build_encoder, models.build_decoder
    if not keep_bn:
        training.build_encoder = lambda *a: _batchnorm_to_groupnorm(build_encoder(*a))
        training.build_decoder = lambda *a: _batchnorm_to_groupnorm(build_decoder(*a))
    try:
        ds, w, opts = _setup(method, n)
        return training.train(_records(n), ds, w, opts, seed=3, progress=False)
    finally:
        training.build_encoder, training.build_decoder = build_encoder, build_decoder


def _regression_data() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 3, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    return x, y, nn.Linear(5, 3).double()


def _mean_over_ranks_check(rank: int) -> dict:
    """Per-row MSE on unequal shares (3 + 4 rows) through DDP + mean_over_ranks (float64)."""
    from torch.nn.parallel import DistributedDataParallel

    x, y, model = _regression_data()
    lo, hi = (0, 3) if rank == 0 else (3, 7)
    ddp = DistributedDataParallel(model)
    local = ((ddp(x[lo:hi]) - y[lo:hi]) ** 2).mean(dim=1)  # (n_local,) per-row losses
    loss = distributed.mean_over_ranks(local.mean()[None], hi - lo)[0]
    loss.backward()
    return {"loss": loss.detach(), "grads": [p.grad.clone() for p in model.parameters()]}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {"mean_over_ranks": _mean_over_ranks_check(rank)}
        for case in CASES:
            out = _train(case)
            results[case] = {"history": out.history, "encoder": out.model["encoder"]}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_train")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict:
    assert not distributed.is_distributed()
    return {case: _train(case) for case in CASES if not CASES[case][2]}


def _losses(history: list[dict]) -> list[float]:
    return [h["loss/total"] for h in history]


def test_mean_over_ranks_gives_the_whole_batch_value_and_gradient(ranks: list[dict]) -> None:
    x, y, model = _regression_data()
    loss = ((model(x) - y) ** 2).mean(dim=1).mean()  # one process, all 7 rows
    loss.backward()
    for res in ranks:
        got = res["mean_over_ranks"]
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=0)
        for g, p in zip(got["grads"], model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-14)
    assert distributed.mean_over_ranks(loss.detach()[None], 7)[0] == loss  # no group: unchanged


@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c][2]])
def test_two_ranks_equal_one_process_without_batch_statistics(ranks: list[dict], single: dict,
                                                               case: str) -> None:
    one = single[case]
    for res in ranks:
        two = res[case]
        # Step 1: same weights, same views, loss evaluated before any update.
        assert _losses(two["history"])[0] == pytest.approx(_losses(one.history)[0], rel=1e-6, abs=0)
        for t in ("ce", "supcon", "recon"):
            if f"loss/{t}" in one.history[0]:
                assert two["history"][0][f"loss/{t}"] == pytest.approx(one.history[0][f"loss/{t}"], rel=1e-6)
        # Later steps: the DDP update equals the whole-batch update, up to float summation order.
        np.testing.assert_allclose(_losses(two["history"]), _losses(one.history), rtol=1e-5)
        # Weights: AdamW divides each gradient by its running RMS, so a weight whose gradient is
        # little more than rounding noise moves by a noisy fraction of lr (3e-3). Allow a few
        # percent of one step on single elements, and demand near-equality on average.
        assert two["encoder"].keys() == one.model["encoder"].keys()
        for k, v in one.model["encoder"].items():
            diff = (two["encoder"][k] - v).abs()
            assert diff.max() < 2e-4 and diff.mean() < 1e-6, (k, float(diff.max()), float(diff.mean()))


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_agree_on_loss_values_and_weights(ranks: list[dict], case: str) -> None:
    """Every rank computes the whole-batch loss; DDP keeps the parameters identical across ranks.

    BatchNorm running statistics are excluded: each rank updates its own from its own rows.
    """
    a, b = ranks[0][case], ranks[1][case]
    assert [h["epoch"] for h in a["history"]] == list(range(1, EPOCHS + 1))
    assert _losses(a["history"]) == _losses(b["history"])
    params = [k for k in a["encoder"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert params
    for k in params:
        assert torch.equal(a["encoder"][k], b["encoder"][k]), k


def test_rank_rng_differs_per_rank_and_step_and_leaves_the_shared_stream() -> None:
    """Model randomness (dropout) is per rank and step; the shared (augmentation) stream is untouched."""
    from pipeline.training import _rank_rng

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    draws = {}
    for rank in (0, 1):
        for step in (0, 1):
            with _rank_rng(seed=3, rank=rank, step=step, device=cpu):
                draws[rank, step] = torch.rand(8)
    after = torch.rand(8)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(8))  # as if the blocks had not run
    assert len({tuple(d.tolist()) for d in draws.values()}) == 4
    with _rank_rng(seed=3, rank=1, step=1, device=cpu):
        assert torch.equal(torch.rand(8), draws[1, 1])  # reproducible, so a resumed run replays it


def test_process_group_is_a_no_op_without_torchrun_and_names_bad_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with distributed.process_group("cpu"):
        assert not distributed.is_distributed() and distributed.launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RuntimeError, match="WORLD_SIZE='two': expected a positive integer"):
        distributed.launched_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but RANK is not set"):
        with distributed.process_group("cpu"):
            pass
    assert not distributed.is_distributed()


def test_train_stage_under_torchrun(tmp_path: Path) -> None:
    """`torchrun --standalone --nproc_per_node 2 -m stages.train`: rank 0 alone writes and logs."""
    import mlflow

    params_file = prepare_in(tmp_path, tiny_params(epochs=2, methods=("supcon",)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD), "-m", "stages.train",
           "--params", str(params_file), "--dataset", "digits", "--method", "supcon", "--seed", "0"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    model = torch.load(tmp_path / paths.model_path("digits", "supcon", 0), weights_only=True)
    assert model["method"] == "supcon" and model["encoder"]
    history = json.loads((tmp_path / paths.history_path("digits", "supcon", 0)).read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert not (tmp_path / paths.resume_path("digits", "supcon", 0)).exists()
    assert not list((tmp_path / "artifacts").rglob("*.tmp"))
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1  # rank 1 logged nothing
    assert runs.loc[0, "params.world_size"] == str(WORLD)
    assert runs.loc[0, "status"] == "FINISHED"
