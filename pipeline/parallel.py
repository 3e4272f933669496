"""Run the DVC pipeline's independent stages concurrently on a Dask cluster; DVC stays the record.

    python -m pipeline.parallel [TARGET ...] [--workers N] [--force] [--scheduler ADDRESS]

``dvc repro`` runs one stage at a time and holds the repository lock while it does, so two
``dvc repro`` processes cannot share a workspace. Here one process (this one) is DVC: it holds
the lock for the whole run, walks the same graph ``dvc repro`` would (same stages, same "changed?"
test, made once every upstream stage is done), removes a stage's outputs exactly as ``dvc repro``
does, and sends the stage's command to a Dask worker. When the command succeeds it records the
stage with DVC's own calls (``Stage.save``, ``Stage.commit``, ``Stage.dump``: what ``dvc repro``
calls after a command), one stage at a time. So dvc.lock gets, for every stage, the entry a serial
``dvc repro`` writes; a second run (or ``dvc repro``) finds nothing to do; a failed stage or a
killed worker leaves every finished stage recorded, and the next run does the rest.

Workers: a :class:`distributed.LocalCluster` of ``--workers`` processes (default: one per GPU, else
one per core), each running one stage at a time. On a CPU every stage process gets
``OMP_NUM_THREADS = cores // workers`` (set explicitly: workers x threads never exceed the cores);
on a GPU node each worker pins its stages to one GPU (``CUDA_VISIBLE_DEVICES``). ``--scheduler``
uses a Dask cluster that is already running instead (for example one that dask-jobqueue started on
a SLURM or PBS cluster: docs/paper_suite.md); its workers must see this workspace at the same path.

Floating-point sums on a CPU depend on the thread count: a stage run with 1 thread may write other
model bytes than one run with 2. The outputs equal a serial ``dvc repro`` run with the same
``OMP_NUM_THREADS`` byte for byte (tests/test_parallel.py), not one with another thread count.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_DIR = Path("logs/stages")  # one log per stage command (not a DVC output)
TIMINGS = LOG_DIR / "timings.json"  # the last run's per-stage status and seconds (not a DVC output)


@dataclass
class StageResult:
    """What happened to one stage: ``ran``, ``unchanged``, ``failed`` or ``skipped`` (an upstream
    stage failed); the command's wall-clock seconds and its log file."""

    stage: str
    status: str
    seconds: float = 0.0
    log: str = ""


@dataclass
class Summary:
    results: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.results if r.status in ("failed", "skipped")]


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi`` lists)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _die_with_parent() -> None:
    """In the stage's process, before exec: get SIGTERM when the worker that started it dies (Linux's
    PR_SET_PDEATHSIG), so that stopping the run (Ctrl-C, a killed worker) stops its stages too
    instead of leaving them running unrecorded. A no-op where prctl is missing."""
    import ctypes

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the worker ignores Ctrl-C (reproduce); a stage must not
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(argv: Sequence[str], cwd: str, env: dict[str, str], log: str, gpus: Sequence[str] = ()) -> tuple[int, float]:
    """Run one stage command on a worker: ``(return code, seconds)``; its output goes to ``log``.

    With ``gpus`` (a local GPU node), the worker numbered k runs its stages on ``gpus[k % len]``.
    The stage ends with its worker (:func:`_die_with_parent`).
    """
    env = dict(env)
    if gpus:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else 0
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None).returncode
    return code, time.perf_counter() - start


# A stage that ended by one of these signals was stopped, not broken: pipeline/cli.py turns them into
# exit 128 + signum; a stage killed before its handler ran reports -signum.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stopped_by_signal(code: int) -> bool:
    """Whether a stage's exit ``code`` says it was stopped by Ctrl-C, SIGTERM or SIGHUP."""
    return any(code in (128 + int(s), -int(s)) for s in _STOP_SIGNALS)


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _plan(repo: Any, targets: Sequence[str]) -> tuple[list[Any], Any]:
    """The stages ``dvc repro TARGETS`` would consider (dependencies first) and the active graph."""
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    graph = get_active_graph(repo.index.graph)
    stages = collect_stages(repo, list(targets)) if targets else list(graph)
    return plan_repro(graph, stages), graph


def _record(stage: Any) -> None:
    """What ``dvc repro`` does after a stage's command succeeded (``Stage.run`` + ``_reproduce_stage``)."""
    no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    stage.save(allow_missing=False, run_cache=not no_cache_outs)
    stage.commit(allow_missing=False)
    stage.dump(update_pipeline=False)


def _command(stage: Any, threads: int | None) -> tuple[list[str], str, dict[str, str]]:
    """The command line, working directory and environment DVC itself would run the stage with."""
    from dvc.stage.run import _make_cmd, get_executable, prepare_kwargs

    kwargs = prepare_kwargs(stage)
    env = dict(kwargs["env"])
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    argv = _make_cmd(get_executable(), stage.cmd)
    return (argv if isinstance(argv, list) else ["/bin/sh", "-c", argv]), str(kwargs["cwd"]), env


