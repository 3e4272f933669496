"""The suites' `dvc exp run -S` overrides, checked with DVC's and Hydra's own parsers, and the smoke mode's params."""

from __future__ import annotations

import shlex

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, repo_params, write_params
from pipeline.config import ParamsError, load_params, validate
from pipeline.smoke import (
    SMOKE_BATCH_SIZE,
    SMOKE_DECODER_WIDTH,
    SMOKE_HEAD_EPOCHS,
    SMOKE_MAX_KNN_K,
    SMOKE_PREPARE,
    apply_smoke,
)
from pipeline.suites import (
    PAPER,
    dropped_methods,
    exp_run_argv,
    hydra_value,
    overrides,
)

PAPER_DATASETS = ["cifar10", "cifar100", "cifar100u", "mnist"]
ROBUST_DATASETS = ["waterbirds", "celeba"]


def _applied(tmp_path: Path, settings: list[str], start: Path = ROOT / "params.yaml") -> Path:
    """A copy of ``start`` with ``settings`` applied by DVC's own `dvc exp run -S` code."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    if path != start:
        shutil.copy(start, path)
    apply_overrides(str(path), settings)
    return path


# ---------------------------------------------------------------------------- apply_smoke


def test_apply_smoke_is_pure_and_shrinks_every_recipe() -> None:
    raw = repo_params()
    before = copy.deepcopy(raw)
    smoke = apply_smoke(raw)
    assert raw == before, "apply_smoke modified its input"
    for name, entry in smoke["datasets"].items():
        recipe, original = entry["recipe"], before["datasets"][name]["recipe"]
        assert recipe["epochs"] == 1
        assert recipe["batch_size"] == min(SMOKE_BATCH_SIZE, original["batch_size"])
        assert recipe["warmup_epochs"] == 0
        assert recipe["decoder_width"] == min(SMOKE_DECODER_WIDTH, original.get("decoder_width", 64))
        # The model and augmentation code paths stay those of the real recipe.
        assert (recipe["backbone"], recipe["augment"]) == (original["backbone"], original["augment"])
        # No weights to download offline (and 16 px images take the CIFAR stem): random initialisation.
        assert recipe.get("pretrained") is None
        expected_prepare = {**before["datasets"][name].get("prepare", {}), **SMOKE_PREPARE.get(entry["source"], {})}
        assert entry["prepare"] == expected_prepare
    assert {n for n, e in before["datasets"].items() if e["recipe"].get("pretrained")} == {"waterbirds", "celeba"}
    # The embedded datasets are loaded as usual: their prepare options do not change.
    for name in ("digits", "spurious_digits"):
        assert smoke["datasets"][name]["prepare"] == before["datasets"][name]["prepare"]
    assert smoke["train"] == {**before["train"], "device": "cpu", "precision": "fp32", "compile": False}
    assert smoke["evaluate"]["head"] == {**before["evaluate"]["head"], "epochs": SMOKE_HEAD_EPOCHS}
    assert smoke["evaluate"]["knn_k"] == min(SMOKE_MAX_KNN_K, before["evaluate"]["knn_k"])
    # GEORGE without the real datasets' UMAP (numba compilation per stage); its global settings stay.
    assert before["evaluate"]["discovery"]["datasets"] and smoke["evaluate"]["discovery"]["datasets"] == {}
    assert smoke["evaluate"]["discovery"]["george"] == before["evaluate"]["discovery"]["george"]
    # What runs is not apply_smoke's business (dvc.yaml expands it from params.yaml itself).
    assert (smoke["suite"], smoke["methods"]) == (before["suite"], before["methods"])
    validate(smoke)


def test_apply_smoke_leaves_bad_values_for_validation_to_name() -> None:
    raw = repo_params()
    raw["datasets"]["cifar10"]["recipe"]["epochs"] = "ten"
    del raw["datasets"]["mnist"]["recipe"]["batch_size"]
    smoke = apply_smoke(raw)
    assert smoke["datasets"]["cifar10"]["recipe"]["epochs"] == "ten"
    assert "batch_size" not in smoke["datasets"]["mnist"]["recipe"]
    with pytest.raises(ParamsError, match=r"datasets\.cifar10\.recipe\.epochs"):
        validate(smoke)


def test_load_params_applies_the_smoke_mode_when_set(tmp_path: Path) -> None:
    raw = repo_params()
    raw["suite"]["smoke"] = True
    raw["train"].update(device="cuda", precision="bf16", compile=True)
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    assert (params.train.device, params.train.precision, params.train.compile) == ("cpu", "fp32", False)
    assert params.datasets["waterbirds"].prepare["resolution"] == SMOKE_PREPARE["waterbirds"]["resolution"]
    assert all(d.recipe.epochs == 1 for d in params.datasets.values())


def test_paper_recipes_validate_and_default_suite_is_unchanged() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.suite.datasets == ["digits"] and params.suite.robustness.datasets == ["spurious_digits"]
    for name in PAPER_DATASETS + ROBUST_DATASETS:
        assert params.datasets[name].source == name
    for name in ("cifar10", "cifar100", "cifar100u"):  # the reference ViT recipe (METHOD.md section 4)
        recipe = params.datasets[name].recipe
        assert (recipe.backbone, recipe.augment, recipe.batch_size, recipe.lr, recipe.weight_decay) == (
            "vit", "cifar", 128, 3e-4, 0.01)


# ---------------------------------------------------------------------------- Hydra values


@pytest.mark.parametrize("value", [True, False, 0, 3, 1.5, 1e-4, "cuda", "bf16", "cifar100u", "a b", "true",
                                   "1e3", "null", "it's", "x=y", "[0]", ["cifar10", "cifar100"], [0, 1, 2], []])
def test_hydra_value_parses_back_to_the_same_value(value: Any) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([f"key={hydra_value(value)}"])
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_hydra_value_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError, match="dict"):
        hydra_value({"a": 1})


# ---------------------------------------------------------------------------- the overrides, applied by DVC


def test_paper_overrides_select_the_paper_suite(tmp_path: Path) -> None:
    params = load_params(_applied(tmp_path, overrides("paper")))
    assert params.suite.datasets == PAPER_DATASETS
    assert params.suite.robustness.datasets == ROBUST_DATASETS
    assert params.suite.robustness.trained == ["untrained", "supcon", "supcon_cnce", "ce_ae"]
    assert params.suite.robustness.concat == ["thanos"]
    assert params.suite.seeds == [0, 1, 2] and params.suite.smoke is False
    # Waterbirds and CelebA start from ImageNet's ResNet-50, as every published anchor does.
    for name in ROBUST_DATASETS:
        recipe = params.datasets[name].recipe
        assert (recipe.backbone, recipe.pretrained) == ("resnet50", "imagenet")
        assert params.datasets[name].prepare["resolution"] == 224
    assert (params.train.device, params.train.precision, params.train.compile) == ("cuda", "bf16", True)
    assert params.method_names == load_params(ROOT / "params.yaml").method_names  # every method
    # DVC rewrites the file, but keeps its comments.
    assert "# the reference ViT recipe" in (tmp_path / "params.yaml").read_text()


def test_smoke_overrides_keep_only_the_smoke_methods(tmp_path: Path) -> None:
    methods = repo_params()["methods"]
    params = load_params(_applied(tmp_path, overrides("paper", smoke=True, methods=methods)))
    assert params.suite.smoke is True and params.suite.seeds == [0]
    assert params.suite.datasets == PAPER_DATASETS and params.suite.robustness.datasets == ROBUST_DATASETS
    assert sorted(params.method_names) == sorted(PAPER.smoke_methods)
    assert params.train.device == "cpu"  # apply_smoke, through load_params


def test_user_overrides_come_last_and_win(tmp_path: Path) -> None:
    settings = overrides("paper", extra=["datasets.cifar10.recipe.epochs=600", "suite.seeds=[4]"])
    params = load_params(_applied(tmp_path, settings))
    assert params.datasets["cifar10"].recipe.epochs == 600 and params.suite.seeds == [4]


def test_paper_run_does_not_depend_on_what_a_smoke_run_left(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    (tmp_path / "after").mkdir()
    fresh = load_params(_applied(tmp_path / "fresh", overrides("paper")))
    # The settings a smoke run would leave in a workspace (its method deletions only ever
    # happen in the temporary copy of `dvc exp run --temp`).
    left = _applied(tmp_path / "after", [f"{k}={hydra_value(v)}" for k, v in PAPER.settings(smoke=True).items()])
    assert load_params(left).suite.smoke
    assert load_params(_applied(tmp_path / "after", overrides("paper"), start=left)) == fresh


def test_dropped_methods_names_a_kept_method_that_does_not_exist() -> None:
    methods = repo_params()["methods"]
    assert dropped_methods(["supcon", "supcon_cnce", "ce_ae", "thanos"], methods) == [
        "~methods.trained.ce", "~methods.trained.simclr", "~methods.trained.supcon_simclr", "~methods.trained.untrained",
        "~methods.concat.supcon_ae"]
    with pytest.raises(ValueError, match="supcon_typo"):
        dropped_methods(["supcon_typo"], methods)
    with pytest.raises(ValueError, match="methods section"):
        overrides("paper", smoke=True)


def test_exp_run_argv_runs_smoke_in_a_temporary_copy() -> None:
    methods = repo_params()["methods"]
    real, smoke = exp_run_argv("paper"), exp_run_argv("paper", smoke=True, methods=methods)
    assert real[:3] == smoke[:3] == ["dvc", "exp", "run"]
    assert "--temp" in smoke and "--temp" not in real
    for argv, smoke_mode in ((real, False), (smoke, True)):
        flags = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
        assert flags == overrides("paper", smoke=smoke_mode, methods=methods if smoke_mode else None)
    with pytest.raises(KeyError, match="unknown suite 'papr'"):
        exp_run_argv("papr")


def test_stage_dry_run_prints_the_command_and_runs_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stages.suite import main

    text = yaml.safe_dump(repo_params(), sort_keys=False)
    (workdir / "params.yaml").write_text(text)
    assert main(["paper", "--smoke", "--dry-run", "-S", "suite.seeds=[7]"]) == 0
    out = capsys.readouterr().out
    assert "dvc exp run --message 'paper suite (smoke)' --temp" in out
    assert out.rstrip().endswith("-S 'suite.seeds=[7]'")
    assert (workdir / "params.yaml").read_text() == text and sorted(p.name for p in workdir.iterdir()) == [
        "params.yaml"]
    assert main(["paper", "--smoke", "--dry-run", "--params", "missing.yaml"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_parallel_paper_run_applies_the_overrides_and_names_the_runner(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make paper` (--parallel): the same overrides as `dvc exp run`, applied to params.yaml by DVC's
    code, then pipeline.parallel; --dry-run changes nothing."""
    from stages.suite import main

    text = yaml.safe_dump(repo_params(), sort_keys=False)
    (workdir / "params.yaml").write_text(text)
    assert main(["paper", "--parallel", "--workers", "8", "--dry-run", "-S", "suite.seeds=[7]"]) == 0
    out = capsys.readouterr().out
    assert "applies to params.yaml: " + " ".join(shlex.quote(o) for o in overrides("paper", extra=["suite.seeds=[7]"])) in out
    assert out.rstrip().endswith("python -m pipeline.parallel --workers 8")
    assert (workdir / "params.yaml").read_text() == text
    with pytest.raises(SystemExit):
        main(["paper", "--parallel", "--smoke"])
    assert "choose one" in capsys.readouterr().err
