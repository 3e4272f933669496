"""params.yaml validation: every mistake fails before any work, naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import params_error, ROOT, repo_params, write_params
from pipeline.config import ParamsError, load_params, validate


def test_repository_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.method_names[:2] == ["ce", "simclr"]
    assert params.methods.concat["thanos"] == ["supcon_cnce", "ce_ae"]
    assert params.methods.trained["supcon_cnce"].active() == {"ce": 1.0, "supcon": 0.5, "cnce": 0.5}


_error = params_error


def test_unknown_key_names_path_and_suggests() -> None:
    msg = _error(lambda p: p["train"].update(temperture=0.1))
    assert "train.temperture: unknown key (did you mean 'temperature'?)" in msg
    assert "allowed keys:" in msg


def test_unknown_top_level_key() -> None:
    assert "methds: unknown key (did you mean 'methods'?)" in _error(lambda p: p.update(methds={}))


def test_negative_weight() -> None:
    msg = _error(lambda p: p["methods"]["trained"]["supcon"].update(cnce=-0.5))
    assert "methods.trained.supcon.cnce: -0.5 must be >= 0.0" in msg


def test_missing_weight_key_and_null_weight() -> None:
    msg = _error(lambda p: p["methods"]["trained"]["supcon"].pop("recon"))
    assert "methods.trained.supcon.recon: required key is missing" in msg
    msg = _error(lambda p: p["methods"]["trained"]["supcon"].update(recon=None))
    assert "methods.trained.supcon.recon: missing value" in msg


def test_all_zero_weights_is_the_untrained_baseline() -> None:
    """Every weight 0 is allowed: the encoder as initialised, frozen (no loss to optimise)."""
    p = repo_params()
    p["methods"]["trained"]["untrained"] = {"ce": 0.0, "supcon": 0.0, "cnce": 0.0, "simclr": 0.0, "recon": 0.0}
    assert validate(p).methods.trained["untrained"].active() == {}


def test_pretrained_weights_are_checked_against_the_registry_and_the_backbone() -> None:
    from pipeline.config import check_names
    from pipeline.models import PRETRAINED

    def with_pretrained(name: str, backbone: str = "resnet50"):
        p = repo_params()
        p["datasets"]["waterbirds"]["recipe"].update(pretrained=name, backbone=backbone)
        return validate(p)

    check_names(with_pretrained("imagenet"), pretrained=PRETRAINED, datasets=["waterbirds"])  # no error
    with pytest.raises(ParamsError) as info:
        check_names(with_pretrained("imagenett"), pretrained=PRETRAINED, datasets=["waterbirds"])
    assert "datasets.waterbirds.recipe.pretrained: 'imagenett' is not allowed (did you mean 'imagenet'?)" in str(info.value)
    with pytest.raises(ParamsError) as info:
        check_names(with_pretrained("imagenet", "vit"), pretrained=PRETRAINED, datasets=["waterbirds"])
    assert ("datasets.waterbirds.recipe.pretrained: 'imagenet' weights exist for resnet18, resnet50, "
            "not for the backbone 'vit'") in str(info.value)


def test_concat_of_unknown_method() -> None:
    msg = _error(lambda p: p["methods"]["concat"].update(bad=["supcon_cnse", "ce_ae"]))
    assert "methods.concat.bad[0]: 'supcon_cnse' is not a trained method (did you mean 'supcon_cnce'?)" in msg


def test_concat_name_clash_and_too_short() -> None:
    assert "also defined under methods.trained" in _error(
        lambda p: p["methods"]["concat"].update(supcon=["ce", "ce_ae"]))
    assert "needs at least 2 methods" in _error(lambda p: p["methods"]["concat"].update(one=["ce"]))


def test_wrong_types_and_ranges() -> None:
    assert "train.temperature: 0.0 must be > 0.0" in _error(lambda p: p["train"].update(temperature=0))
    assert "train.symmetric: expected true or false" in _error(lambda p: p["train"].update(symmetric="yes"))
    assert "datasets.digits.recipe.epochs: expected an integer" in _error(
        lambda p: p["datasets"]["digits"]["recipe"].update(epochs=1.5))
    assert "train.precision: 'fp16' is not allowed" in _error(lambda p: p["train"].update(precision="fp16"))


def test_suite_refers_to_undefined_dataset() -> None:
    msg = _error(lambda p: p["suite"].update(datasets=["digit"]))
    assert "suite.datasets[0]: 'digit' is not defined under datasets (did you mean 'digits'?)" in msg


def test_robustness_grid_runs_only_its_chosen_methods() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.suite_datasets == [*params.suite.datasets, *params.suite.robustness.datasets]
    robust = params.suite.robustness.datasets[0]
    assert params.methods_for(robust) == ["supcon", "supcon_cnce", "ce_ae", "untrained", "thanos"]
    assert params.methods_for("digits") == params.method_names
    assert params.stage_kind("train", "digits", "supcon") == "train"
    assert params.stage_kind("evaluate", "digits", "thanos") == "evaluate_concat"
    assert params.stage_kind("embed", robust, "supcon") == "embed_robust"
    assert params.stage_kind("evaluate", robust, "thanos") == "evaluate_concat_robust"


def _robust(**changes):
    return lambda p: p["suite"]["robustness"].update(changes)


@pytest.mark.parametrize("mutate, expected", [
    (_robust(datasets=["spurious_digit"]),
     "suite.robustness.datasets[0]: 'spurious_digit' is not defined under datasets (did you mean 'spurious_digits'?)"),
    (_robust(datasets=["digits"]), "suite.robustness.datasets: ['digits'] also in suite.datasets"),
    (_robust(datasets=["spurious_digits", "spurious_digits"]), "suite.robustness.datasets: datasets must be distinct"),
    (_robust(trained=["supcon", "cnce"]), "suite.robustness.trained[1]: 'cnce' is not under methods.trained"),
    (_robust(concat=["supcon"]), "suite.robustness.concat[0]: 'supcon' is not under methods.concat"),
    (_robust(trained=["supcon", "ce_ae"]),
     "suite.robustness.concat: 'thanos' concatenates ['supcon_cnce'], which suite.robustness.trained does not train"),
    (_robust(trained=[], concat=[]), "suite.robustness.trained: empty, but suite.robustness.datasets lists"),
    (lambda p: p["suite"].update(datasets=[], robustness={}), "suite.datasets: no dataset to run"),
])
def test_robustness_grid_errors_name_the_key(mutate, expected: str) -> None:
    assert expected in _error(mutate)


def test_report_baseline_must_be_a_method() -> None:
    assert "report.baseline: 'supcn' is not a method" in _error(lambda p: p["report"].update(baseline="supcn"))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: [unclosed\n")
    with pytest.raises(ParamsError, match=f"{bad}: not valid YAML"):
        load_params(bad)
    p = repo_params()
    p["train"]["temperture"] = 0.1
    with pytest.raises(ParamsError, match=rf"{tmp_path / 'p.yaml'}: train.temperture"):
        load_params(write_params(tmp_path / "p.yaml", p))


def test_stage_cli_exits_2_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import stage_main

    monkeypatch.chdir(tmp_path)
    p = repo_params()
    p["methods"]["trained"]["supcon"]["ce"] = -1
    write_params(tmp_path / "params.yaml", p)
    ran = []
    code = stage_main("train", lambda *a: ran.append(a), argv=["--dataset", "digits", "--method", "supcon",
                                                                "--seed", "0"])
    assert code == 2 and not ran
    assert "methods.trained.supcon.ce: -1.0 must be >= 0.0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]


# ------------------------------------------------------------------ one YAML reading for DVC and the stages

YAML_1_2_NUMBERS = {"3e-3": 0.003, "1e-3": 0.001, "1.0e9": 1e9, ".5": 0.5, "5E-1": 0.5, "1_000.5": 1000.5}


@pytest.mark.parametrize("text, value", sorted(YAML_1_2_NUMBERS.items()))
def test_params_numbers_read_as_dvc_reads_them(tmp_path: Path, text: str, value: float) -> None:
    """PyYAML (YAML 1.1) read `3e-3` as a string, DVC (YAML 1.2) as a number: DVC said "up to
    date" while the stage failed. Stages now read params.yaml with DVC's own rules."""
    from dvc.utils.serialize import parse_yaml

    from pipeline.config import read_yaml

    path = write_params(tmp_path / "params.yaml", repo_params())
    path.write_text(path.read_text().replace("  temperature: 0.5\n", f"  temperature: {text}\n", 1))
    assert f"temperature: {text}\n" in path.read_text()
    dvc_view = parse_yaml(path.read_text(), str(path))
    assert dvc_view["train"]["temperature"] == value and isinstance(dvc_view["train"]["temperature"], float)
    assert read_yaml(path) == dvc_view
    assert load_params(path).train.temperature == value


