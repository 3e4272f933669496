"""Log finished runs to MLflow from the stage outputs: see :mod:`pipeline.relog`.

    python -m stages.log_runs [--dataset D] [--method M] [--seed S] [--dry-run]

Logs to ``MLFLOW_TRACKING_URI`` (default: ``mlflow.db`` at the repository root). Runs already in
the store (same stage, dataset, method, seed and output md5) are skipped, so it is safe to rerun.
Exit 0 when done, 1 if the tracking store fails, 2 on a params error or an unknown name.
"""

import argparse
import sys

from pipeline.config import ParamsError
from pipeline.relog import RelogResult, relog_runs
from pipeline.tracking import TrackingError, tracking_uri


def _show(result: RelogResult) -> None:
    print(f"{result.status:>9}  {result.stage}" + (f"  ({result.detail})" if result.detail else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: the suite's)")
    parser.add_argument("--method", action="append", help="only this method (repeatable; default: all)")
    parser.add_argument("--seed", action="append", type=int, help="only this seed (repeatable; default: the suite's)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be logged, log nothing")
    args = parser.parse_args(argv)
    print(f"tracking store: {tracking_uri()}", flush=True)
    try:
        results = relog_runs(args.params, datasets=args.dataset, methods=args.method, seeds=args.seed,
                             dry_run=args.dry_run, echo=_show)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    print(", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
