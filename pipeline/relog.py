"""Log finished runs to MLflow afterwards, from the DVC stage outputs alone.

For when the tracking store was down (or a stage ran with another ``MLFLOW_TRACKING_URI``):
every (dataset, method, seed) whose outputs exist is logged as its stages would have logged it,
in the current store (:func:`pipeline.tracking.tracking_uri`), in the same layout (one run per
model, :mod:`pipeline.tracking`):

* ``train@D-M-S`` creates the model run: params as the train stage logs them (from params.yaml),
  the per-epoch losses, lr from ``history/M.json`` (step = epoch), seconds and images/s per epoch
  from the timing log ``logs/D/seedS/train/M.json`` where it exists (it is no DVC output), the
  ``final/`` losses, the loss curve;
* ``evaluate@D-M-S`` logs every number of ``metrics/M.json`` into that run, found by the model
  file's md5 exactly as the live stage finds it (``evaluate_concat@...``: a run of its own);
* ``report``: one ``report`` run per dataset from reports/summary.json and the report's files.

Each run carries the stage's tags (dataset, method, seed, dvc_stage, git_commit: the commit
checked out now) plus the md5 of its outputs (``model_md5``, ``metrics_md5``, ``summary_md5``: as
in ``dvc.lock``) and ``relogged=true``. A result is skipped as *present* when the store already
holds a run of the same dataset, method and seed with the same md5 tag: the same result, whether
it was logged live or re-logged before, and whatever commit was checked out then. It is skipped as
*stale* when ``dvc.lock`` says the output was made with other params than params.yaml has now, or
records another hash for it (run ``dvc repro`` first); as *missing* when the output does not exist.
The pictures of the embeddings that a live evaluate run attaches are not re-created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import Params, load_params, read_yaml
from pipeline.io import read_json
from pipeline.tracking import (EXPERIMENT_PREFIX, TrackingError, connect, evaluation_run, file_md5, name_groups,
                               run_params, search_all_runs, stage_outputs, start_run, tracking_uri)


@dataclass(frozen=True)
class RelogResult:
    """What :func:`relog_runs` did with one stage: ``logged`` (``would log`` in a dry run),
    ``present``, ``missing`` or ``stale``; ``detail`` says why."""

    stage: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class _Target:
    kind: str  # "train" | "evaluate" | "report": which job's run this is
    stage: str  # the DVC stage name
    dataset: str
    method: str
    seed: int
    output: Path  # the file whose md5 identifies the result
    inputs: tuple[Path, ...]  # every file the run is built from


def _targets(params: Params, datasets: Iterable[str], methods: Iterable[str],
             seeds: Iterable[int]) -> list[_Target]:
    out = []
    for d in datasets:
        for m in (m for m in methods if m in params.methods_for(d)):
            for s in seeds:
                if not params.is_concat(m):
                    model, history = paths.model_path(d, m, s), paths.history_path(d, m, s)
                    out.append(_Target("train", paths.stage_name(params.stage_kind("train", d, m), d, m, s),
                                       d, m, s, model, (model, history)))
                metrics = paths.metrics_path(d, m, s)
                out.append(_Target("evaluate", paths.stage_name(params.stage_kind("evaluate", d, m), d, m, s),
                                   d, m, s, metrics, (metrics,)))
    return out


_MISSING = object()


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _stale_reason(target: _Target, lock: Mapping[str, Any], raw: Mapping[str, Any]) -> str | None:
    """Why ``dvc.lock`` says the target's outputs are not those of the current params, or None."""
    entry = lock.get(target.stage)
    if entry is None:
        return None
    for out in entry.get("outs", []):
        path = Path(out["path"])
        if path in target.inputs and path.is_file() and out.get("md5") and file_md5(path) != out["md5"]:
            return f"{path} differs from the file dvc.lock records"
    for values in (entry.get("params") or {}).values():
        changed = [k for k, v in values.items() if _lookup(raw, k) != v]
        if changed:
            return f"params changed since it ran ({', '.join(changed)})"
    return None