# ------------------------------------------------------------------ cross-field bounds, empty grids

@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["evaluate"].update(probe_cs=[]), "evaluate.probe_cs: needs at least 1 item(s), got []"),
    (lambda p: p["suite"].update(seeds=[]), "suite.seeds: needs at least 1 item(s), got []"),
    (lambda p: p["datasets"]["digits"]["prepare"].update(val_fraction=1.5),
     "datasets.digits.prepare.val_fraction: 1.5 must be a number in (0, 1)"),
    (lambda p: p["datasets"]["digits"]["prepare"].update(val_fraction="0.1"),
     "datasets.digits.prepare.val_fraction: '0.1' must be a number in (0, 1)"),
    (lambda p: p["datasets"]["digits"]["prepare"].update(val_fraction=0.5, test_fraction=0.5),
     "datasets.digits.prepare: val_fraction + test_fraction = 1 leaves no training images"),
])
def test_bounds_across_fields_fail_with_the_key(mutate, expected: str) -> None:
    assert expected in _error(mutate)


def test_probe_cs_limits_still_apply_to_each_item() -> None:
    assert "evaluate.probe_cs[1]: 0.0 must be > 0.0" in _error(lambda p: p["evaluate"].update(probe_cs=[1.0, 0.0]))


def test_knn_k_against_the_training_split() -> None:
    from pipeline.config import check_knn_k

    params = validate(repo_params())
    check_knn_k(params, "digits", params.evaluate.knn_k)  # equal is fine
    with pytest.raises(ParamsError, match=r"evaluate.knn_k: 20 neighbours, but the training split of digits "
                                          r"has only 19 images; use at most 19"):
        check_knn_k(params, "digits", 19)


