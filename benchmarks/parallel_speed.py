"""Serial `dvc repro` against `python -m pipeline.parallel` on copies of one project; prints figures.

    python benchmarks/parallel_speed.py [--tiny] [--workers N]

Each run starts from scratch in its own copy of the repository's code and params (outputs, lock,
store and cache left behind), so the two runs do the same work; `--tiny` shrinks training to one
epoch and two methods (9 stages) for a quick look. Both runs use the same CPU threads per stage
(cores // workers), which makes their outputs byte-identical; the script checks that too.
Measure on a quiet machine: a second heavy job on the same cores distorts both numbers.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE = ["pipeline", "stages", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def shrink_to_tiny(project: Path) -> None:
    """Rewrite ``project``'s params.yaml: 1 epoch, supcon and ce_ae, seed 0, digits only (9 stages)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    small = copy.deepcopy(params)
    small["suite"]["seeds"] = [0]
    small["suite"]["robustness"].update(datasets=[], trained=[], concat=[])
    small["methods"]["trained"] = {m: w for m, w in params["methods"]["trained"].items() if m in ("supcon", "ce_ae")}
    small["methods"]["concat"] = {}
    small["datasets"]["digits"]["recipe"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(small, sort_keys=False))


def _copy(dest: Path, tiny: bool, rev: str | None = None) -> Path:
    """The project files (of the working tree, or of git revision ``rev``) in a fresh git
    repository at ``dest``; with ``tiny``, :func:`shrink_to_tiny` params."""
    if rev is None:
        for name in CODE:
            src, dst = ROOT / name, dest / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, *CODE], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    if tiny:
        shrink_to_tiny(dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def _timed(cmd: list[str], cwd: Path, threads: int) -> float:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}", OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def _outputs(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for top in ("artifacts", "reports", "data/prepared")
            for f in sorted((root / top).rglob("*")) if f.is_file() and f.name != ".gitignore"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="1 epoch, 2 methods, 1 seed, digits only (9 stages)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with tempfile.TemporaryDirectory(prefix="parallel-speed-") as tmp:
        serial, parallel = (_copy(Path(tmp) / name, args.tiny) for name in ("serial", "parallel"))
        t_serial = _timed([sys.executable, "-m", "dvc", "repro"], serial, threads)
        t_parallel = _timed([sys.executable, "-m", "pipeline.parallel", "--workers", str(args.workers),
                             "--threads", str(threads)], parallel, threads)
        a, b = _outputs(serial), _outputs(parallel)
        same = sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
    print(f"cores {os.cpu_count()}, workers {args.workers}, threads per stage {threads}, "
          f"{'tiny' if args.tiny else 'full'} project")
    print(f"serial dvc repro:   {t_serial:7.1f} s")
    print(f"pipeline.parallel:  {t_parallel:7.1f} s   (x{t_serial / t_parallel:.2f})")
    print(f"outputs byte-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
