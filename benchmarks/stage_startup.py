"""Per-stage cost of the tiny pipeline under two code versions: what start-up work each stage pays.

    python benchmarks/stage_startup.py --before REV [--after REV]

Each version (a git revision, or the working tree when ``--after`` is left out) runs the tiny
project of benchmarks/parallel_speed.py (1 epoch, supcon and ce_ae, seed 0, digits: 9 stages) from
scratch with ``python -m pipeline.parallel --workers 1 --threads 1``: one stage at a time, so each
stage's seconds (its command's wall-clock, logs/stages/timings.json) are not shared with another.
On tiny data a stage's time is mostly its process start-up (imports, the MLflow store), so the
difference between the versions is the start-up they removed or added. Prints a table per stage.
Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parallel_speed import _copy, _timed  # noqa: E402


def stage_seconds(project: Path) -> tuple[dict[str, float], float]:
    """Run the project's pipeline one stage at a time: ({stage: command seconds}, wall-clock)."""
    wall = _timed([sys.executable, "-m", "pipeline.parallel", "--workers", "1", "--threads", "1"], project, threads=1)
    timings = json.loads((project / "logs/stages/timings.json").read_text())
    return {t["stage"]: t["seconds"] for t in timings["stages"] if t["status"] == "ran"}, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the code before")
    parser.add_argument("--after", help="git revision of the code after (default: the working tree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stage-startup-") as tmp:
        before = _copy(Path(tmp) / "before", tiny=True, rev=args.before)
        after = _copy(Path(tmp) / "after", tiny=True, rev=args.after)
        (b, b_wall), (a, a_wall) = stage_seconds(before), stage_seconds(after)
    width = max(len(s) for s in b)
    print(f"tiny project, one stage at a time, 1 thread; before {args.before}, after {args.after or 'working tree'}")
    print(f"{'stage':<{width}}  before s  after s  change")
    for stage in b:
        print(f"{stage:<{width}}  {b[stage]:8.1f}  {a.get(stage, float('nan')):7.1f}  {a.get(stage, 0) - b[stage]:+6.1f}")
    print(f"{'all stages':<{width}}  {sum(b.values()):8.1f}  {sum(a.values()):7.1f}  {sum(a.values()) - sum(b.values()):+6.1f}")
    print(f"{'wall-clock':<{width}}  {b_wall:8.1f}  {a_wall:7.1f}  {a_wall - b_wall:+6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