@pytest.mark.parametrize("tau, warned", [(1e-9, True), (0.005, True), (0.01, False), (0.07, False),
                                         (0.5, False), (10.0, False), (11.0, True), (1e9, True)])
def test_a_temperature_outside_a_sane_range_warns_naming_the_key(tau: float, warned: bool) -> None:
    from pipeline.config import sanity_warnings

    p = repo_params()
    p["train"]["temperature"] = tau
    notes = sanity_warnings(validate(p))
    assert bool(notes) == warned
    assert all(n.startswith(f"train.temperature: {tau:g} is outside the sane range") for n in notes)


# ------------------------------------------------------------------ names come from the registries


@pytest.mark.parametrize("key, value, expected", [
    ("recipe.backbone", "resnet19", "datasets.digits.recipe.backbone: 'resnet19' is not allowed (did you mean 'resnet18'?)"),
    ("recipe.augment", "cifarr", "datasets.digits.recipe.augment: 'cifarr' is not allowed (did you mean 'cifar'?)"),
    ("source", "mnistt", "datasets.digits.source: 'mnistt' is not allowed (did you mean 'mnist'?)"),
])
def test_names_are_checked_against_the_registries(key: str, value: str, expected: str) -> None:
    from pipeline.augment import RECIPES
    from pipeline.config import check_names
    from pipeline.data.registry import DATASETS
    from pipeline.models import ENCODERS

    p = repo_params()
    section, _, field = key.rpartition(".")
    (p["datasets"]["digits"][section] if section else p["datasets"]["digits"])[field] = value
    params = validate(p)  # the schema alone does not know the names: the registries do
    with pytest.raises(ParamsError) as info:
        check_names(params, backbones=ENCODERS, augmentations=RECIPES, sources=DATASETS)
    assert expected in str(info.value)
    assert "allowed: " in str(info.value)


def test_the_registries_are_the_only_source_of_names() -> None:
    """The names validation accepts are the implementations' own keys, so a new backbone,
    augmentation or dataset is one registry line (and nothing in pipeline/config.py)."""
    import pipeline.config as config
    from pipeline.augment import RECIPES
    from pipeline.data.registry import DATASETS
    from pipeline.losses import TERMS
    from pipeline.models import ENCODERS

    source = Path(config.__file__).read_text()
    for names in (ENCODERS, RECIPES, DATASETS):
        assert not any(f'"{n}"' in source for n in names), "a registry name is spelt out in pipeline/config.py"
    assert set(TERMS) < set(config.LOSS_TERMS)  # the contrastive terms are some of the weights
    p = repo_params()
    for name in ENCODERS:
        p["datasets"]["digits"]["recipe"]["backbone"] = name
        validate(p)
