"""DVC stage `report`: see :func:`pipeline.jobs.report.report_job`."""

import sys

from pipeline.cli import stage_main
from pipeline.jobs.report import report_job

if __name__ == "__main__":
    sys.exit(stage_main(report_job.__doc__ or "report", report_job, per_run=False))
