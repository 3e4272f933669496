"""The schema of params.yaml, validated in one place before any stage does work.

Every stage calls :func:`load_params`, and so does the ``validate`` stage at the root of
dvc.yaml's graph (it reruns whenever params.yaml changes, before any other stage): a typo, a
wrong type, a value out of range, a name that does not exist, or settings that contradict each
other fail here with the key path and what is allowed, before anything is trained or written.

params.yaml is read with the YAML 1.2 rules DVC itself uses (:func:`read_yaml`): ``3e-3``,
``1.0e9`` and ``.5`` are numbers for both, where PyYAML's YAML 1.1 would read the first two as
strings, and DVC would then hash one value while the stages used another.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pipeline import paths
from pipeline.schema import ParamsError, build, constrained, did_you_mean
from pipeline.smoke import apply_smoke

# Names that params.yaml may use come from the registries that implement them, never from copies
# here: backbones from pipeline.models.ENCODERS, augmentations from pipeline.augment.RECIPES,
# dataset sources from pipeline.data.registry.DATASETS (checked by :func:`check_names`, which the
# validate stage runs for every dataset and each stage for the names it uses), loss terms from
# :class:`LossWeights` (:data:`LOSS_TERMS`), tasks from pipeline.tasks.TASKS.


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
    on fabricated data (see :func:`pipeline.smoke.apply_smoke`).
    """

    datasets: list[str]
    seeds: list[int] = constrained(min=0, min_len=1)
    robustness: RobustnessSuiteParams = field(default_factory=RobustnessSuiteParams)
    smoke: bool = False


@dataclass(frozen=True)
class DataParams:
    """Where raw downloads (or files placed by hand) live; prepared caches go to data/prepared/."""

    raw_root: str = "data/raw"


@dataclass(frozen=True)
class RecipeParams:
    """How an encoder is trained on one dataset."""

    backbone: str       # a name of pipeline.models.ENCODERS (check_names)
    augment: str        # a name of pipeline.augment.RECIPES (check_names)
    epochs: int = constrained(min=1)
    batch_size: int = constrained(min=2)
    lr: float = constrained(exclusive_min=0.0)
    weight_decay: float = constrained(min=0.0)
    warmup_epochs: int = constrained(0, min=0)
    views: int = constrained(2, min=2)
    decoder_width: int = constrained(64, min=1)
    # null (random initialisation) or a name of pipeline.models.PRETRAINED that has weights for
    # this backbone (check_names), e.g. imagenet: torchvision's ImageNet weights for resnet18 / 50.
    pretrained: str | None = None


@dataclass(frozen=True)
class DatasetDiscovery:
    """One dataset's choices of GEORGE's reduction and clustering (evaluate.discovery.datasets.<name>);
    unset keys keep evaluate.discovery.george's."""

    reduction: str | None = None       # as evaluate.discovery.george.reduction
    cluster_method: str | None = None  # as evaluate.discovery.george.cluster_method


