"""Where every stage output lives, and the DVC stage names that produce them (one place).

data/prepared/<dataset>/                              download   (prepared uint8 cache)
artifacts/<dataset>/seed<k>/models/<method>.pt        train      (encoder + metadata)
artifacts/<dataset>/seed<k>/history/<method>.json     train      (per-epoch losses; DVC plots)
artifacts/<dataset>/seed<k>/embeddings/<method>.npz   embed      (frozen embeddings + labels)
artifacts/<dataset>/seed<k>/metrics/<method>.json     evaluate   (metrics; git-tracked)
artifacts/<dataset>/seed<k>/predictions/<method>.npz  evaluate   (per test image: the headline's correct flags)
resume/<dataset>/seed<k>/<method>.pt                   train      (resume state; not a DVC output)
logs/<dataset>/seed<k>/train/<method>.json            train      (timings; not a DVC output)
reports/                                              report
artifacts/params.validated                            validate   (params.yaml passed)
"""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
ARTIFACTS = Path("artifacts")
RESUME = Path("resume")
LOGS = Path("logs")
# The validate stage's output: constant bytes, so that passing validation reruns nothing.
VALIDATED = ARTIFACTS / "params.validated"
REPORTS = Path("reports")
# What the report stage's MLflow run carries as artifacts (files or folders under reports/).
REPORT_ARTIFACTS = ("results.md", "headline.png", "projections", "history")


def prepared_path(dataset: str) -> Path:
    """The prepared cache of ``dataset`` (the download stage's output)."""
    return PREPARED / dataset


def run_dir(dataset: str, seed: int) -> Path:
    return ARTIFACTS / dataset / f"seed{seed}"


def model_dir(dataset: str, seed: int) -> Path:
    return run_dir(dataset, seed) / "models"


def model_path(dataset: str, method: str, seed: int) -> Path:
    return model_dir(dataset, seed) / f"{method}.pt"


def history_path(dataset: str, method: str, seed: int) -> Path:
    return run_dir(dataset, seed) / "history" / f"{method}.json"


def embedding_path(dataset: str, method: str, seed: int) -> Path:
    return run_dir(dataset, seed) / "embeddings" / f"{method}.npz"


def metrics_path(dataset: str, method: str, seed: int) -> Path:
    return run_dir(dataset, seed) / "metrics" / f"{method}.json"


def predictions_path(dataset: str, method: str, seed: int) -> Path:
    """Per test image results of the evaluate stage (the report's bootstrap over test images)."""
    return run_dir(dataset, seed) / "predictions" / f"{method}.npz"


def resume_path(dataset: str, method: str, seed: int) -> Path:
    return RESUME / dataset / f"seed{seed}" / f"{method}.pt"


def train_log_path(dataset: str, method: str, seed: int) -> Path:
    """Per-epoch seconds and images/s of the last training run: a log, never a stage's input."""
    return LOGS / dataset / f"seed{seed}" / "train" / f"{method}.json"


# dvc.yaml's stage groups: a kind, "_concat" for a concatenation's embed/evaluate stages, then
# "_robust" for the suite.robustness grid (evaluate_concat_robust@...). Built and read only here.
CONCAT_SUFFIX, ROBUST_SUFFIX = "_concat", "_robust"


def stage_group(kind: str, *, concat: bool = False, robust: bool = False) -> str:
    """The dvc.yaml stage group running ``kind`` ("download" | "train" | "embed" | "evaluate")."""
    return kind + (CONCAT_SUFFIX if concat and kind in ("embed", "evaluate") else "") + (ROBUST_SUFFIX if robust else "")


def stage_kind_of(stage: str) -> str:
    """The kind a stage name runs: ``evaluate_concat_robust@d-m-0`` -> "evaluate"."""
    return stage.split("@")[0].removesuffix(ROBUST_SUFFIX).removesuffix(CONCAT_SUFFIX)


def stage_name(stage: str, dataset: str, method: str, seed: int) -> str:
    """The DVC name of a matrix stage instance, as dvc.yaml's matrix generates it."""
    return f"{stage}@{dataset}-{method}-{seed}"