CLUSTERS = ("slurm", "pbs")  # dask-jobqueue's batch systems offered by --cluster


def batch_cluster(kind: str, config: str | Path | None = None) -> Any:
    """A dask-jobqueue cluster (no job submitted yet) of ``kind`` ("slurm" | "pbs"), set up from
    ``config`` (a jobqueue YAML file such as docs/cluster/jobqueue.yaml) or Dask's own config
    (``~/.config/dask/jobqueue.yaml``): cores, memory, queue, walltime, GPUs per job."""
    import dask.config
    import yaml

    if kind not in CLUSTERS:
        raise ValueError(f"cluster must be one of {', '.join(CLUSTERS)}; got {kind!r}")
    if config is not None:
        path = Path(config)
        try:
            settings = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the cluster config ({err})") from None
        dask.config.update(dask.config.config, settings, priority="new")
    from dask_jobqueue import PBSCluster, SLURMCluster

    return (SLURMCluster if kind == "slurm" else PBSCluster)(dashboard_address=None)


def reproduce(root: str | Path = ".", targets: Sequence[str] = (), *, workers: int | None = None,
              threads: int | None = None, force: bool = False, scheduler: str | None = None,
              cluster: Any | None = None, progress: bool = True,
              echo: Callable[[str], None] = print) -> Summary:
    """``dvc repro [--force] TARGETS`` with independent stages run concurrently (module docstring).

    ``threads``: the CPU threads of each stage process (default: cores // workers on local CPU
    workers; left to the environment on GPUs and on a ``scheduler``'s cluster). ``cluster``: a
    Dask cluster object to run on (:func:`batch_cluster`), scaled to ``workers`` jobs."""
    from distributed import Client, LocalCluster, wait
    from dvc.repo import Repo
    from tqdm import tqdm

    root = Path(root).resolve()
    remote = scheduler is not None or cluster is not None
    gpus = [] if remote else visible_gpus()
    workers = workers or (len(gpus) if gpus else (os.cpu_count() or 1))
    # On a CPU, the cores are shared by the workers: pin each stage's threads.
    if threads is None and not (gpus or remote):
        threads = max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    summary = Summary(workers=workers)
    if scheduler:
        cluster, client = None, Client(scheduler)
    elif cluster is not None:
        cluster.scale(jobs=workers)
        client = Client(cluster)
    else:
        # silence_logs: a Ctrl-C reaches the workers too, and Dask logs their lost heartbeats as
        # errors with tracebacks; what a stage did is in its log and its future's result.
        # The workers ignore SIGINT (inherited: Python keeps an ignored SIGINT ignored): on Ctrl-C this
        # process stops them, and their stages (which restore it) stop themselves.
        ignore = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.CRITICAL)
        finally:
            if ignore:
                signal.signal(signal.SIGINT, previous)
        client = Client(cluster)
    # How many stages run at once: one per local worker, or the threads of a running cluster.
    capacity = workers if scheduler is None else max(1, sum(client.nthreads().values()))
    repo = Repo(str(root))
    try:
        with repo.lock:
            steps, graph = _plan(repo, targets)
            planned = set(steps)
            upstream = {s: [u for u in graph.successors(s) if u in planned] for s in steps}
            pending = list(steps)  # dependencies first
            status: dict[Any, str] = {}
            running: dict[Any, Any] = {}
            bar = tqdm(total=len(steps), unit="stage", disable=not progress, dynamic_ncols=True)

            def finish(stage: Any, result: StageResult) -> None:
                status[stage] = result.status
                summary.results.append(result)
                bar.update(1)

            ready: list[Any] = []  # upstream all done, not yet checked: checked when a worker is free
            while True:
                for stage in list(pending):  # (plan order: dependencies first)
                    ups = [status.get(u) for u in upstream[stage]]
                    if any(u in ("failed", "skipped") for u in ups):
                        pending.remove(stage)
                        finish(stage, StageResult(stage.addressing, "skipped"))
                    elif all(u is not None for u in ups):
                        pending.remove(stage)
                        ready.append(stage)
                if ready and len(running) < capacity:
                    # "changed?" only now, one stage at a time: hashing its deps costs this process CPU
                    # time, which the workers would otherwise wait for when many stages become ready.
                    stage = ready.pop(0)
                    if not force and not stage.changed(False, upstream[stage]):
                        finish(stage, StageResult(stage.addressing, "unchanged"))
                        continue
                    stage.remove_outs(ignore_remove=False, force=False)
                    argv, cwd, env = _command(stage, threads)
                    log = str(root / LOG_DIR / f"{stage.addressing.replace('/', '_')}.log")
                    future = client.submit(execute, argv, cwd, env, log, gpus, pure=False,
                                           key=f"stage-{stage.addressing}-{time.time_ns()}")
                    running[future] = (stage, log)
                    continue
                if not running:
                    break
                bar.set_postfix_str("running: " + ", ".join(s.addressing for s, _ in running.values()), refresh=True)
                done, _ = wait(list(running), return_when="FIRST_COMPLETED")
                for future in done:
                    stage, log = running.pop(future)
                    try:
                        code, seconds = future.result()
                    except Exception as err:  # the worker died (killed, out of memory)
                        code, seconds = None, 0.0
                        Path(log).parent.mkdir(parents=True, exist_ok=True)
                        with open(log, "a") as out:
                            out.write(f"\nworker lost: {type(err).__name__}: {err}\n")
                    if code == 0:
                        _record(stage)
                        finish(stage, StageResult(stage.addressing, "ran", seconds, log))
                    elif code is not None and stopped_by_signal(code):
                        # Ctrl-C reaches the stages too (one process group), and a stage may report
                        # it before this process's own KeyboardInterrupt is raised: either way the
                        # run was interrupted, not failed (the finally stops the other stages).
                        raise KeyboardInterrupt
                    else:
                        why = "its worker was lost" if code is None else f"exit {code}"
                        bar.write(f"stage {stage.addressing!r} failed ({why}); log {log}:\n{_tail(log)}")
                        finish(stage, StageResult(stage.addressing, "failed", seconds, log))
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        repo.close()
    summary.seconds = time.perf_counter() - started
    write_timings(summary, root / TIMINGS)
    echo(timing_table(summary))
    return summary


