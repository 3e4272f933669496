"""DVC stage `evaluate`: see :func:`pipeline.jobs.evaluate.evaluate_job`."""

import sys

from pipeline.cli import stage_main
from pipeline.jobs.evaluate import evaluate_job

if __name__ == "__main__":
    sys.exit(stage_main(evaluate_job.__doc__ or "evaluate", evaluate_job))
