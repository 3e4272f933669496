"""Argument parsing and error reporting shared by the thin ``stages/`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pipeline.config import Params, ParamsError, load_params


def stage_main(description: str, job: Callable[..., Any], *, per_run: bool = True,
               argv: list[str] | None = None) -> int:
    """Parse ``--params [--dataset --method --seed]``, validate params, run ``job``.

    A params error prints the key path and what is allowed, and exits 2 before any work.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_run:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--method", required=True)
        parser.add_argument("--seed", required=True, type=int)
    args = parser.parse_args(argv)
    try:
        params: Params = load_params(args.params)
        if per_run:
            job(params, args.dataset, args.method, args.seed)
        else:
            job(params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
