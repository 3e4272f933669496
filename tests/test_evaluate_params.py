"""params.yaml's robustness settings (evaluate.robustness_cs, .group_dro, .discovery): schema and defaults."""

from __future__ import annotations

import pytest

from conftest import params_error, repo_params
from pipeline.config import DiscoveryParams, GroupDROParams, validate


_error = params_error


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["evaluate"]["group_dro"].update(steps=0), "evaluate.group_dro.steps: 0 must be >= 1"),
    (lambda p: p["evaluate"]["group_dro"].update(etas=[]), "evaluate.group_dro.etas: needs at least 1 item(s)"),
    (lambda p: p["evaluate"]["group_dro"].update(weight_decays=[0.1, -1.0]),
     "evaluate.group_dro.weight_decays[1]: -1.0 must be >= 0.0"),
    (lambda p: p["evaluate"]["discovery"].update(k_max=1), "evaluate.discovery.k_max: 1 must be >= 2"),
    (lambda p: p["evaluate"]["discovery"].update(normalize="yes"), "evaluate.discovery.normalize"),
    (lambda p: p["evaluate"]["discovery"].update(k_maxx=4), "evaluate.discovery"),
    (lambda p: p["evaluate"].update(robustness_cs=[0.0]), "evaluate.robustness_cs[0]: 0.0 must be > 0.0"),
])
def test_bad_robustness_settings_fail_with_their_key(mutate, expected: str) -> None:
    assert expected in _error(mutate)


def test_params_without_the_robustness_keys_get_the_defaults() -> None:
    p = repo_params()
    for key in ("robustness_cs", "group_dro", "discovery"):
        p["evaluate"].pop(key, None)
    opts = validate(p).evaluate
    assert opts.group_dro == GroupDROParams() and opts.discovery == DiscoveryParams()
    assert opts.robustness_cs == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]


def test_the_repositorys_params_set_every_robustness_key() -> None:
    evaluate = repo_params()["evaluate"]
    assert set(evaluate["group_dro"]) == set(vars(GroupDROParams()))
    assert set(evaluate["discovery"]) == set(vars(DiscoveryParams()))
    assert "robustness_cs" in evaluate
