"""Named suites as ``dvc exp run -S`` overrides, and the smoke mode that shrinks any run.

A suite is a set of params.yaml overrides that selects datasets, seeds and devices; the stages
and reports are the ones of dvc.yaml, as for the embedded suite. ``make paper`` runs

    dvc exp run -m "paper suite" -S suite.datasets=[cifar10,cifar100,cifar100u,mnist] -S ...

(:func:`exp_run_argv`; ``python -m stages.suite paper --dry-run`` prints it). DVC applies each
``-S`` to params.yaml with Hydra's override grammar: lists in brackets without spaces
(``[a,b]``; a bare ``a,b`` would be a *sweep* of two experiments), ``true``/``false``, quoted
strings where a bare word would parse as something else, ``~key`` to delete a key. Like every
``dvc exp run``, it runs in the workspace and leaves params.yaml holding the suite's settings
(comments are kept, flow-style lists become block lists); the experiment is also kept in git
refs (``dvc exp show``).

The smoke mode (``--smoke``) runs the same stage groups on tiny fabricated copies of the
datasets in their real formats (:mod:`pipeline.data.fabricate`): ``suite.smoke: true`` (so
:func:`pipeline.config.load_params` applies :func:`pipeline.smoke.apply_smoke`: one epoch, small batches,
CPU), one seed, and only the methods the robustness protocol runs (``Suite.smoke_methods``),
which still gives every stage group for every dataset. It runs with ``dvc exp run --temp``: in
a temporary copy of the project (last commit plus uncommitted changes to tracked files), so it
never changes the workspace's params.yaml, dvc.lock, artifacts, reports or MLflow store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union


# ---------------------------------------------------------------------------- suites

Value = Union[bool, int, float, str, Sequence["Value"]]


@dataclass(frozen=True)
class Suite:
    """A named run of the pipeline: params.yaml overrides (dotted key -> value).

    ``smoke`` holds what ``--smoke`` adds on top (it replaces keys of ``overrides``);
    ``smoke_methods`` the methods a smoke run keeps (every other one is deleted with ``~``).
    """

    name: str
    description: str
    overrides: Mapping[str, Value]
    smoke: Mapping[str, Value]
    smoke_methods: tuple[str, ...] = ()

    def settings(self, smoke: bool = False) -> dict[str, Value]:
        """The overrides to apply, each key once, in a stable order."""
        return {**self.overrides, **(self.smoke if smoke else {})}


PAPER = Suite(
    name="paper",
    description="coarse-to-fine on CIFAR-10, CIFAR-100, CIFAR-100-U and MNIST with every method; "
                "worst-group on Waterbirds and CelebA (ImageNet-pretrained ResNet-50, 224 px) with the "
                "frozen ImageNet features, SupCon, SupCon+cNCE, the autoencoder and Thanos; 3 seeds; "
                "one CUDA GPU, bf16, torch.compile",
    # Every key either mode changes is set explicitly, so a run does not depend on what an
    # earlier `dvc exp run` left in params.yaml (a smoke run before a real one, for instance).
    overrides={
        "suite.datasets": ["cifar10", "cifar100", "cifar100u", "mnist"],
        "suite.seeds": [0, 1, 2],
        "suite.robustness.datasets": ["waterbirds", "celeba"],
        "suite.robustness.trained": ["untrained", "supcon", "supcon_cnce", "ce_ae"],
        "suite.robustness.concat": ["thanos"],
        "suite.smoke": False,
        "train.device": "cuda",       # fail fast without a GPU rather than train for weeks on a CPU
        "train.precision": "bf16",    # autocast; the losses stay fp32 (pipeline/training.py)
        "train.compile": True,
        # GEORGE's own size thresholds (params.yaml lowers them for the embedded suite's small groups).
        "evaluate.discovery.george.min_size": 25,
        "evaluate.discovery.george.min_val": 25,
    },
    # One seed, and the robustness protocol's trained methods (SupCon is also the report's
    # baseline): every stage group still runs for every dataset, in 73 stages (136 with every
    # method; the real suite, 3 seeds: 392). The untrained baseline is left out (18 stages, ~4
    # minutes of CI): its train path is the same stage with no epochs (tests/test_stages.py runs it end to end). A
    # stage costs 5-30 s of process start-up on a CPU (torch, torchvision, MLflow; more on a slow
    # machine) whatever its data, so the stage count sets the runtime.
    smoke={"suite.smoke": True, "suite.seeds": [0], "suite.robustness.trained": ["supcon", "supcon_cnce", "ce_ae"]},
    smoke_methods=("supcon", "supcon_cnce", "ce_ae", "thanos"),
)

SUITES: dict[str, Suite] = {s.name: s for s in (PAPER,)}

# A bare Hydra word that parses as a string (not a number, bool, null or interpolation).
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_KEYWORDS = frozenset({"true", "false", "null", "nan", "inf"})


def hydra_value(value: Value) -> str:
    """``value`` in Hydra's override grammar: ``true``, ``3``, ``cuda``, ``'a b'``, ``[0,1]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Sequence):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override value")


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def dropped_methods(keep: Sequence[str], methods: Mapping[str, Any]) -> list[str]:
    """Hydra deletions (``~methods.trained.ce``, ...) of every method in ``methods`` (params.yaml's
    ``methods`` section) that is not in ``keep``; every name in ``keep`` must be defined there."""
    trained, concat = (dict(methods.get(k) or {}) if isinstance(methods, Mapping) else {}
                       for k in ("trained", "concat"))
    missing = [m for m in keep if m not in trained and m not in concat]
    if missing:
        raise ValueError(f"the smoke mode keeps methods {missing}, which params.yaml does not define under "
                         f"methods.trained or methods.concat (defined: {', '.join([*trained, *concat])})")
    return [f"~methods.{section}.{name}" for section, names in (("trained", trained), ("concat", concat))
            for name in names if name not in keep]


def overrides(suite: str | Suite, smoke: bool = False, extra: Sequence[str] = (),
              methods: Mapping[str, Any] | None = None) -> list[str]:
    """The overrides of ``suite`` (in smoke mode if ``smoke``), then ``extra`` verbatim.

    In smoke mode, ``methods`` (params.yaml's ``methods`` section) names what to delete so that
    only ``suite.smoke_methods`` run. ``extra`` comes last: DVC applies ``-S`` in order, so a
    user's override wins.
    """
    suite = get_suite(suite) if isinstance(suite, str) else suite
    out = [f"{key}={hydra_value(value)}" for key, value in suite.settings(smoke).items()]
    if smoke and suite.smoke_methods:
        if methods is None:
            raise ValueError("the smoke mode needs params.yaml's methods section to know which methods to leave out")
        out += dropped_methods(suite.smoke_methods, methods)
    return out + list(extra)


def exp_run_argv(suite: str | Suite, smoke: bool = False, extra: Sequence[str] = (),
                 methods: Mapping[str, Any] | None = None) -> list[str]:
    """``dvc exp run`` with one ``-S`` per override: the command ``make paper`` runs.

    The smoke mode adds ``--temp`` (a temporary copy of the project; the workspace is untouched).
    """
    suite = get_suite(suite) if isinstance(suite, str) else suite
    argv = ["dvc", "exp", "run", "--message", f"{suite.name} suite" + (" (smoke)" if smoke else "")]
    if smoke:
        argv.append("--temp")
    for override in overrides(suite, smoke, extra, methods):
        argv += ["-S", override]
    return argv


__all__ = ["PAPER", "SUITES", "Suite", "dropped_methods", "exp_run_argv", "get_suite", "hydra_value",
           "overrides"]
