"""pipeline.losses: vectorised losses against the per-anchor loop oracle, and properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline import losses as L
from pipeline import losses_reference as R

TAU = 0.3  # not the default, so a temperature that is ignored somewhere would show
ATOL = 1e-10


def _labels(case: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Label patterns that hit every edge of the index sets P(i) and N(i)."""
    if case == "random":  # classes of size 3, 2, 1 and 1 (singletons), shuffled
        base = torch.tensor([0, 0, 0, 1, 1, 2, 3])[:n]
        return base[torch.randperm(n, generator=gen)] + 5  # non-contiguous label values
    if case == "one_class":  # N(i) empty for everyone
        return torch.zeros(n, dtype=torch.long)
    if case == "all_singletons":  # P(i) = {i} for everyone
        return torch.arange(n)
    raise ValueError(case)


def _batch(n: int, n_views: int, label_case: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Non-unit norms, so that the reference_compat cosine differs from the true one.
    z = torch.randn(n, n_views, 5, generator=gen, dtype=torch.float64) * torch.rand(n, n_views, 1, generator=gen, dtype=torch.float64).add(0.5)
    return z, _labels(label_case, n, gen)


def _vectorised(term: str, z, y, **kw):
    if term == "supcon":
        return L.supcon_loss(z, y, TAU, **kw)
    if term == "cnce":
        return L.cnce_loss(z, y, TAU, **kw)
    if term == "simclr":
        return L.simclr_loss(z, TAU, **kw)
    return L.spread_loss(z, y, 0.3, TAU, **kw)


def _oracle(term: str, z, y, **kw):
    if term == "supcon":
        return R.supcon_loss_ref(z, y, TAU, **kw)
    if term == "cnce":
        return R.cnce_loss_ref(z, y, TAU, **kw)
    if term == "simclr":
        return R.simclr_loss_ref(z, TAU, **kw)
    return R.spread_loss_ref(z, y, 0.3, TAU, **kw)


def _oracle_cases():
    for term, n_views, sym, compat, pid in itertools.product(
        ("supcon", "cnce", "simclr", "spread"), (2, 3), (False, True), (False, True), (False, True)
    ):
        if pid and term not in ("supcon", "spread"):
            continue  # pos_in_denom is a SupCon option
        for n, label_case in ((7, "random"), (4, "one_class"), (4, "all_singletons"), (1, "random")):
            yield term, n_views, sym, compat, pid, n, label_case


@pytest.mark.parametrize("term,n_views,symmetric,compat,pos_in_denom,n,label_case", list(_oracle_cases()))
def test_matches_loop_oracle_values_and_gradients(term, n_views, symmetric, compat, pos_in_denom, n, label_case):
    z, y = _batch(n, n_views, label_case)
    z.requires_grad_(True)
    kw = dict(symmetric=symmetric, reference_compat=compat)
    if pos_in_denom:
        kw["pos_in_denom"] = True
    got, want = _vectorised(term, z, y, **kw), _oracle(term, z, y, **kw)
    (g_got,) = torch.autograd.grad(got, z)
    (g_want,) = torch.autograd.grad(want, z)
    assert got.dtype == torch.float64 and got.shape == ()
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("symmetric,compat,pos_in_denom", list(itertools.product((False, True), repeat=3)))
def test_contrastive_losses_shares_one_matrix_for_all_terms(symmetric, compat, pos_in_denom):
    z, y = _batch(7, 3, "random", seed=1)
    kw = dict(symmetric=symmetric, reference_compat=compat)
    out = L.contrastive_losses(z, y, ["simclr", "cnce", "supcon"], TAU, pos_in_denom=pos_in_denom, **kw)
    assert list(out) == ["simclr", "cnce", "supcon"]
    torch.testing.assert_close(out["supcon"], R.supcon_loss_ref(z, y, TAU, pos_in_denom=pos_in_denom, **kw), rtol=0, atol=ATOL)
    torch.testing.assert_close(out["cnce"], R.cnce_loss_ref(z, y, TAU, **kw), rtol=0, atol=ATOL)
    torch.testing.assert_close(out["simclr"], R.simclr_loss_ref(z, TAU, **kw), rtol=0, atol=ATOL)


def test_simclr_needs_no_labels_and_equals_supcon_with_own_classes():
    z, _ = _batch(6, 2, "random")
    out = L.contrastive_losses(z, None, ["simclr"], TAU)
    torch.testing.assert_close(out["simclr"], L.supcon_loss(z, torch.arange(6), TAU), rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- known answers


def test_known_answer_two_orthogonal_images_and_reference_clamp():
    # Two classes, each image's views identical and orthogonal to the other image:
    # S = diag(1/tau) = diag(2) at tau = 0.5, so l_sc = log(e^2 + e^0) - 2 for both anchors.
    z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [0.0, 3.0]]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    assert L.supcon_loss(z, y).item() == pytest.approx(math.log(math.e**2 + 1) - 2, abs=1e-12)
    # Quirk 2: the numerator logit is clamped at 1, the denominator is not.
    assert L.supcon_loss(z, y, reference_compat=True).item() == pytest.approx(math.log(math.e**2 + 1) - 1, abs=1e-12)
    # cNCE: each class is a singleton, so the only positive is the own view: loss 0.
    assert L.cnce_loss(z, y).item() == pytest.approx(0.0, abs=1e-12)


def test_view_pairs_reference_direction_and_symmetric():
    assert L.view_pairs(2, symmetric=False) == [(1, 0)]
    assert L.view_pairs(3, symmetric=False) == [(1, 0), (2, 0), (2, 1)]
    assert sorted(L.view_pairs(3, symmetric=True)) == [(a, c) for a in range(3) for c in range(3) if a != c]


def test_reference_compat_forces_one_direction():
    z, y = _batch(7, 3, "random")
    assert L.supcon_loss(z, y, reference_compat=True, symmetric=True) == L.supcon_loss(z, y, reference_compat=True)
    assert L.supcon_loss(z, y, symmetric=True) != L.supcon_loss(z, y)


# --------------------------------------------------------------------------- properties


def test_supcon_invariant_to_permuting_embeddings_within_a_class():
    z, y = _batch(7, 2, "random", seed=3)
    perm = torch.arange(7)
    for cls in y.unique():
        idx = (y == cls).nonzero().squeeze(1)
        perm[idx] = idx.flip(0) if len(idx) < 3 else idx.roll(1)
    assert not torch.equal(perm, torch.arange(7))
    for kw in (dict(), dict(pos_in_denom=True), dict(symmetric=True)):
        torch.testing.assert_close(L.supcon_loss(z[perm], y, **kw), L.supcon_loss(z, y, **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("term", ["supcon", "cnce", "simclr", "spread"])
def test_true_cosine_is_invariant_to_rescaling_embeddings(term):
    z, y = _batch(7, 3, "random", seed=4)
    scale = torch.rand(7, 3, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(_vectorised(term, z * scale, y), _vectorised(term, z, y), rtol=0, atol=1e-12)


def test_reference_compat_is_not_a_true_cosine():
    # Quirk 1: rescaling a candidate's views changes other anchors' logits, so the loss moves.
    z, y = _batch(7, 2, "random", seed=4)
    scaled = z.clone()
    scaled[0] *= 3.0
    assert abs(L.supcon_loss(scaled, y, reference_compat=True) - L.supcon_loss(z, y, reference_compat=True)) > 1e-3


def _class_separated(collapsed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on opposite poles of the sphere in R^3; 4 images each, both views identical.

    collapsed: every image of a class sits at the pole. Spread: the 4 images sit on a ring
    around the pole (45 degrees off it), still far from the other class.
    """
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pts = []
    for cls in (0, 1):
        sign = 1.0 if cls == 0 else -1.0
        for j in range(4):
            angle = 2 * math.pi * j / 4
            off = 0.0 if collapsed else 1.0
            pts.append([sign * 1.0, off * math.cos(angle), off * math.sin(angle)])
    z = torch.tensor(pts, dtype=torch.float64)[:, None, :].expand(8, 2, 3).contiguous()
    return z, y


def test_collapse_lowers_supcon_and_raises_cnce():
    z_col, y = _class_separated(collapsed=True)
    z_spr, _ = _class_separated(collapsed=False)
    assert L.supcon_loss(z_col, y) < L.supcon_loss(z_spr, y)
    assert L.cnce_loss(z_col, y) > L.cnce_loss(z_spr, y)
    # Known answer: collapsed, every same-class logit equals the own-view logit: cNCE = log |P(i)|.
    assert L.cnce_loss(z_col, y).item() == pytest.approx(math.log(4), abs=1e-12)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_half_input_gives_float32_result(low):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16)
    x, y = torch.randn(32, 2, 8), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=low):
        z = lin(x)
        assert z.dtype == low
        out = L.contrastive_losses(z, y, L.TERMS)
    for term, value in out.items():
        assert value.dtype == torch.float32, term
        # Autocast is off inside: the half input is upcast once and everything after is float32.
        assert torch.equal(value, L.contrastive_losses(z.float(), y, [term])[term]), term
        # And the rounding of z to half precision barely moves the loss.
        assert value.item() == pytest.approx(L.contrastive_losses(lin(x), y, [term])[term].item(), rel=2e-2), term


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize(
    "z,y",
    [
        (torch.randn(1, 2, 4), torch.tensor([3])),  # B = 1
        (torch.randn(5, 3, 4), torch.zeros(5, dtype=torch.long)),  # no negatives
        (torch.randn(5, 2, 4), torch.arange(5)),  # no other positives
        (torch.zeros(4, 2, 4), torch.tensor([0, 0, 1, 1])),  # zero embeddings
        (torch.randn(6, 2, 4) * 1e15, torch.tensor([0, 0, 1, 1, 2, 3])),  # huge norms
    ],
)
def test_edge_cases_are_finite(z, y, compat):
    z = z.clone().requires_grad_(True)
    for tau in (0.5, 0.01):
        out = L.contrastive_losses(z, y, L.TERMS, tau, reference_compat=compat)
        out["spread"] = L.spread_loss(z, y, temperature=tau, reference_compat=compat, pos_in_denom=True)
        (grad,) = torch.autograd.grad(sum(out.values()), z)
        assert all(torch.isfinite(v) for v in out.values()), out
        assert torch.isfinite(grad).all()


def test_gather_without_process_group_is_a_no_op():
    z, y = _batch(7, 2, "random")
    assert L.spread_loss(z, y, gather=True) == L.spread_loss(z, y)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: L.supcon_loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long)), r"shape \(B, V, d\)"),
        (lambda: L.supcon_loss(torch.randn(4, 1, 8), torch.zeros(4, dtype=torch.long)), "V >= 2"),
        (lambda: L.supcon_loss(torch.randn(4, 2, 8), torch.zeros(3, dtype=torch.long)), r"shape \(4,\)"),
        (lambda: L.supcon_loss(torch.randn(4, 2, 8), torch.zeros(4)), "integer"),
        (lambda: L.supcon_loss(torch.randn(4, 2, 8), torch.zeros(4, dtype=torch.long), 0.0), "temperature"),
        (lambda: L.contrastive_losses(torch.randn(4, 2, 8), None, ["supcon"]), "labels are required"),
        (lambda: L.contrastive_losses(torch.randn(4, 2, 8), None, ["simclr", "byol"]), "byol"),
        (lambda: L.contrastive_losses(torch.randn(4, 2, 8), None, []), "non-empty"),
        (lambda: L.contrastive_losses(torch.randn(4, 2, 8), None, "simclr"), "iterable"),
        (lambda: L.spread_loss(torch.randn(4, 2, 8), torch.zeros(4, dtype=torch.long), alpha=1.5), "alpha"),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
