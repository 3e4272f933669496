"""Where every stage output lives, and the DVC stage names that produce them (one place).

artifacts/<dataset>/seed<k>/models/<method>.pt        train      (encoder + metadata)
artifacts/<dataset>/seed<k>/history/<method>.json     train      (per-epoch losses; DVC plots)
artifacts/<dataset>/seed<k>/embeddings/<method>.npz   embed      (frozen embeddings + labels)
artifacts/<dataset>/seed<k>/metrics/<method>.json     evaluate   (DVC metrics)
resume/<dataset>/seed<k>/<method>.pt                   train      (resume state; not a DVC output)
reports/                                              report
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path("artifacts")
RESUME = Path("resume")
REPORTS = Path("reports")


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


def resume_path(dataset: str, method: str, seed: int) -> Path:
    return RESUME / dataset / f"seed{seed}" / f"{method}.pt"


def stage_name(stage: str, dataset: str, method: str, seed: int) -> str:
    """The DVC name of a matrix stage instance, as dvc.yaml's matrix generates it."""
    return f"{stage}@{dataset}-{method}-{seed}"
