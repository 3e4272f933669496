"""params.yaml's robustness settings (evaluate.robustness_cs, .group_dro, .discovery): schema and defaults."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from conftest import params_error, repo_params
from pipeline.config import (
    DiscoveryParams,
    GeorgeParams,
    GroupDROParams,
    KMeansDiscoveryParams,
    ParamsError,
    check_names,
    evaluate_options,
    validate,
)


_error = params_error


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["evaluate"]["group_dro"].update(steps=0), "evaluate.group_dro.steps: 0 must be >= 1"),
    (lambda p: p["evaluate"]["group_dro"].update(etas=[]), "evaluate.group_dro.etas: needs at least 1 item(s)"),
    (lambda p: p["evaluate"]["group_dro"].update(weight_decays=[0.1, -1.0]),
     "evaluate.group_dro.weight_decays[1]: -1.0 must be >= 0.0"),
    (lambda p: p["evaluate"]["group_dro"].update(adjustment=-1.0),
     "evaluate.group_dro.adjustment: -1.0 must be >= 0.0"),
    (lambda p: p["evaluate"]["discovery"]["kmeans"].update(k_max=1), "evaluate.discovery.kmeans.k_max: 1 must be >= 2"),
    (lambda p: p["evaluate"]["discovery"]["kmeans"].update(normalize="yes"), "evaluate.discovery.kmeans.normalize"),
    (lambda p: p["evaluate"]["discovery"]["kmeans"].update(k_maxx=4), "evaluate.discovery.kmeans.k_maxx: unknown key"),
    (lambda p: p["evaluate"]["discovery"]["george"].update(overcluster_factor=1),
     "evaluate.discovery.george.overcluster_factor: 1 must be >= 2"),
    (lambda p: p["evaluate"]["discovery"]["george"].update(min_fraction=1.0),
     "evaluate.discovery.george.min_fraction: 1.0 must be < 1.0"),
    (lambda p: p["evaluate"]["discovery"]["george"].update(min_sizee=3),
     "evaluate.discovery.george.min_sizee: unknown key (did you mean 'min_size'?)"),
    (lambda p: p["evaluate"]["discovery"]["datasets"]["waterbirds"].update(reduce="umap"),
     "evaluate.discovery.datasets.waterbirds.reduce: unknown key (did you mean 'reduction'?)"),
    (lambda p: p["evaluate"]["discovery"]["datasets"].update(waterbird={"reduction": "umap"}),
     "evaluate.discovery.datasets.waterbird: not a dataset under datasets (did you mean 'waterbirds'?)"),
    (lambda p: p["evaluate"].update(robustness_cs=[0.0]), "evaluate.robustness_cs[0]: 0.0 must be > 0.0"),
])
def test_bad_robustness_settings_fail_with_their_key(mutate, expected: str) -> None:
    assert expected in _error(mutate)


def test_params_without_the_robustness_keys_get_the_defaults() -> None:
    p = repo_params()
    for key in ("robustness_cs", "group_dro"):
        p["evaluate"].pop(key, None)
    p["evaluate"]["discovery"]["george"] = {"reduction": "none", "cluster_method": "gmm"}
    p["evaluate"]["discovery"]["kmeans"] = {}
    p["evaluate"]["discovery"].pop("datasets")
    opts = validate(p).evaluate
    assert opts.group_dro == GroupDROParams() and opts.discovery.kmeans == KMeansDiscoveryParams()
    george = opts.discovery.george
    assert (george.k_max, george.overcluster_factor, george.min_size, george.min_val) == (10, 5, 25, 25)  # GEORGE's
    assert opts.robustness_cs == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]


def test_georges_reduction_and_clustering_must_be_named() -> None:
    """They are registry names, which params validation never defaults (like backbones)."""
    assert "evaluate.discovery.george.reduction: required key is missing" in _error(
        lambda p: p["evaluate"]["discovery"]["george"].pop("reduction"))


def test_the_repositorys_params_set_every_robustness_key() -> None:
    evaluate = repo_params()["evaluate"]
    assert set(evaluate["group_dro"]) == set(vars(GroupDROParams()))
    assert set(evaluate["discovery"]) == {f.name for f in fields(DiscoveryParams)}
    for procedure, settings in (("george", GeorgeParams), ("kmeans", KMeansDiscoveryParams)):
        assert set(evaluate["discovery"][procedure]) == {f.name for f in fields(settings)}
    assert "robustness_cs" in evaluate


def test_a_datasets_discovery_choices_replace_only_its_own_george_settings() -> None:
    params = validate(repo_params())
    plain, waterbirds = evaluate_options(params, "spurious_digits"), evaluate_options(params, "waterbirds")
    assert plain == params.evaluate  # no choices of its own
    george = waterbirds.discovery.george
    assert (george.reduction, george.cluster_method) == ("umap", "gmm")
    assert replace(george, reduction="none", cluster_method="kmeans") == params.evaluate.discovery.george
    assert replace(waterbirds, discovery=params.evaluate.discovery) == params.evaluate


@pytest.mark.parametrize("where, key", [
    (("evaluate", "discovery", "george"), "evaluate.discovery.george.reduction"),
    (("evaluate", "discovery", "datasets", "celeba"), "evaluate.discovery.datasets.celeba.reduction"),
])
def test_discovery_names_are_checked_against_georges_registry(where: tuple[str, ...], key: str) -> None:
    from pipeline.evaluation.george import CLUSTER_METHODS, REDUCTIONS

    p = repo_params()
    node = p
    for k in where:
        node = node[k]
    node["reduction"] = "uamp"
    params = validate(p)  # the schema leaves names to the registries
    with pytest.raises(ParamsError) as info:
        check_names(params, reductions=REDUCTIONS, cluster_methods=CLUSTER_METHODS)
    assert f"{key}: 'uamp' is not allowed (did you mean 'umap'?)" in str(info.value)
