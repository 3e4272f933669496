"""Stage ``report``: every metrics file of the suite -> reports/."""

from __future__ import annotations

from pipeline import paths
from pipeline.config import Params


def report_job(params: Params) -> None:
    """Compile reports/ from every (dataset, method, seed) metrics file of the suite."""
    from pipeline.reports import write_report

    write_report(params, paths.REPORTS)
