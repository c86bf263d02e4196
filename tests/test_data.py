"""Sampling, labelling oracles, exact pair laws and splits (gvgap.data)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import random_leaf_logp
from scipy.special import expit
from scipy.stats import chisquare

from gvgap.data import (
    Demos,
    Preferences,
    best_worst_pair_weights,
    expected_pairs,
    label_pairs,
    on_policy_pair_weights,
    sample_demos,
    sample_leaves,
    sample_pairs,
    sample_prompts,
)
from gvgap.errors import UserError


def _sigma_bound(freq, p, n, k=5.0):
    """Assert |freq − p| ≤ k binomial standard deviations (plus a tiny floor)."""
    sd = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= k * sd + 1e-12), (freq, p)


# ------------------------------------------------------------------ sampling


def test_sample_leaves_frequencies_match_probabilities():
    rng = np.random.default_rng(0)
    lp = random_leaf_logp(rng, 2, 6, scale=1.5)
    n = 40_000
    prompts = np.repeat([0, 1], n)
    leaves = sample_leaves(lp, prompts, np.random.default_rng(1))
    for x in range(2):
        counts = np.bincount(leaves[prompts == x], minlength=6)
        p = np.exp(lp[x])
        assert chisquare(counts, n * p).pvalue > 1e-4
        _sigma_bound(counts / n, p, n)


def test_sample_leaves_skips_zero_mass():
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[0.0, 0.5, 0.0, 0.5, 0.0]]))
    leaves = sample_leaves(lp, np.zeros(5000, int), np.random.default_rng(2))
    assert set(np.unique(leaves)) == {1, 3}


def test_sample_prompts_frequencies():
    rho = np.array([0.2, 0.5, 0.3])
    n = 30_000
    x = sample_prompts(rho, n, np.random.default_rng(3))
    _sigma_bound(np.bincount(x, minlength=3) / n, rho, n)


# ------------------------------------------------------------------ labelling oracles


def _one_pair(n, ra=1.0, rb=0.0):
    """``n`` copies of the pair (leaf 0, leaf 1) of prompt 0 with rewards (ra, rb)."""
    z = np.zeros(n, int)
    return z, z, np.ones(n, int), np.array([[ra, rb]])


def test_label_bt_frequency():
    # P(leaf 0 chosen) = σ(r0 − r1) = σ(log 3) = 3/4.
    n = 20_000
    p, a, b, r = _one_pair(n, np.log(3.0), 0.0)
    prefs = label_pairs(p, a, b, r, np.random.default_rng(4), label="bt")
    assert len(prefs) == n
    np.testing.assert_array_equal(prefs.weight, 1.0)
    assert np.all(prefs.chosen != prefs.rejected)
    _sigma_bound(np.mean(prefs.chosen == 0), 0.75, n)


def test_label_argmax_and_flip():
    n = 20_000
    p, a, b, r = _one_pair(n, 0.0, 2.0)  # leaf 1 is better
    clean = label_pairs(p, a, b, r, np.random.default_rng(5), label="argmax")
    assert np.all(clean.chosen == 1) and np.all(clean.rejected == 0)
    noisy = label_pairs(p, a, b, r, np.random.default_rng(5), label="argmax", flip=0.2)
    _sigma_bound(np.mean(noisy.chosen == 0), 0.2, n)
    # flip also applies to BT labels: P(leaf 0 chosen) = σ(−2)(1 − ε) + σ(2) ε
    bt = label_pairs(p, a, b, r, np.random.default_rng(6), label="bt", flip=0.1)
    _sigma_bound(np.mean(bt.chosen == 0), expit(-2) * 0.9 + expit(2) * 0.1, n)


def test_label_argmax_ties():
    # rows 0..n-1: a tie (r = 1, 1); row n: leaf 2 beats leaf 0.
    n = 10_000
    r = np.array([[1.0, 1.0, 5.0]])
    prompt = np.zeros(n + 1, int)
    a = np.r_[np.zeros(n, int), 0]
    b = np.r_[np.ones(n, int), 2]
    rnd = label_pairs(prompt, a, b, r, np.random.default_rng(7), label="argmax", tie="random")
    assert len(rnd) == n + 1
    _sigma_bound(np.mean(rnd.chosen[:n] == 0), 0.5, n)
    assert (rnd.chosen[n], rnd.rejected[n]) == (2, 0)
    drop = label_pairs(prompt, a, b, r, np.random.default_rng(7), label="argmax", tie="drop")
    assert len(drop) == 1 and (drop.chosen[0], drop.rejected[0]) == (2, 0)
    half = label_pairs(prompt, a, b, r, np.random.default_rng(7), label="argmax", tie="half")
    # n ties -> 2n rows of weight ½ (both orientations), the clear pair keeps weight 1
    assert len(half) == 2 * n + 1
    assert half.weight.sum() == pytest.approx(n + 1)
    tied_rows = half.weight == 0.5
    assert tied_rows.sum() == 2 * n
    assert np.sum(half.chosen[tied_rows] == 0) == n and np.sum(half.chosen[tied_rows] == 1) == n
    clear = ~tied_rows
    assert (half.chosen[clear][0], half.rejected[clear][0]) == (2, 0)


def test_label_pairs_rejects_bad_options():
    p, a, b, r = _one_pair(3)
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="label"):
        label_pairs(p, a, b, r, rng, label="rank")
    with pytest.raises(UserError, match="tie"):
        label_pairs(p, a, b, r, rng, label="argmax", tie="coin")
    with pytest.raises(UserError, match="flip"):
        label_pairs(p, a, b, r, rng, flip=0.7)
    with pytest.raises(UserError, match="n_pairs"):
        sample_pairs(np.zeros((1, 2)), r, np.ones(1), 0, rng)
    with pytest.raises(UserError, match="n_demos"):
        sample_demos(np.zeros((1, 2)), np.ones(1), 0, rng)


def test_sample_pairs_and_demos_shapes():
    rng = np.random.default_rng(8)
    lp = random_leaf_logp(rng, 3, 4)
    rho = np.array([0.2, 0.3, 0.5])
    prefs = sample_pairs(lp, rng.standard_normal((3, 4)), rho, 50, rng, label="bt")
    assert len(prefs) == 50
    assert prefs.prompt.max() < 3 and prefs.chosen.max() < 4
    demos = sample_demos(lp, rho, 40, rng)
    assert len(demos) == 40 and np.all(demos.weight == 1)


# ------------------------------------------------------------------ exact pair laws


def test_on_policy_pair_weights_and_expected_pairs():
    rng = np.random.default_rng(9)
    lp = random_leaf_logp(rng, 2, 4)
    rho = np.array([0.4, 0.6])
    r = rng.standard_normal((2, 4))
    w = on_policy_pair_weights(lp, rho)
    p = np.exp(lp)
    assert np.all(np.diagonal(w, axis1=1, axis2=2) == 0)
    np.testing.assert_allclose(w.sum(axis=(1, 2)), rho * (1 - (p**2).sum(1)), atol=1e-14)
    prefs = expected_pairs(w, r)
    assert len(prefs) == 2 * 4 * 3  # every ordered off-diagonal pair
    # Exact law of (chosen, rejected) when (ξ1, ξ2) ~ W and ξ1 wins w.p. σ(r1 − r2):
    # L[a, b] = (W[a, b] + W[b, a]) σ(r_a − r_b). The losses are weighted *means*, so the rows
    # must be proportional to L (the overall scale is checked separately below).
    law = (w + w.transpose(0, 2, 1)) * expit(r[:, :, None] - r[:, None, :])
    got = prefs.weight / prefs.weight.sum()
    expect = law[prefs.prompt, prefs.chosen, prefs.rejected] / law.sum()
    np.testing.assert_allclose(got, expect, atol=1e-15)
    # without r the weights are taken as they are
    raw = expected_pairs(w)
    np.testing.assert_allclose(raw.weight, w[raw.prompt, raw.chosen, raw.rejected])


def test_expected_pairs_total_mass_is_pair_probability():
    # Two on-policy draws with a ≠ b happen with probability Σ_{a≠b} P(a)P(b) = 1 − Σ p²;
    # BT labelling only orients them, so the labelled rows must carry the same total mass.
    lp = np.log(np.array([[0.5, 0.3, 0.2]]))
    w = on_policy_pair_weights(lp, np.ones(1))
    prefs = expected_pairs(w, np.array([[0.0, 1.0, -1.0]]))
    assert prefs.weight.sum() == pytest.approx(1 - (0.25 + 0.09 + 0.04), abs=1e-14)


def _brute_best_worst(p: np.ndarray, r_hat: np.ndarray, n: int) -> np.ndarray:
    """Law of (best, worst) over all N^n tuples; ties uniform over the tied samples."""
    out = np.zeros((p.size, p.size))
    for tup in itertools.product(range(p.size), repeat=n):
        prob = math.prod(p[i] for i in tup)
        scores = [r_hat[i] for i in tup]
        hi, lo = max(scores), min(scores)
        if hi == lo:
            continue
        best = [i for i in tup if r_hat[i] == hi]
        worst = [i for i in tup if r_hat[i] == lo]
        for i in best:
            for j in worst:
                out[i, j] += prob / (len(best) * len(worst))
    return out


def test_best_worst_hand_case():
    # P = (½, ¼, ¼), r̂ = (0, 1, 1), n = 2: the only pair is best ∈ {1, 2}, worst = 0;
    # P(leaf 1 best, leaf 0 worst) = 2 · ¼ · ½ = ¼ (either order), same for leaf 2.
    w = best_worst_pair_weights(
        np.log([[0.5, 0.25, 0.25]]), np.array([[0.0, 1.0, 1.0]]), 2, np.ones(1)
    )
    expect = np.zeros((3, 3))
    expect[1, 0] = expect[2, 0] = 0.25
    np.testing.assert_allclose(w[0], expect, atol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_best_worst_equals_enumeration(n):
    rng = np.random.default_rng(10 + n)
    lp = random_leaf_logp(rng, 2, 4)
    r_hat = np.array([[0.0, 1.0, 1.0, 2.0], [3.0, 3.0, 3.0, -1.0]])  # ties in both prompts
    rho = np.array([0.25, 0.75])
    w = best_worst_pair_weights(lp, r_hat, n, rho)
    p = np.exp(lp)
    for x in range(2):
        np.testing.assert_allclose(w[x], rho[x] * _brute_best_worst(p[x], r_hat[x], n), atol=1e-14)
        # total mass = ρ(x)(1 − Σ_levels p_L^n): all samples in one level give no pair
        _, inv = np.unique(r_hat[x], return_inverse=True)
        level = np.bincount(inv, weights=p[x])
        assert w[x].sum() == pytest.approx(rho[x] * (1 - (level**n).sum()), abs=1e-14)


# ------------------------------------------------------------------ splits


def _prefs(n):
    """``n`` distinct preference rows (leaf ids encode the row)."""
    i = np.arange(n)
    return Preferences(i % 3, i, i + n, np.ones(n))


def test_split_deterministic_and_disjoint():
    data = _prefs(20)
    tr1, va1 = data.split(0.25, np.random.default_rng(42))
    tr2, va2 = data.split(0.25, np.random.default_rng(42))
    np.testing.assert_array_equal(tr1.chosen, tr2.chosen)
    np.testing.assert_array_equal(va1.chosen, va2.chosen)
    assert len(va1) == 5 and len(tr1) == 15
    assert set(tr1.chosen).isdisjoint(va1.chosen)
    assert set(tr1.chosen) | set(va1.chosen) == set(range(20))
    tr3, _ = data.split(0.25, np.random.default_rng(43))
    assert not np.array_equal(tr1.chosen, tr3.chosen)
    # rows move together
    np.testing.assert_array_equal(tr1.rejected, tr1.chosen + 20)
    np.testing.assert_array_equal(tr1.prompt, tr1.chosen % 3)


def test_split_edge_cases_and_demos():
    tr, va = _prefs(2).split(0.9, np.random.default_rng(0))
    assert len(tr) == 1 and len(va) == 1
    with pytest.raises(UserError, match="val_frac"):
        _prefs(4).split(1.0, np.random.default_rng(0))
    with pytest.raises(UserError, match="at least 2"):
        _prefs(1).split(0.5, np.random.default_rng(0))
    demos = Demos(np.zeros(10, int), np.arange(10), np.ones(10))
    dtr, dva = demos.split(0.3, np.random.default_rng(1))
    assert len(dva) == 3 and set(dtr.leaf).isdisjoint(dva.leaf)


def test_concat_and_subset():
    a, b = _prefs(3), _prefs(2)
    c = Preferences.concat([a, b])
    assert len(c) == 5
    np.testing.assert_array_equal(c.chosen, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(c.subset(np.array([4])).rejected, [3])


def test_best_worst_law_finite_with_denormal_level_mass():
    # A level whose mass is denormal (1e-320): 1/mass overflows to inf, and p · inf for a
    # zero-probability leaf would be NaN. The law must stay finite and keep its total mass
    # ρ (1 − Σ_i p_i^n) (module docstring); here Σ_i p_i^n ≈ 1 − n·1e-320 → total ≈ 0.
    p = np.array([[1.0, 1e-320, 0.0]])
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    r_hat = np.array([[0.0, 1.0, 2.0]])
    w = best_worst_pair_weights(logp, r_hat, 4, np.ones(1))
    assert np.all(np.isfinite(w))
    assert w.sum() < 1e-300


def test_best_worst_pair_law_has_no_cancellation():
    """Issue 19: the inclusion–exclusion form (F_i − F_{j−1})^n − … cancelled (relative error
    1e-5 at P ≥ 1e-12, and negative weights such as −3e-19 for a pair of P = 1.8e-19, i.e. a
    negative DPO weight). Against the positive multinomial sum in 40 digits
    (tests/mp_reference.py): relative error ≤ 1e-12 wherever P ≥ 1e-300, and no weight < 0;
    masses spread over 300 decades, ties included."""
    from mp_reference import best_worst_law

    rng = np.random.default_rng(0)
    rho = np.array([0.3, 0.7])
    for spread in (60.0, 690.0):
        logp = rng.uniform(-spread, 0.0, (2, 6))
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        r_hat = rng.integers(0, 4, (2, 6)).astype(float)  # ties within levels
        for n in (2, 5, 25):
            got = best_worst_pair_weights(logp, r_hat, n, rho)
            want = best_worst_law(logp, r_hat, n, rho)
            assert np.all(got >= 0.0)
            big = want >= 1e-300
            np.testing.assert_allclose(got[big], want[big], rtol=1e-12, atol=0)
            assert np.all(got[~big] <= 1e-299)
