"""DVC stage `train`: see :func:`pipeline.jobs.train.train_job`."""

import sys

from pipeline.cli import stage_main
from pipeline.jobs.train import train_job

if __name__ == "__main__":
    sys.exit(stage_main(train_job.__doc__ or "train", train_job))