def write_timings(summary: Summary, path: Path) -> None:
    """Every stage's status and command seconds, and the run's totals, as JSON (atomically)."""
    from pipeline.io import write_json

    write_json(path, {"workers": summary.workers, "seconds": round(summary.seconds, 3),
                      "stages": [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3)}
                                 for r in summary.results]})


def timing_table(summary: Summary, top: int = 15) -> str:
    """The stages that ran, slowest first (at most ``top``), and the totals."""
    ran = sorted((r for r in summary.results if r.status in ("ran", "failed")), key=lambda r: -r.seconds)
    counts: dict[str, int] = {}
    for r in summary.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    width = max([len(r.stage) for r in ran[:top]] + [5])
    lines = [f"{'stage':<{width}}  seconds  status"]
    lines += [f"{r.stage:<{width}}  {r.seconds:7.1f}  {r.status}" for r in ran[:top]]
    if len(ran) > top:
        lines.append(f"... and {len(ran) - top} more ({sum(r.seconds for r in ran[top:]):.1f} s)")
    busy = sum(r.seconds for r in ran)
    lines.append(f"{', '.join(f'{n} {s}' for s, n in counts.items()) or 'no stages'}; "
                 f"{summary.seconds:.1f} s wall-clock on {summary.workers} worker(s), "
                 f"{busy:.1f} s of stage commands")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.parallel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages or dvc.yaml files (default: the whole pipeline)")
    parser.add_argument("-j", "--workers", type=int, default=None,
                        help="worker processes (default: one per GPU, else one per CPU core)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per stage process (default: cores // workers on a CPU)")
    parser.add_argument("-f", "--force", action="store_true", help="rerun every stage, as dvc repro --force does")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (a cluster) instead of local workers")
    where.add_argument("--cluster", choices=CLUSTERS,
                       help="submit --workers batch jobs of Dask workers with dask-jobqueue (SLURM or PBS)")
    parser.add_argument("--cluster-config", help="a dask-jobqueue YAML file (default: Dask's config, "
                                                 "~/.config/dask/jobqueue.yaml); example: docs/cluster/jobqueue.yaml")
    parser.add_argument("--print-job-script", action="store_true",
                        help="with --cluster: print the batch script each job would run, submit nothing")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    cluster = None
    if args.cluster:
        try:
            cluster = batch_cluster(args.cluster, args.cluster_config)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.print_job_script:
            print(cluster.job_script())
            cluster.close()
            return 0
    elif args.print_job_script:
        parser.error("--print-job-script needs --cluster")
    try:
        summary = reproduce(".", args.targets, workers=args.workers, threads=args.threads, force=args.force,
                            scheduler=args.scheduler, cluster=cluster,
                            progress=sys.stderr.isatty())
    except KeyboardInterrupt:  # Ctrl-C: the workers and their stages are stopped (finally, PDEATHSIG)
        print("interrupted: the stages that finished are recorded in dvc.lock; rerun to do the rest",
              file=sys.stderr)
        return 130
    if summary.failed:
        names = ", ".join(r.stage for r in summary.failed if r.status == "failed")
        print(f"error: failed: {names}; the stages that finished are recorded in dvc.lock, rerun to do the rest",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
