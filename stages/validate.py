"""DVC stage `validate`: see :func:`pipeline.jobs.validate.validate_job`."""

import sys

from pipeline.cli import stage_main
from pipeline.jobs.validate import validate_job

if __name__ == "__main__":
    sys.exit(stage_main(validate_job.__doc__ or "validate", validate_job, per_run=False))
