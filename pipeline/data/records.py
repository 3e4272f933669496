"""The one in-memory layout every dataset loader returns.

Images are uint8 arrays shaped (N, C, H, W) so a whole dataset can sit on a
device and be augmented there in batches. Labels are int64 arrays shaped (N,)
keyed by role:

- coarse-to-fine datasets: ``coarse`` (training label) and ``fine`` (probe label);
- worst-group datasets: ``y`` (task label), ``attribute`` (spurious attribute)
  and ``group`` (= y * n_attributes + attribute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COARSE_TO_FINE = "coarse_to_fine"
WORST_GROUP = "worst_group"
# Every task's name; the tasks themselves (what each evaluates and reports) are pipeline.tasks.TASKS.
TASK_NAMES = (COARSE_TO_FINE, WORST_GROUP)
SPLITS = ("train", "val", "test")
# Embedding-file keys of two augmented views of every test image (written by pipeline.embeddings
# when given an augmentation recipe, read by pipeline.evaluation.metrics for alignment).
VIEW_KEYS = ("test_view1_x", "test_view2_x")
LABEL_KEYS = {COARSE_TO_FINE: ("coarse", "fine"), WORST_GROUP: ("y", "attribute", "group")}
# The label each task trains on.
TRAIN_LABEL = {COARSE_TO_FINE: "coarse", WORST_GROUP: "y"}


@dataclass(frozen=True)
class Split:
    """One split: images (N, C, H, W) uint8 and labels {role: (N,) int64}."""

    images: np.ndarray
    labels: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W); got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        for key, values in self.labels.items():
            if values.shape != (n,):
                raise ValueError(f"label {key!r} has shape {values.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Records:
    """A dataset ready for training: its task, splits and the names of each label's values."""

    name: str
    task: str
    splits: dict[str, Split]
    class_names: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"task must be one of {TASK_NAMES}; got {self.task!r}")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset {self.name!r} lacks splits {missing}")
        for split_name, split in self.splits.items():
            absent = [k for k in LABEL_KEYS[self.task] if k not in split.labels]
            if absent:
                raise ValueError(
                    f"dataset {self.name!r} split {split_name!r} lacks labels {absent} "
                    f"required by task {self.task!r}"
                )

    @property
    def train_label(self) -> str:
        return TRAIN_LABEL[self.task]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.splits["train"].images.shape[1:])  # type: ignore[return-value]
