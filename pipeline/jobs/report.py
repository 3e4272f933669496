"""Stage ``report``: every metrics file of the suite -> reports/, and a ``report`` run in MLflow."""

from __future__ import annotations

from pipeline import paths
from pipeline.config import Params


def report_job(params: Params) -> None:
    """Compile reports/ from every (dataset, method, seed) metrics file of the suite; log each
    dataset's summary (reports/summary.json) and reports/ as a ``report`` run of its experiment."""
    from pipeline.reports import write_report

    write_report(params, paths.REPORTS)
    log_report_runs(params)


def log_report_runs(params: Params, *, tags: dict[str, str] | None = None, strict: bool = False) -> None:
    """One MLflow ``report`` run per dataset of the suite, from reports/ as the report stage wrote it."""
    from pipeline.io import read_json
    from pipeline.reports import headline_of
    from pipeline.tracking import log_report

    summary_file = paths.REPORTS / "summary.json"
    summary = read_json(summary_file)
    for dataset in params.suite_datasets:
        log_report(dataset, summary.get(dataset, {}), [paths.REPORTS / name for name in paths.REPORT_ARTIFACTS],
                   summary_file=summary_file, headline=headline_of(params, dataset), tags=tags, strict=strict)
