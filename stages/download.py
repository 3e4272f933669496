"""DVC stage `download`: see :func:`pipeline.jobs.download.download_job`.

    python -m stages.download --dataset cifar10 [--no-download] [--timeout 30]

Raw files go to ``data.raw_root`` (params.yaml); files placed there by hand in the layout of
docs/datasets.md are verified and used without a download.
"""

import argparse
import sys

from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.jobs.download import download_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--no-download", action="store_true", help="only use files already under data.raw_root")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a silent connection fails")
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP clean up like Ctrl-C: no half-written cache; a failed download is one line.
    return run_stage(f"download@{args.dataset}", lambda: download_job(
        load_params(args.params), args.dataset, download=not args.no_download, timeout=args.timeout))


if __name__ == "__main__":
    sys.exit(main())
