"""Losses: hand-derived values on 2–3-outcome cases, gradients against central differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_fd

from gvgap import losses

LOG2, LOG3 = np.log(2.0), np.log(3.0)


# ------------------------------------------------------------------ hand-derived values


def test_bt_nll_hand_value():
    # margins (0, log 3), equal weights: −log σ(0) = log 2, −log σ(log 3) = −log(3/4) = log(4/3);
    # mean = ½ log(8/3). ∂/∂Δ = −½ σ(−Δ) = (−½·½, −½·¼) = (−1/4, −1/8).
    v, g = losses.bt_nll(np.array([0.0, LOG3]), np.ones(2))
    assert v == pytest.approx(0.5 * np.log(8 / 3), abs=1e-15)
    np.testing.assert_allclose(g, [-0.25, -0.125], atol=1e-15)


def test_dpo_hand_value():
    # β = 1, chosen log-ratio log 3 (log π = log ¾, log π_ref = log ¼), rejected log-ratio 0:
    # margin log 3, σ(log 3) = 3/4, loss = −log(3/4) = log(4/3); ∂/∂logπ(ξ⁺) = −σ(−log 3) = −1/4.
    v, (gc, gr) = losses.dpo_loss(
        np.log([0.75]), np.log([0.5]), np.log([0.25]), np.log([0.5]), 1.0, np.ones(1)
    )
    assert v == pytest.approx(np.log(4 / 3), abs=1e-15)
    np.testing.assert_allclose(gc, [-0.25], atol=1e-15)
    np.testing.assert_allclose(gr, [0.25], atol=1e-15)


def test_dpo_beta_and_weights():
    # β = 2, log-ratio difference ½ log 3 → margin log 3 → loss log(4/3); a second row with
    # margin 0 (loss log 2) and weight 3: mean = (log(4/3) + 3 log 2)/4.
    # Gradients: row 1: β·(−¼)·(1/4) = −1/8; row 2: β·(−½)·(3/4) = −3/4.
    lc = np.array([0.5 * LOG3, 0.0])
    zero = np.zeros(2)
    v, (gc, gr) = losses.dpo_loss(lc, zero, zero, zero, 2.0, np.array([1.0, 3.0]))
    assert v == pytest.approx((np.log(4 / 3) + 3 * LOG2) / 4, abs=1e-15)
    np.testing.assert_allclose(gc, [-0.125, -0.75], atol=1e-15)
    np.testing.assert_allclose(gr, -gc)


def test_dpo_is_bt_on_implicit_rewards():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6))
    w = rng.random(6) + 0.1
    beta = 0.7
    v, _ = losses.dpo_loss(*a, beta, w)
    vb, _ = losses.bt_nll(beta * ((a[0] - a[2]) - (a[1] - a[3])), w)
    assert v == pytest.approx(vb, abs=1e-15)


def test_ipo_hand_value():
    # τ = ½ → target 1/(2τ) = 1. h = (2 − ½) − 0 = 3/2, residual ½, loss ¼;
    # ∂/∂logπ(ξ⁺) = 2·½ = 1, ∂/∂logπ(ξ⁻) = −1.
    v, (gc, gr) = losses.ipo_loss(
        np.array([2.0]), np.array([0.0]), np.array([0.5]), np.array([0.0]), 0.5, np.ones(1)
    )
    assert v == pytest.approx(0.25, abs=1e-15)
    np.testing.assert_allclose([gc[0], gr[0]], [1.0, -1.0], atol=1e-15)


def test_ipo_mean_divides_by_length():
    # length H = 2, log-ratio difference 3: h = 3/2, τ = ½ → residual ½, loss ¼ as above,
    # but ∂/∂logπ(ξ⁺) = 2·½/2 = ½ (ipo_mean, token-mean log-ratios).
    v, (gc, gr) = losses.ipo_loss(
        np.array([3.0]), np.zeros(1), np.zeros(1), np.zeros(1), 0.5, np.ones(1), length=2.0
    )
    assert v == pytest.approx(0.25, abs=1e-15)
    np.testing.assert_allclose([gc[0], gr[0]], [0.5, -0.5], atol=1e-15)


def test_sft_nll_hand_value():
    # log π = (log ½, log ¼), weights (1, 3): (log 2 + 3·2 log 2)/4 = 7/4 log 2; grad −w/Σw.
    v, g = losses.sft_nll(np.log([0.5, 0.25]), np.array([1.0, 3.0]))
    assert v == pytest.approx(1.75 * LOG2, abs=1e-15)
    np.testing.assert_allclose(g, [-0.25, -0.75], atol=1e-15)


def test_centred_sq_hand_value():
    # Ω(r) = (1/2m) Σ_x Σ_ξ (r − mean_ξ r)², ∇Ω = (r − r̄)/m.
    # m = 1, r = (1, 2, 6): mean 3, c = (−2, −1, 3), Σc² = 14, Ω = 7, ∇Ω = c.
    v, g = losses.centred_sq(np.array([[1.0, 2.0, 6.0]]))
    assert v == pytest.approx(7.0, abs=1e-15)
    np.testing.assert_allclose(g, [[-2.0, -1.0, 3.0]], atol=1e-15)
    # m = 2, second row constant (c = 0): Ω halves to 7/2, ∇Ω = c/2.
    v2, g2 = losses.centred_sq(np.array([[1.0, 2.0, 6.0], [5.0, 5.0, 5.0]]))
    assert v2 == pytest.approx(3.5, abs=1e-15)
    np.testing.assert_allclose(g2, [[-1.0, -0.5, 1.5], [0.0, 0.0, 0.0]], atol=1e-15)


def test_centred_sq_invariant_to_prompt_constants():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((3, 5))
    shifted = r + np.array([[1.0], [-7.0], [2.5]])
    assert losses.centred_sq(r)[0] == pytest.approx(losses.centred_sq(shifted)[0], abs=1e-13)


def test_reverse_kl_objective_hand_value():
    # P = (¼, ¾), P_ref = (½, ½), r = (0, log 3), β = 1:
    # value = ¼(log ½ − 0) + ¾(log(3/2) − log 3) = −log 2 (= −β log Z: P is P*_r, Z = 2);
    # gradient ρ P (β(log P − log P_ref) − r + β) = P (−log 2 + 1).
    lp = np.log([[0.25, 0.75]])
    v, g = losses.reverse_kl_objective(
        lp, np.array([[0.0, LOG3]]), np.log([[0.5, 0.5]]), 1.0, np.ones(1)
    )
    assert v == pytest.approx(-LOG2, abs=1e-15)
    np.testing.assert_allclose(g, [[0.25 * (1 - LOG2), 0.75 * (1 - LOG2)]], atol=1e-15)


# ------------------------------------------------------------------ gradients vs central FD


def _check_grad(f_value, x, grad, rtol=1e-6, atol=1e-8):
    """Assert ``grad`` equals the central-difference gradient of ``f_value`` at ``x``."""
    np.testing.assert_allclose(grad, central_fd(f_value, x), rtol=rtol, atol=atol)


def test_bt_nll_grad():
    rng = np.random.default_rng(2)
    m, w = 2 * rng.standard_normal(5), rng.random(5) + 0.1
    _check_grad(lambda d: losses.bt_nll(d, w)[0], m, losses.bt_nll(m, w)[1])


@pytest.mark.parametrize("which", [0, 1])
def test_dpo_grad(which):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 5))
    w = rng.random(5) + 0.1

    def f(x):
        b = a.copy()
        b[which] = x
        return losses.dpo_loss(*b, 0.8, w)[0]

    _check_grad(f, a[which], losses.dpo_loss(*a, 0.8, w)[1][which])


@pytest.mark.parametrize(("which", "length"), [(0, 1.0), (1, 1.0), (0, 3.0), (1, 3.0)])
def test_ipo_grad(which, length):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((4, 5))
    w = rng.random(5) + 0.1

    def f(x):
        b = a.copy()
        b[which] = x
        return losses.ipo_loss(*b, 0.3, w, length)[0]

    _check_grad(f, a[which], losses.ipo_loss(*a, 0.3, w, length)[1][which])


def test_sft_nll_grad():
    rng = np.random.default_rng(5)
    lp, w = rng.standard_normal(4), rng.random(4) + 0.1
    _check_grad(lambda x: losses.sft_nll(x, w)[0], lp, losses.sft_nll(lp, w)[1])


def test_centred_sq_grad():
    r = np.random.default_rng(6).standard_normal((2, 4))
    _check_grad(lambda x: losses.centred_sq(x)[0], r, losses.centred_sq(r)[1])


def test_reverse_kl_objective_grad():
    rng = np.random.default_rng(7)
    lp, lref = rng.standard_normal((2, 3)) - 1, rng.standard_normal((2, 3)) - 1
    r, rho = rng.standard_normal((2, 3)), np.array([0.4, 0.6])
    _check_grad(
        lambda x: losses.reverse_kl_objective(x, r, lref, 1.3, rho)[0],
        lp,
        losses.reverse_kl_objective(lp, r, lref, 1.3, rho)[1],
    )


def test_bt_pieces_equal_the_per_caller_formulas_they_replaced():
    """Issue 19 (one loss module): ``bt_rows``, ``bt_nll`` and ``bt_nll_terms`` reproduce,
    bit for bit, the hand-written −log σ(Δ) of the callers they replaced (newton's
    ``_bt_terms``, select's validation log-likelihoods, verify's BT objective, h5's and the
    population cross-entropies)."""
    from scipy.special import expit, log_expit

    rng = np.random.default_rng(19)
    delta = 10.0 * rng.standard_normal(257)
    w = rng.random(257) + 0.01
    wn = w / w.sum()
    np.testing.assert_array_equal(losses.bt_rows(delta), -log_expit(delta))
    f, a, c = losses.bt_nll_terms(delta, wn)
    s_neg = expit(-delta)
    assert f == float(wn @ -log_expit(delta))
    np.testing.assert_array_equal(a, -wn * s_neg)
    np.testing.assert_array_equal(c, wn * s_neg * (1.0 - s_neg))
    v, g = losses.bt_nll(delta, w)
    assert v == float(wn @ -log_expit(delta))
    np.testing.assert_array_equal(g, -wn * expit(-delta))
    assert float(w @ -losses.bt_rows(delta) / w.sum()) == float(w @ log_expit(delta) / w.sum())
    assert float(w @ losses.bt_rows(delta) / w.sum()) == float(-(w @ log_expit(delta)) / w.sum())
    q = expit(rng.standard_normal(257))
    np.testing.assert_array_equal(
        q * losses.bt_rows(delta) + (1 - q) * losses.bt_rows(-delta),
        -(q * log_expit(delta) + (1 - q) * log_expit(-delta)),
    )