@dataclass(frozen=True)
class DatasetParams:
    """One dataset: its loader, the loader's options (checked by the download stage against the
    loader's arguments), and the training recipe."""

    source: str         # a name of pipeline.data.registry.DATASETS (check_names)
    recipe: RecipeParams
    prepare: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (METHOD.md sections 2-3); every weight is explicit.

    The registry of loss terms: its fields, in canonical order (:data:`LOSS_TERMS`). The
    contrastive ones are computed by pipeline.losses (``TERMS``), ce and recon by
    pipeline.training.loss_terms; tests/test_training.py checks that every field is computed.
    """

    ce: float = constrained(min=0.0)
    supcon: float = constrained(min=0.0)
    cnce: float = constrained(min=0.0)
    simclr: float = constrained(min=0.0)
    recon: float = constrained(min=0.0)

    def active(self) -> dict[str, float]:
        """The terms with a positive weight, in canonical order."""
        return {t: getattr(self, t) for t in LOSS_TERMS if getattr(self, t) > 0}


LOSS_TERMS: tuple[str, ...] = tuple(f.name for f in fields(LossWeights))


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
class GroupDROParams:
    """Online group DRO heads of the robustness protocol (METHOD.md section 5; pipeline/evaluation/robustness.py):
    every (eta, weight decay) pair trains at once, full batch, and every ``eval_every`` steps a checkpoint
    of each pair is a candidate for the model selection on validation."""

    etas: list[float] = constrained([0.01, 0.1, 1.0], min=0.0, min_len=1)
    weight_decays: list[float] = constrained([1e-4, 1e-3, 1e-2, 1e-1], min=0.0, min_len=1)
    steps: int = constrained(1000, min=1)
    lr: float = constrained(0.01, exclusive_min=0.0)
    eval_every: int = constrained(50, min=1)
    # Sagawa et al.'s group-size adjustment C: the weight update sees L_g + C / sqrt(n_g), favouring
    # small groups, whose training loss understates their test loss (GEORGE tunes C; 0 = none).
    adjustment: float = constrained(0.0, min=0.0)


@dataclass(frozen=True)
class KMeansDiscoveryParams:
    """The simpler alternative: k-means inside each class, kept if it beats a Gaussian null
    (pipeline/evaluation/grouping.py)."""

    k_max: int = constrained(5, min=2)
    n_components: int = constrained(8, min=1)
    normalize: bool = True
    min_gain: float = constrained(0.03, min=0.0)
    min_cluster_size: int = constrained(10, min=1)
    silhouette_sample: int = constrained(2000, min=4)


@dataclass(frozen=True)
class GeorgeParams:
    """GEORGE's discovery (Sohoni et al. 2020; pipeline/evaluation/george.py): per class, reduce, cluster
    with k by silhouette, over-cluster by silhouette and ERM loss. Defaults: GEORGE's, except where noted
    in params.yaml."""

    reduction: str       # a name of pipeline.evaluation.george.REDUCTIONS (check_names)
    cluster_method: str  # a name of pipeline.evaluation.george.CLUSTER_METHODS (check_names)
    k_max: int = constrained(10, min=2)
    overcluster_factor: int = constrained(5, min=2)
    min_size: int = constrained(25, min=1)
    min_fraction: float = constrained(0.005, min=0.0, exclusive_max=1.0)
    min_val: int = constrained(25, min=0)
    umap_neighbors: int = constrained(10, min=2)
    umap_min_dist: float = constrained(0.0, min=0.0)
    umap_components: int = constrained(2, min=1)
    silhouette_sample: int = constrained(2000, min=4)


@dataclass(frozen=True)
class DiscoveryParams:
    """Sub-group discovery without group labels: GEORGE (the default of discovered_gdro) and the
    simpler k-means alternative (kmeans_gdro), both run on every worst-group dataset."""

    george: GeorgeParams
    kmeans: KMeansDiscoveryParams = field(default_factory=KMeansDiscoveryParams)
    # GEORGE's reduction and clustering per dataset (GEORGE sets them per dataset): {dataset: choices}.
    datasets: dict[str, DatasetDiscovery] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateParams:
    probe_cs: list[float] = constrained(exclusive_min=0.0, min_len=1)
    discovery: DiscoveryParams  # required: GEORGE's reduction and clustering are registry names
    knn_k: int = constrained(20, min=1)
    head: HeadParams = field(default_factory=HeadParams)
    # The logistic heads of the robustness protocol (ERM, oracle group-balanced): their own C grid.
    robustness_cs: list[float] = constrained([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0],
                                             exclusive_min=0.0, min_len=1)
    group_dro: GroupDROParams = field(default_factory=GroupDROParams)


def evaluate_options(params: Params, dataset: str) -> EvaluateParams:
    """params.evaluate with ``evaluate.discovery.datasets.<dataset>``'s choices applied to GEORGE's."""
    opts = params.evaluate
    own = {k: v for k, v in asdict(opts.discovery.datasets.get(dataset, DatasetDiscovery())).items()
           if v is not None}
    return replace(opts, discovery=replace(opts.discovery, george=replace(opts.discovery.george, **own)))


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
        return paths.stage_group(kind, concat=self.is_concat(method), robust=dataset in self.suite.robustness.datasets)

    def download_stage(self, dataset: str) -> str:
        """The DVC name of ``dataset``'s download stage: ``download@d`` or ``download_robust@d``."""
        return f"{paths.stage_group('download', robust=dataset in self.suite.robustness.datasets)}@{dataset}"

    def is_concat(self, method: str) -> bool:
        return method in self.methods.concat

    def check_method(self, method: str) -> None:
        if method not in self.method_names:
            raise ParamsError(
                f"method {method!r} is not in params methods{did_you_mean(method, self.method_names)}; "
                f"known: {', '.join(self.method_names)}"
            )

    def check_trained(self, method: str) -> None:
        """``method`` must be a trained method (a concatenation has no train stage)."""
        self.check_method(method)
        if self.is_concat(method):
            raise ParamsError(f"method {method!r} is a concatenation (methods.concat): it has no train stage")

    def check_dataset(self, dataset: str) -> None:
        if dataset not in self.datasets:
            raise ParamsError(
                f"dataset {dataset!r} is not in params datasets{did_you_mean(dataset, self.datasets)}; "
                f"known: {', '.join(self.datasets)}"
            )


