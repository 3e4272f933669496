"""Run a named suite as a DVC experiment: see :mod:`pipeline.suites`.

    python -m stages.suite paper [--smoke] [--dry-run] [-S KEY=VALUE ...]
    python -m stages.suite paper --parallel [--workers N] [--dry-run] [-S KEY=VALUE ...]

``make paper`` and ``make paper SMOKE=1`` call this. It runs ``dvc exp run`` with the suite's
``-S`` overrides (``--dry-run`` only prints the command); extra ``-S`` overrides go last and win,
e.g. ``-S datasets.cifar10.recipe.epochs=600``. With ``--parallel`` (what ``make paper`` uses)
it applies the same overrides to params.yaml with DVC's own code (as ``dvc exp run`` does to the
workspace), then runs the stages on every GPU of the machine with ``python -m pipeline.parallel``
(one worker per GPU; ``--workers N``): dvc.lock records every stage, not an experiment ref.

The real suite runs in the workspace: params.yaml keeps the suite's settings afterwards
(``git checkout params.yaml`` returns to the default suite). The smoke mode runs in a temporary
copy (``dvc exp run --temp``) and leaves the workspace as it was; ``dvc exp show`` lists it and
``dvc exp apply NAME`` brings its reports into the workspace.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAMLError

from pipeline.config import read_yaml
from pipeline.suites import SUITES, exp_run_argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES), help="the suite to run")
    parser.add_argument("--smoke", action="store_true",
                        help="wiring check on tiny fabricated data: one seed, CPU, minutes, no download")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    parser.add_argument("-S", "--set-param", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more params.yaml override for dvc exp run (Hydra syntax), applied last")
    parser.add_argument("--params", default="params.yaml", help="the params file whose methods the smoke trims")
    parser.add_argument("--parallel", action="store_true",
                        help="apply the overrides to params.yaml, then run the stages concurrently on every GPU "
                             "(python -m pipeline.parallel) instead of one dvc exp run")
    parser.add_argument("--workers", type=int, help="with --parallel: worker processes (default: one per GPU)")
    args = parser.parse_args(argv)
    if args.parallel and args.smoke:
        parser.error("--parallel runs in the workspace; the smoke mode runs in a temporary copy: choose one")
    if args.workers is not None and not args.parallel:
        parser.error("--workers needs --parallel")
    if args.parallel:
        return _parallel(args)
    try:
        methods = (read_yaml(args.params) or {}).get("methods") if args.smoke else None
        command = exp_run_argv(args.suite, smoke=args.smoke, extra=args.extra, methods=methods)
    except (OSError, YAMLError, ValueError) as err:
        print(f"error: {args.params}: {err}", file=sys.stderr)
        return 2
    suite = SUITES[args.suite]
    if args.smoke:
        print(f"{suite.name} suite, smoke mode: every stage group on tiny fabricated data, seed 0, methods "
              f"{', '.join(suite.smoke_methods) or 'all'}, on the CPU, in a temporary copy of the project")
    else:
        print(f"{suite.name} suite: {suite.description}")
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    # dvc.yaml's commands call `python`: make it this interpreter, whatever PATH the caller has.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    process = subprocess.Popen([sys.executable, "-m", *command], env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # DVC got the same Ctrl-C: let it stop its stage and clean up
        code = process.wait()
    if code == 0 and args.smoke:
        print("smoke run passed; it ran in a temporary copy, the workspace is unchanged "
              "(`dvc exp show` lists it, `dvc exp apply NAME` brings its reports here)")
    elif code == 0:
        print("params.yaml now holds this suite's settings (`dvc exp show` lists the experiment; "
              "`git checkout params.yaml` returns to the default suite)")
    return code


def _parallel(args: argparse.Namespace) -> int:
    """The suite's overrides applied to params.yaml, then ``python -m pipeline.parallel``."""
    from dvc.utils.hydra import apply_overrides

    from pipeline.suites import overrides

    suite = SUITES[args.suite]
    settings = overrides(suite, extra=args.extra)
    runner = ["pipeline.parallel", *(["--workers", str(args.workers)] if args.workers else [])]
    print(f"{suite.name} suite: {suite.description}")
    print(f"applies to {args.params}: " + " ".join(shlex.quote(o) for o in settings))
    print(shlex.join(["python", "-m", *runner]), flush=True)
    if args.dry_run:
        return 0
    try:
        apply_overrides(args.params, settings)
    except Exception as err:  # a missing file, or an override DVC's Hydra parser refuses
        print(f"error: {args.params}: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    code = subprocess.call([sys.executable, "-m", *runner], env=env)
    if code == 0:
        print(f"{args.params} now holds this suite's settings (`git checkout {args.params}` returns to the "
              "default suite); dvc.lock and reports/ hold its results")
    return code


if __name__ == "__main__":
    sys.exit(main())
