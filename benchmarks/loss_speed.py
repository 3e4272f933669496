"""Speed and peak memory of the vectorised spread loss against the per-anchor loop oracle.

Times one forward + backward of ``spread_loss`` (SupCon + cNCE, alpha 0.5, tau 0.5, V = 2,
10 balanced-ish random classes) for each batch size B and embedding width d, on CUDA if
available else CPU, in float32 for both implementations. Each measurement runs in a fresh
subprocess so that the CPU peak (growth of the process's maximum resident set) is not hidden by an
earlier, larger run; on CUDA the peak is ``torch.cuda.max_memory_allocated`` above the inputs.
Prints a markdown table and the speed-up (oracle time / vectorised time).

    .venv/bin/python benchmarks/loss_speed.py                       # B 128 512 2048, d 128 256
    .venv/bin/python benchmarks/loss_speed.py --oracle-max-batch 2048  # oracle at B=2048 too (slow on CPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without install

from pipeline.losses import spread_loss  # noqa: E402
from pipeline.losses_reference import spread_loss_ref  # noqa: E402

N_CLASSES = 10
METHODS = {"vectorised": spread_loss, "oracle": spread_loss_ref}


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    method: str, batch: int, dim: int, device: torch.device, min_time_s: float, min_repeats: int, max_repeats: int
) -> dict:
    """One configuration, in this process: best seconds per forward+backward and peak bytes.

    The minimum over repeats, not the mean: on a shared machine other processes only add time.
    """
    loss_fn = METHODS[method]
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, 2, dim, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)

    def step() -> None:
        z.grad = None
        loss_fn(z, labels).backward()

    # Warm up on a tiny batch first, so one-off library initialisation is not counted as the
    # loss's memory; the first full-size step is then the memory measurement.
    tiny = torch.randn(4, 2, dim, device=device, requires_grad=True)
    loss_fn(tiny, labels[:4]).backward()

    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = _current_rss_bytes()
        step()
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 0)

    times: list[float] = []
    while len(times) < min_repeats or (len(times) < max_repeats and sum(times) < min_time_s):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "repeats": len(times), "peak_bytes": peak}


def _run_isolated(method: str, batch: int, dim: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", method, str(batch), str(dim), "--device", args.device,
           "--min-time", str(args.min_time), "--min-repeats", str(args.min_repeats),
           "--max-repeats", str(args.max_repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--oracle-max-batch", type=int, default=None,
                        help="skip the oracle above this B (default: 512 on CPU, no limit on CUDA)")
    parser.add_argument("--min-time", type=float, default=1.0, help="timing seconds per configuration")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: a fair match for the single-threaded oracle, "
                             "and stable on a shared machine)")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "B", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    if args.one:  # child process: one measurement, JSON on stdout
        method, batch, dim = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(measure(method, batch, dim, device, args.min_time, args.min_repeats, args.max_repeats)))
        return

    oracle_max = args.oracle_max_batch if args.oracle_max_batch is not None else (512 if device.type == "cpu" else 1 << 30)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    mem = "peak CUDA MiB" if device.type == "cuda" else "peak RSS growth MiB"
    print(f"spread_loss forward+backward, V=2, float32, {N_CLASSES} classes, device: {name}, torch {torch.__version__}\n")
    print(f"| B | d | vectorised ms | vectorised {mem} | oracle ms | oracle {mem} | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch_sizes:
        for dim in args.dims:
            vec = _run_isolated("vectorised", batch, dim, args)
            row = f"| {batch} | {dim} | {vec['seconds'] * 1e3:.2f} | {vec['peak_bytes'] / 2**20:.1f} |"
            if batch <= oracle_max:
                ora = _run_isolated("oracle", batch, dim, args)
                row += f" {ora['seconds'] * 1e3:.0f} | {ora['peak_bytes'] / 2**20:.1f} | {ora['seconds'] / vec['seconds']:.0f}x |"
            else:
                row += f" skipped (B > {oracle_max}) | - | - |"
            print(row, flush=True)
    print("\nms: best of the repeats after the measured first step; speed-up = oracle ms / vectorised ms.")


if __name__ == "__main__":
    main()
