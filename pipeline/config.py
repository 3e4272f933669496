"""The schema of params.yaml, validated in one place before any stage does work.

Every stage calls :func:`load_params`; a typo, a wrong type, a value out of
range, or a name that does not exist fails here with the key path and what is
allowed, before anything is trained or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.schema import ParamsError, build, constrained, did_you_mean

LOSS_TERMS = ("ce", "supcon", "cnce", "simclr", "recon")
CONTRASTIVE_TERMS = ("supcon", "cnce", "simclr")
BACKBONES = ("small_cnn", "resnet18", "resnet50", "vit")
AUGMENTATIONS = ("digits", "cifar", "crop_flip", "none")
# The names in pipeline.data.registry.DATASETS (kept here so validation does not import the loaders).
DATASET_SOURCES = ("digits", "spurious_digits", "cifar10", "cifar100", "cifar100u", "mnist", "waterbirds", "celeba")


@dataclass(frozen=True)
class RobustnessSuiteParams:
    """Datasets run with a chosen subset of the methods (stage groups ``*_robust`` in dvc.yaml).

    Meant for worst-group datasets: the robustness protocol needs only a few methods, and
    running every ablation on them too would double the embedded suite's run time.
    """

    datasets: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    concat: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteParams:
    """Which datasets, methods and seeds a run covers.

    ``datasets`` run with every method of ``methods``; ``robustness.datasets`` with the methods
    listed there. ``smoke`` shrinks everything to a wiring check
    on fabricated data (see :func:`pipeline.suites.apply_smoke`).
    """

    datasets: list[str]
    seeds: list[int] = constrained(min=0)
    robustness: RobustnessSuiteParams = field(default_factory=RobustnessSuiteParams)
    smoke: bool = False


@dataclass(frozen=True)
class DataParams:
    """Where raw downloads (or files placed by hand) live; prepared caches go to data/prepared/."""

    raw_root: str = "data/raw"


@dataclass(frozen=True)
class RecipeParams:
    """How an encoder is trained on one dataset."""

    backbone: str = constrained(choices=BACKBONES)
    augment: str = constrained(choices=AUGMENTATIONS)
    epochs: int = constrained(min=1)
    batch_size: int = constrained(min=2)
    lr: float = constrained(exclusive_min=0.0)
    weight_decay: float = constrained(min=0.0)
    warmup_epochs: int = constrained(0, min=0)
    views: int = constrained(2, min=2)
    decoder_width: int = constrained(64, min=1)


@dataclass(frozen=True)
class DatasetParams:
    """One dataset: its loader, the loader's options (checked by the download stage against the
    loader's arguments), and the training recipe."""

    source: str = constrained(choices=DATASET_SOURCES)
    recipe: RecipeParams
    prepare: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (METHOD.md sections 2-3); every weight is explicit."""

    ce: float = constrained(min=0.0)
    supcon: float = constrained(min=0.0)
    cnce: float = constrained(min=0.0)
    simclr: float = constrained(min=0.0)
    recon: float = constrained(min=0.0)

    def active(self) -> dict[str, float]:
        """The terms with a positive weight, in canonical order."""
        return {t: getattr(self, t) for t in LOSS_TERMS if getattr(self, t) > 0}


@dataclass(frozen=True)
class MethodsParams:
    """Trained methods (loss weights) and concatenations of their frozen embeddings."""

    trained: dict[str, LossWeights]
    concat: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainParams:
    """Options shared by every training run."""

    temperature: float = constrained(0.5, exclusive_min=0.0)
    symmetric: bool = False
    pos_in_denom: bool = False
    reference_compat: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    checkpoint_every: int = constrained(10, min=1)
    cpu_threads: int = constrained(0, min=0, doc="torch threads on CPU; 0 = torch's default")


@dataclass(frozen=True)
class HeadParams:
    """The reference transfer protocol: a linear head on raw frozen embeddings (METHOD.md section 4)."""

    epochs: int = constrained(100, min=1)
    lr: float = constrained(0.001, exclusive_min=0.0)
    weight_decay: float = constrained(0.01, min=0.0)
    batch_size: int = constrained(128, min=1)


@dataclass(frozen=True)
class EvaluateParams:
    probe_cs: list[float] = constrained(exclusive_min=0.0)
    knn_k: int = constrained(20, min=1)
    head: HeadParams = field(default_factory=HeadParams)


HEADLINE_METRICS = ("fine_head_acc", "fine_probe_acc", "fine_knn_acc")


@dataclass(frozen=True)
class ReportParams:
    baseline: str = "supcon"
    headline: str = constrained("fine_head_acc", choices=HEADLINE_METRICS)


@dataclass(frozen=True)
class Params:
    suite: SuiteParams
    datasets: dict[str, DatasetParams]
    methods: MethodsParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams = field(default_factory=ReportParams)
    data: DataParams = field(default_factory=DataParams)

    @property
    def method_names(self) -> list[str]:
        return [*self.methods.trained, *self.methods.concat]

    @property
    def suite_datasets(self) -> list[str]:
        """Every dataset the suite runs: ``suite.datasets`` then ``suite.robustness.datasets``."""
        return [*self.suite.datasets, *self.suite.robustness.datasets]

    def methods_for(self, dataset: str) -> list[str]:
        """The methods the suite runs on ``dataset`` (trained ones first), in params order."""
        if dataset in self.suite.robustness.datasets:
            chosen = {*self.suite.robustness.trained, *self.suite.robustness.concat}
            return [m for m in self.method_names if m in chosen]
        return self.method_names

    def stage_kind(self, kind: str, dataset: str, method: str) -> str:
        """The dvc.yaml stage group that runs ``kind`` ("train" | "embed" | "evaluate") of
        (``dataset``, ``method``): ``evaluate_concat_robust`` and the like."""
        if kind != "train" and self.is_concat(method):
            kind += "_concat"
        if dataset in self.suite.robustness.datasets:
            kind += "_robust"
        return kind

    def is_concat(self, method: str) -> bool:
        return method in self.methods.concat

    def check_method(self, method: str) -> None:
        if method not in self.method_names:
            raise ParamsError(
                f"method {method!r} is not in params methods{did_you_mean(method, self.method_names)}; "
                f"known: {', '.join(self.method_names)}"
            )

    def check_dataset(self, dataset: str) -> None:
        if dataset not in self.datasets:
            raise ParamsError(
                f"dataset {dataset!r} is not in params datasets{did_you_mean(dataset, self.datasets)}; "
                f"known: {', '.join(self.datasets)}"
            )


def validate(data: object) -> Params:
    """Build :class:`Params` from parsed YAML and check cross-references."""
    params: Params = build(Params, data)
    robust = params.suite.robustness
    for key, names in (("suite.datasets", params.suite.datasets), ("suite.robustness.datasets", robust.datasets)):
        for i, name in enumerate(names):
            if name not in params.datasets:
                raise ParamsError(
                    f"{key}[{i}]: {name!r} is not defined under datasets"
                    f"{did_you_mean(name, params.datasets)}; defined: {', '.join(params.datasets)}"
                )
        if len(set(names)) != len(names):
            raise ParamsError(f"{key}: datasets must be distinct, got {names}")
    both = sorted(set(params.suite.datasets) & set(robust.datasets))
    if both:
        raise ParamsError(f"suite.robustness.datasets: {both} also in suite.datasets; a dataset runs "
                          "either every method (suite.datasets) or the chosen ones (suite.robustness)")
    if not params.suite_datasets:
        raise ParamsError("suite.datasets: no dataset to run (suite.robustness.datasets is empty too)")
    for key, names, known in (("trained", robust.trained, params.methods.trained),
                              ("concat", robust.concat, params.methods.concat)):
        for i, name in enumerate(names):
            if name not in known:
                raise ParamsError(
                    f"suite.robustness.{key}[{i}]: {name!r} is not under methods.{key}"
                    f"{did_you_mean(name, known)}; allowed: {', '.join(known)}")
    for name in robust.concat:
        missing = [part for part in params.methods.concat[name] if part not in robust.trained]
        if missing:
            raise ParamsError(f"suite.robustness.concat: {name!r} concatenates {missing}, which "
                              "suite.robustness.trained does not train; add them there")
    if robust.datasets and not robust.trained:
        raise ParamsError("suite.robustness.trained: empty, but suite.robustness.datasets lists "
                          f"{robust.datasets}; name the methods to run on them")
    if len(set(params.suite.seeds)) != len(params.suite.seeds):
        raise ParamsError(f"suite.seeds: seeds must be distinct, got {params.suite.seeds}")
    for name, weights in params.methods.trained.items():
        if not weights.active():
            raise ParamsError(f"methods.trained.{name}: every weight is 0; at least one must be > 0")
    clash = set(params.methods.trained) & set(params.methods.concat)
    if clash:
        raise ParamsError(f"methods.concat: {sorted(clash)} also defined under methods.trained")
    for name, parts in params.methods.concat.items():
        if len(parts) < 2:
            raise ParamsError(f"methods.concat.{name}: a concatenation needs at least 2 methods, got {parts}")
        for i, part in enumerate(parts):
            if part not in params.methods.trained:
                raise ParamsError(
                    f"methods.concat.{name}[{i}]: {part!r} is not a trained method"
                    f"{did_you_mean(part, params.methods.trained)}; "
                    f"allowed: {', '.join(params.methods.trained)}"
                )
    if params.report.baseline not in params.method_names:
        raise ParamsError(
            f"report.baseline: {params.report.baseline!r} is not a method"
            f"{did_you_mean(params.report.baseline, params.method_names)}; "
            f"allowed: {', '.join(params.method_names)}"
        )
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key path."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("suite"), dict) and data["suite"].get("smoke") is True:
            from pipeline.suites import apply_smoke

            data = apply_smoke(data)  # the wiring check: tiny epochs and images (pipeline/suites.py)
        return validate(data)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
