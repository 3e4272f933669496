"""Expected wall-clock of the paper suite on 1, 4 and 8 GPUs: a schedule simulation from cost estimates.

    python benchmarks/paper_schedule.py [--tflops 100] [--gpus 1 4 8]

No GPU measured these numbers: each stage's cost is an estimate (below), and the stages are placed
on the GPUs as pipeline/parallel.py places them: a stage starts as soon as its upstream stages are
done and a worker is free (one stage per GPU at a time); among ready stages, the one with the
longest path to the end of the graph goes first (the simulation's choice; the runner takes them in
DVC's plan order, which this bounds from below). It prints the critical path (the
wall-clock no number of GPUs can beat), the total work and, per GPU count, the simulated
wall-clock and how busy the GPUs are.

Costs. Training: FLOP = training images x 2 views x epochs x GFLOP per view (forward + backward,
counted with torch.utils.flop_counter on the project's models: docs/paper_suite.md), plus the
autoencoder's decoder for methods with a reconstruction weight, at ``--tflops`` sustained. The
untrained baseline costs nothing. Embedding: one forward pass (a third of a training view) over
every image and two augmented views of the test split. Download + prepare, and the probes / group
DRO of an evaluate stage, are CPU work of a few minutes: fixed estimates per dataset.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.suites import PAPER  # noqa: E402

# Training images (after the validation split: val_fraction 0.1 of CIFAR / MNIST; the official
# Waterbirds and CelebA train splits), test images.
IMAGES = {"cifar10": (45_000, 10_000), "cifar100": (45_000, 10_000), "cifar100u": (8_550, 10_000),
          "mnist": (54_000, 10_000), "waterbirds": (4_795, 5_794), "celeba": (162_770, 19_962)}
# GFLOP per training view (forward + backward) of the encoder and of the decoder, by backbone.
GFLOP = {"vit": (1.5, 2.2), "resnet18": (2.7, 1.2), "resnet50": (24.3, 26.4)}
# CPU minutes: download + prepare, and one evaluate stage (probes; group DRO on worst-group data).
DOWNLOAD_MIN = {"cifar10": 2, "cifar100": 2, "cifar100u": 2, "mnist": 1, "waterbirds": 5, "celeba": 30}
EVALUATE_MIN = {"cifar10": 2, "cifar100": 3, "cifar100u": 2, "mnist": 2, "waterbirds": 3, "celeba": 8}
REPORT_MIN = 2.0


@dataclass
class Stage:
    name: str
    hours: float
    ups: list[str] = field(default_factory=list)


def paper_params() -> dict:
    """params.yaml with the paper suite's overrides applied (dotted keys, as `dvc exp run -S`)."""
    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for key, value in PAPER.overrides.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return params


def stages(params: dict, tflops: float) -> dict[str, Stage]:
    """The paper suite's stages with their estimated hours (the dvc.yaml grid, per dataset)."""
    out: dict[str, Stage] = {}
    suite, methods = params["suite"], params["methods"]

    def add(name: str, hours: float, ups: list[str]) -> None:
        out[name] = Stage(name, hours, ups)

    groups = [(d, [m for m in methods["trained"]], list(methods["concat"])) for d in suite["datasets"]]
    groups += [(d, list(suite["robustness"]["trained"]), list(suite["robustness"]["concat"]))
               for d in suite["robustness"]["datasets"]]
    for dataset, trained, concat in groups:
        recipe = params["datasets"][dataset]["recipe"]
        train_n, test_n = IMAGES[dataset]
        enc, dec = GFLOP[recipe["backbone"]]
        add(f"download@{dataset}", DOWNLOAD_MIN[dataset] / 60, [])
        embed_h = (train_n + 3 * test_n) * enc / 3 * 1e9 / (tflops * 1e12) / 3600
        for seed in suite["seeds"]:
            for m in trained:
                w = methods["trained"][m]
                per_view = 0.0 if not any(w.values()) else enc + (dec if w.get("recon", 0) else 0.0)
                hours = train_n * 2 * recipe["epochs"] * per_view * 1e9 / (tflops * 1e12) / 3600
                add(f"train@{dataset}-{m}-{seed}", hours, [f"download@{dataset}"])
                add(f"embed@{dataset}-{m}-{seed}", embed_h, [f"train@{dataset}-{m}-{seed}"])
                add(f"evaluate@{dataset}-{m}-{seed}", EVALUATE_MIN[dataset] / 60, [f"embed@{dataset}-{m}-{seed}"])
            for c in concat:
                parts = methods["concat"][c]
                add(f"embed_concat@{dataset}-{c}-{seed}", embed_h * len(parts),
                    [f"train@{dataset}-{p}-{seed}" for p in parts])
                add(f"evaluate_concat@{dataset}-{c}-{seed}", EVALUATE_MIN[dataset] / 60,
                    [f"embed_concat@{dataset}-{c}-{seed}"])
    add("report", REPORT_MIN / 60, [n for n in out if n.startswith("evaluate")])
    return out


def downstream(graph: dict[str, Stage]) -> dict[str, list[str]]:
    """For each stage, the stages that wait for it."""
    downs: dict[str, list[str]] = {n: [] for n in graph}
    for s in graph.values():
        for u in s.ups:
            downs[u].append(s.name)
    return downs


def tail_lengths(graph: dict[str, Stage]) -> dict[str, float]:
    """For each stage, the longest path (hours) from its start to the end of the graph."""
    downs = downstream(graph)
    memo: dict[str, float] = {}

    def tail(n: str) -> float:
        if n not in memo:
            memo[n] = graph[n].hours + max((tail(d) for d in downs[n]), default=0.0)
        return memo[n]

    return {n: tail(n) for n in graph}


def simulate(graph: dict[str, Stage], gpus: int) -> float:
    """Wall-clock hours of a list schedule on ``gpus`` workers (longest tail first)."""
    tails = tail_lengths(graph)
    waiting = {n: set(s.ups) for n, s in graph.items()}
    downs = downstream(graph)
    ready = [(-tails[n], n) for n, ups in waiting.items() if not ups]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, gpus
    while ready or running:
        while ready and free:
            _, n = heapq.heappop(ready)
            heapq.heappush(running, (now + graph[n].hours, n))
            free -= 1
        now, n = heapq.heappop(running)
        free += 1
        for d in downs[n]:
            waiting[d].discard(n)
            if not waiting[d]:
                heapq.heappush(ready, (-tails[d], d))
    return now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflops", type=float, default=100.0, help="sustained TFLOP/s per GPU (default 100)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    graph = stages(paper_params(), args.tflops)
    work = sum(s.hours for s in graph.values())
    critical = max(tail_lengths(graph).values())
    print(f"paper suite: {len(graph)} stages, {work:.1f} GPU-hours of work at {args.tflops:g} TFLOP/s "
          f"(CPU stages counted as if on a worker), critical path {critical:.2f} h")
    print("| GPUs | wall-clock (h) | GPUs busy | lower bound max(work / GPUs, critical path) |")
    print("| ---: | ---: | ---: | ---: |")
    for g in args.gpus:
        wall = simulate(graph, g)
        print(f"| {g} | {wall:.2f} | {work / (g * wall):.0%} | {max(work / g, critical):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
