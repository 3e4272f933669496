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
:func:`pipeline.config.load_params` applies :func:`apply_smoke`: one epoch, small batches,
CPU), one seed, and only the methods the robustness protocol runs (``Suite.smoke_methods``),
which still gives every stage group for every dataset. It runs with ``dvc exp run --temp``: in
a temporary copy of the project (last commit plus uncommitted changes to tracked files), so it
never changes the workspace's params.yaml, dvc.lock, artifacts, reports or MLflow store.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pipeline.data.fabricate import SMOKE_PREPARE

# ---------------------------------------------------------------------------- the smoke mode

# One epoch runs the training loop's code once (views, every loss term, schedule, history).
SMOKE_EPOCHS = 1
# Small batches: a fabricated training split of 32-110 images still gives 2-6 optimiser steps.
SMOKE_BATCH_SIZE = 16
# The decoder of the class-conditional autoencoder at its narrowest sensible width: at 64 (the
# reference) it costs more than the encoder on a CPU; its layer structure does not change.
SMOKE_DECODER_WIDTH = 8
# The transfer head's epochs: two, so its epoch loop runs more than once.
SMOKE_HEAD_EPOCHS = 2
# kNN neighbours: the smallest fabricated training split has 32 images, and k must not exceed it.
SMOKE_MAX_KNN_K = 10


def apply_smoke(data: Mapping[str, Any]) -> dict[str, Any]:
    """The raw params dict shrunk to a CPU wiring check; ``data`` itself is not modified.

    Applied by ``load_params`` before validation when ``suite.smoke`` is true, so every stage
    sees the same shrunk params. Only values are changed, never which datasets, methods or
    seeds run (dvc.yaml expands those from params.yaml itself); keys it does not know and
    malformed entries are left for validation to report.

    - every recipe: ``epochs`` 1, ``batch_size`` at most 16, ``warmup_epochs`` 0, decoder
      width at most 8; the backbone and augmentation stay, so every model's code path runs;
    - the ``prepare`` options of datasets with a fabricated copy: ``SMOKE_PREPARE`` (50%
      validation splits that fit the tiny copies, 16 px images for the JPEG datasets);
    - ``evaluate.head.epochs`` 2, ``evaluate.knn_k`` at most 10;
    - ``train``: CPU, fp32, no torch.compile (a GPU suite's settings, undone for CI).
    """
    out = copy.deepcopy(dict(data))
    datasets = out.get("datasets")
    for entry in datasets.values() if isinstance(datasets, dict) else ():
        if not isinstance(entry, dict):
            continue
        recipe = entry.get("recipe")
        if isinstance(recipe, dict):
            _shrink(recipe, "epochs", SMOKE_EPOCHS)
            _shrink(recipe, "batch_size", SMOKE_BATCH_SIZE)
            _shrink(recipe, "warmup_epochs", 0)
            recipe.setdefault("decoder_width", SMOKE_DECODER_WIDTH)  # its default (64) is not small
            _shrink(recipe, "decoder_width", SMOKE_DECODER_WIDTH)
        source = entry.get("source")
        if isinstance(source, str) and source in SMOKE_PREPARE:
            prepare = entry.get("prepare")
            if prepare is None:
                prepare = entry["prepare"] = {}
            if isinstance(prepare, dict):
                prepare.update(copy.deepcopy(SMOKE_PREPARE[source]))
    evaluate = out.get("evaluate")
    if isinstance(evaluate, dict):
        head = evaluate.setdefault("head", {})
        if isinstance(head, dict):
            head["epochs"] = SMOKE_HEAD_EPOCHS
        _shrink(evaluate, "knn_k", SMOKE_MAX_KNN_K)
    train = out.get("train")
    if isinstance(train, dict):
        train.update(device="cpu", precision="fp32", compile=False)
    return out


def _shrink(section: dict[str, Any], key: str, limit: int) -> None:
    """Cap ``section[key]`` at ``limit`` where it is a number; a missing key stays missing
    (validation names it), a wrong type stays wrong (validation names that too)."""
    value = section.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        section[key] = min(value, limit)


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
                "worst-group on Waterbirds and CelebA with SupCon, SupCon+cNCE, the autoencoder "
                "and Thanos; 3 seeds; one CUDA GPU, bf16, torch.compile",
    # Every key either mode changes is set explicitly, so a run does not depend on what an
    # earlier `dvc exp run` left in params.yaml (a smoke run before a real one, for instance).
    overrides={
        "suite.datasets": ["cifar10", "cifar100", "cifar100u", "mnist"],
        "suite.seeds": [0, 1, 2],
        "suite.robustness.datasets": ["waterbirds", "celeba"],
        "suite.robustness.trained": ["supcon", "supcon_cnce", "ce_ae"],
        "suite.robustness.concat": ["thanos"],
        "suite.smoke": False,
        "train.device": "cuda",       # fail fast without a GPU rather than train for weeks on a CPU
        "train.precision": "bf16",    # autocast; the losses stay fp32 (pipeline/training.py)
        "train.compile": True,
    },
    # One seed, and the robustness protocol's methods (SupCon is also the report's baseline):
    # every stage group still runs for every dataset, in 73 stages (117 with every method, 337
    # with 3 seeds). A stage costs ~5 s of imports on a CPU whatever its data, so the stage
    # count is what sets the smoke's runtime.
    smoke={"suite.smoke": True, "suite.seeds": [0]},
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


__all__ = ["PAPER", "SUITES", "Suite", "apply_smoke", "dropped_methods", "exp_run_argv", "get_suite", "hydra_value",
           "overrides"]