def _present(client: Any, datasets: Iterable[str]) -> set[tuple[str, str, str, str, str]]:
    """(md5 tag, dataset, method, seed, md5) of every run that holds a result: a FINISHED run's
    ``model_md5`` and ``metrics_md5``, and ``summary_md5`` with method and seed "" (report runs)."""
    ids = [e.experiment_id for d in datasets
           if (e := client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}/{d}")) is not None]
    if not ids:
        return set()
    keys = set()
    for run in search_all_runs(client, ids, "attributes.status = 'FINISHED'"):
        t = run.data.tags
        for tag in ("model_md5", "metrics_md5", "summary_md5"):
            if tag in t:
                keys.add((tag, t.get("dataset", ""), t.get("method", ""), t.get("seed", ""), t[tag]))
    return keys


def _key(target: _Target) -> tuple[str, str, str, str, str]:
    """The :func:`_present` key of a target's result."""
    if target.kind == "report":
        return ("summary_md5", target.dataset, "", "", file_md5(target.output))
    (tag,) = stage_outputs(target.stage, target.dataset, target.method, target.seed)
    return (tag, target.dataset, target.method, str(target.seed), file_md5(target.output))


def _report_targets(datasets: Iterable[str]) -> list[_Target]:
    """One ``report`` run per dataset, from the report stage's summary.json (and its other files)."""
    summary = paths.REPORTS / "summary.json"
    return [_Target("report", "report", d, "", -1, summary, (summary,)) for d in datasets]


def _group_names(dataset: str) -> list[str]:
    """The group names the live evaluate stage reads from the embeddings file (the embed stage
    copies them from the prepared cache, where they are read here: the embeddings may be gone)."""
    meta = paths.prepared_path(dataset) / "meta.json"
    if meta.is_file():
        return [str(n) for n in (read_json(meta).get("class_names") or {}).get("group", [])]
    return []


def _log(target: _Target, params: Params) -> None:
    tags = {"relogged": "true"}
    if target.kind == "report":
        from pipeline.reports import headline_of
        from pipeline.tracking import log_report

        log_report(target.dataset, read_json(target.output).get(target.dataset, {}),
                   [paths.REPORTS / name for name in paths.REPORT_ARTIFACTS], summary_file=target.output,
                   headline=headline_of(params, target.dataset), tags=tags, strict=True)
        return
    logged = run_params(params, target.kind, target.dataset, target.method, target.seed)
    if target.kind == "train":
        from pipeline.figures import loss_curve_figure

        with start_run(target.stage, target.dataset, target.method, target.seed, logged,
                       tags=tags, strict=True) as run:
            history = read_json(paths.history_path(target.dataset, target.method, target.seed))
            run.log_history(history, step="epoch")
            # Timings are no output: re-logged from the last run's log where this machine kept it.
            timing = paths.train_log_path(target.dataset, target.method, target.seed)
            if timing.is_file():
                run.log_history(read_json(timing)["epochs"], step="epoch")
            if history:  # (empty for the untrained baseline)
                run.log_metrics({f"final/{k}": v for k, v in history[-1].items() if k.startswith("loss/")})
                run.log_figure(loss_curve_figure(history, f"{target.dataset} / {target.method} / seed {target.seed}"),
                               "loss_curve.png")
        return
    model = None if params.is_concat(target.method) else paths.model_path(target.dataset, target.method, target.seed)
    from pipeline.reports import headline_of

    with evaluation_run(target.stage, target.dataset, target.method, target.seed, logged, model=model,
                        headline=headline_of(params, target.dataset), strict=True) as run:
        run.set_tags(tags)
        run.log_metrics(name_groups(read_json(target.output), _group_names(target.dataset)))


def relog_runs(params_file: str | Path = "params.yaml", *, datasets: Iterable[str] | None = None,
               methods: Iterable[str] | None = None, seeds: Iterable[int] | None = None,
               lock_file: str | Path = "dvc.lock", dry_run: bool = False,
               echo: Callable[[RelogResult], None] | None = None) -> list[RelogResult]:
    """Log every finished run of the suite (or of the given datasets / methods / seeds) that the
    current tracking store lacks, and the report runs (unless methods or seeds are chosen: the
    report covers them all); see the module docstring. Paths are relative to the working
    directory (the repository root). Raises :class:`pipeline.tracking.TrackingError` if the store
    fails, :class:`pipeline.config.ParamsError` on a bad params file or an unknown name."""
    params = load_params(params_file)
    raw = read_yaml(params_file)
    whole = methods is None and seeds is None
    datasets = list(datasets or params.suite_datasets)
    methods = list(methods or params.method_names)
    seeds = list(params.suite.seeds if seeds is None else seeds)
    for d in datasets:
        params.check_dataset(d)
    for m in methods:
        params.check_method(m)
    lock_path = Path(lock_file)
    lock = (read_yaml(lock_path) or {}).get("stages", {}) if lock_path.is_file() else {}

    try:
        present = _present(connect(), datasets)
    except Exception as err:
        raise TrackingError(f"MLflow: tracking store {tracking_uri()} unavailable "
                            f"({type(err).__name__}: {err})") from err
    results = []
    targets = _targets(params, datasets, methods, seeds) + (_report_targets(datasets) if whole else [])
    for target in targets:
        missing = [str(p) for p in target.inputs if not p.is_file()]
        if missing:
            result = RelogResult(target.stage, "missing", f"no {', '.join(missing)}")
        elif reason := _stale_reason(target, lock, raw):
            result = RelogResult(target.stage, "stale", f"{reason}: run `dvc repro` first")
        elif _key(target) in present:
            result = RelogResult(target.stage, "present")
        else:
            note = "" if target.stage in lock else "not in dvc.lock, params not checked"
            if not dry_run:
                _log(target, params)
            result = RelogResult(target.stage, "would log" if dry_run else "logged", note)
        if echo is not None:
            echo(result)
        results.append(result)
    return results
