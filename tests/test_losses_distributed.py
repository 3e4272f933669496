"""gather=True on 2 CPU processes + DDP equals one process holding the whole batch.

Two ranks (gloo, 127.0.0.1) each embed their share of the batch with a small float64 linear
model wrapped in DistributedDataParallel, compute the loss with ``gather=True`` and backprop.
The loss value on every rank and the (DDP-averaged) parameter gradients must equal those of
a single process computing the loss on the concatenated batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import free_port

from pipeline import distributed
from pipeline import losses as L

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

WORLD = 2
N_TOTAL, N_VIEWS, D_IN, D_OUT = 8, 2, 6, 4
SPLITS = [(4, 4), (3, 5)]  # rows per rank: equal shares and unequal ones
CASES = [
    ("supcon", {}),
    ("supcon", {"pos_in_denom": True, "symmetric": True}),
    ("cnce", {}),
    ("simclr", {"symmetric": True}),
    ("spread", {}),
    ("spread", {"reference_compat": True}),
    ("all", {"symmetric": True}),
]


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TOTAL, N_VIEWS, D_IN, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 2, 0, 1, 3, 0])  # spans both ranks; class 2 and 3 singletons
    torch.manual_seed(1)
    model = torch.nn.Linear(D_IN, D_OUT).double()
    return x, y, model


def _loss(name: str, z: torch.Tensor, y: torch.Tensor, gather: bool, kw: dict) -> torch.Tensor:
    if name == "supcon":
        return L.supcon_loss(z, y, 0.4, gather=gather, **kw)
    if name == "cnce":
        return L.cnce_loss(z, y, 0.4, gather=gather, **kw)
    if name == "simclr":
        return L.simclr_loss(z, 0.4, gather=gather, **kw)
    if name == "spread":
        return L.spread_loss(z, y, 0.3, 0.4, gather=gather, **kw)
    out = L.contrastive_losses(z, y, L.TERMS, 0.4, gather=gather, **kw)
    return out["supcon"] + 2 * out["cnce"] + 3 * out["simclr"]  # loss weights, as in training


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, y, model = _data()
        ddp = DistributedDataParallel(model)
        results = {"rank": distributed.rank(), "world": distributed.world_size(), "runs": []}
        for split in SPLITS:
            lo = sum(split[:rank])
            x_own, y_own = x[lo : lo + split[rank]], y[lo : lo + split[rank]]

            # gather_with_grad alone: rank order, offset, and the summed backward.
            z_own = x_own[:, 0, :].clone().requires_grad_(True)
            z_all, y_all, offset = distributed.gather_with_grad(z_own, y_own)
            weights = torch.arange(z_all.numel(), dtype=z_all.dtype).reshape(z_all.shape)
            (z_all * weights).sum().backward()
            results["runs"].append(("gather", split, z_all.detach(), y_all, offset, z_own.grad))

            for name, kw in CASES:
                ddp.zero_grad()
                loss = _loss(name, ddp(x_own), y_own, True, kw)
                loss.backward()
                grads = [p.grad.clone() for p in model.parameters()]
                results["runs"].append((name, split, kw, loss.detach(), grads))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_ranks_report_rank_and_world(rank_results):
    assert [(r["rank"], r["world"]) for r in rank_results] == [(0, 2), (1, 2)]
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1


def test_gather_with_grad_concatenates_in_rank_order_and_sums_gradients(rank_results):
    x, y, _ = _data()
    for r, res in enumerate(rank_results):
        for run in (run for run in res["runs"] if run[0] == "gather"):
            _, split, z_all, y_all, offset, grad = run
            assert offset == sum(split[:r])
            torch.testing.assert_close(z_all, x[:, 0, :], rtol=0, atol=0)
            assert torch.equal(y_all, y)
            # Every rank weighted z_all by the same weights: the own rows get WORLD times them.
            weights = torch.arange(z_all.numel(), dtype=z_all.dtype).reshape(z_all.shape)
            torch.testing.assert_close(grad, WORLD * weights[offset : offset + split[r]], rtol=0, atol=0)


def test_ddp_loss_and_gradients_equal_single_process_full_batch(rank_results):
    x, y, model = _data()
    checked = 0
    for res in rank_results:
        for run in (run for run in res["runs"] if run[0] != "gather"):
            name, split, kw, loss, grads = run
            model.zero_grad()
            want = _loss(name, model(x), y, False, kw)
            want.backward()
            torch.testing.assert_close(loss, want.detach(), rtol=0, atol=1e-12, msg=f"{name} {kw} {split} loss")
            for got_g, p in zip(grads, model.parameters()):
                torch.testing.assert_close(got_g, p.grad, rtol=0, atol=1e-12, msg=f"{name} {kw} {split} grad")
            checked += 1
    assert checked == WORLD * len(SPLITS) * len(CASES)