def _check_fractions(key: str, prepare: Mapping[str, Any]) -> None:
    """Every ``*_fraction`` option is a number in (0, 1), and together they leave a training split."""
    fractions = {k: v for k, v in prepare.items() if k.endswith("_fraction")}
    for k, v in fractions.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ParamsError(f"{key}.{k}: {v!r} must be a number in (0, 1), the share of images it takes")
    if len(fractions) > 1 and sum(fractions.values()) >= 1:
        raise ParamsError(f"{key}: {' + '.join(fractions)} = {sum(fractions.values()):g} leaves no training "
                          "images; their sum must stay below 1")


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
    for name in params.evaluate.discovery.datasets:
        if name not in params.datasets:
            raise ParamsError(f"evaluate.discovery.datasets.{name}: not a dataset under datasets"
                              f"{did_you_mean(name, params.datasets)}")
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
    for name, spec in params.datasets.items():
        _check_fractions(f"datasets.{name}.prepare", spec.prepare)
    if params.report.baseline not in params.method_names:
        raise ParamsError(
            f"report.baseline: {params.report.baseline!r} is not a method"
            f"{did_you_mean(params.report.baseline, params.method_names)}; "
            f"allowed: {', '.join(params.method_names)}"
        )
    return params


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file as DVC does (ruamel.yaml's safe loader, YAML 1.2): one reading of
    params.yaml for DVC's hashes and templating and for every stage."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(Path(path).read_text())


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key path."""
    from ruamel.yaml import YAMLError

    path = Path(path)
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("suite"), dict) and data["suite"].get("smoke") is True:
            data = apply_smoke(data)  # the wiring check: tiny epochs and images (pipeline/smoke.py)
        return validate(data)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


# Temperatures outside this range train, but to nonsense: at 1e-3 the softmax is a hard max and
# its gradients explode; at 1e2 every similarity is ~equal and the contrastive terms stop
# learning. SupCon and SimCLR use 0.05-1; the reference 0.5.
TEMPERATURE_RANGE = (0.01, 10.0)


def sanity_warnings(params: Params) -> list[str]:
    """Settings that validate but are almost surely a mistake, one sentence each naming the key."""
    notes = []
    low, high = TEMPERATURE_RANGE
    tau = params.train.temperature
    if not low <= tau <= high:
        notes.append(f"train.temperature: {tau:g} is outside the sane range [{low:g}, {high:g}] (SupCon and "
                     "SimCLR use 0.05-1, the reference 0.5): the contrastive terms will "
                     + ("saturate and their gradients explode" if tau < low else "be nearly constant and learn nothing"))
    return notes


def check_knn_k(params: Params, dataset: str, n_train: int) -> None:
    """``evaluate.knn_k`` against the training split it searches (``n_train`` images): a
    :class:`ParamsError` naming the key. Called by the validate stage where a prepared cache
    exists, and by the evaluate stage on the embeddings it reads."""
    k = params.evaluate.knn_k
    if k > n_train:
        raise ParamsError(f"evaluate.knn_k: {k} neighbours, but the training split of {dataset} has only "
                          f"{n_train} images; use at most {n_train}")


def _check_choice(key: str, value: str, registry: Collection[str]) -> None:
    if value not in registry:
        raise ParamsError(f"{key}: {value!r} is not allowed{did_you_mean(value, registry)}; "
                          f"allowed: {', '.join(map(repr, registry))}")


def check_names(params: Params, *, backbones: Collection[str] | None = None,
                augmentations: Collection[str] | None = None, sources: Collection[str] | None = None,
                datasets: Collection[str] | None = None, reductions: Collection[str] | None = None,
                cluster_methods: Collection[str] | None = None,
                pretrained: Mapping[str, Collection[str]] | None = None) -> None:
    """The names of ``datasets`` (default: every entry of params.datasets) against the registries
    given (a :class:`ParamsError` naming the key, with a did-you-mean). The registries are passed
    in, so this module imports none of the code that implements them."""
    for name in params.datasets if datasets is None else datasets:
        spec = params.datasets[name]
        for key, value, registry in ((f"datasets.{name}.source", spec.source, sources),
                                     (f"datasets.{name}.recipe.backbone", spec.recipe.backbone, backbones),
                                     (f"datasets.{name}.recipe.augment", spec.recipe.augment, augmentations)):
            if registry is not None:
                _check_choice(key, value, registry)
        if pretrained is not None and spec.recipe.pretrained is not None:
            key = f"datasets.{name}.recipe.pretrained"
            _check_choice(key, spec.recipe.pretrained, pretrained)
            if spec.recipe.backbone not in pretrained[spec.recipe.pretrained]:
                raise ParamsError(f"{key}: {spec.recipe.pretrained!r} weights exist for "
                                  f"{', '.join(pretrained[spec.recipe.pretrained])}, not for the backbone "
                                  f"{spec.recipe.backbone!r}; use one of those, or pretrained: null")
    discovery = params.evaluate.discovery
    for where, choices in (("george", discovery.george),
                           *((f"datasets.{name}", c) for name, c in discovery.datasets.items())):
        for key, registry in (("reduction", reductions), ("cluster_method", cluster_methods)):
            value = getattr(choices, key)
            if registry is not None and value is not None:
                _check_choice(f"evaluate.discovery.{where}.{key}", value, registry)
