"""Exact tree theory: indexing, soft value iteration, Gibbs identity, KL, best-of-n, win rate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import brute_leaf_logp, random_env, random_leaf_logp, small_trees
from hypothesis import given, settings
from scipy.special import expit

from gvgap import theory
from gvgap.envs.tree_env import make_env, random_ref_policy
from gvgap.errors import UserError

PROPERTY = settings(max_examples=30, deadline=None)


def _env_from(tree: dict):
    """A random env from a :func:`small_trees` draw."""
    return random_env(
        tree["seed"],
        vocab=tree["vocab"],
        horizon=tree["horizon"],
        n_prompts=tree["n_prompts"],
        beta=tree["beta"],
    )


# ------------------------------------------------------------------ indexing


def test_leaf_tokens_first_token_most_significant():
    # V=3, H=2: leaf 5 = 1*3 + 2 -> tokens (1, 2); leaf 7 = 2*3 + 1 -> (2, 1).
    toks = theory.leaf_tokens(3, 2)
    assert toks.shape == (9, 2)
    np.testing.assert_array_equal(toks[5], [1, 2])
    np.testing.assert_array_equal(toks[7], [2, 1])
    assert theory.n_leaves(3, 2) == 9


@pytest.mark.parametrize(("vocab", "horizon"), [(2, 1), (2, 4), (3, 3), (4, 2)])
def test_tokens_leaf_inverses(vocab, horizon):
    toks = theory.leaf_tokens(vocab, horizon)
    idx = np.arange(vocab**horizon)
    np.testing.assert_array_equal(theory.tokens_to_leaf(toks, vocab), idx)
    np.testing.assert_array_equal(theory.leaf_to_tokens(idx, vocab, horizon), toks)
    # rows are exactly itertools.product order
    np.testing.assert_array_equal(
        toks, np.array(list(itertools.product(range(vocab), repeat=horizon)))
    )
    # batched shapes (..., H) <-> (...)
    grid = idx.reshape(-1, 1)
    np.testing.assert_array_equal(theory.leaf_to_tokens(grid, vocab, horizon)[:, 0], toks)


def test_node_shapes_and_uniform():
    shapes = theory.tree.node_shapes(2, 3, 3)
    assert shapes == [(2, 1, 3), (2, 3, 3), (2, 9, 3)]
    lp = theory.node_to_leaf_logp(theory.uniform_node_logp(2, 3, 3))
    np.testing.assert_allclose(lp, -3 * np.log(3))


def test_node_to_leaf_matches_pure_python_walk():
    rng = np.random.default_rng(3)
    logpi = random_ref_policy(2, 3, 3, 0.7, rng)
    lp = theory.node_to_leaf_logp(logpi)
    toks = theory.leaf_tokens(3, 3)
    for x in range(2):
        walk = brute_leaf_logp(logpi, x)
        np.testing.assert_allclose(lp[x], [walk[tuple(t)] for t in toks], rtol=0, atol=1e-12)


@given(small_trees())
@PROPERTY
def test_leaf_node_round_trip(tree):
    v, h, m = tree["vocab"], tree["horizon"], tree["n_prompts"]
    rng = np.random.default_rng(tree["seed"])
    lp = random_leaf_logp(rng, m, v**h, scale=2.0)
    node = theory.leaf_to_node_logp(lp, v, h)
    for a in node:  # each conditional is normalised
        np.testing.assert_allclose(np.exp(a).sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(theory.node_to_leaf_logp(node), lp, atol=1e-12)
    logpi = random_ref_policy(m, v, h, 1.0, rng)
    back = theory.leaf_to_node_logp(theory.node_to_leaf_logp(logpi), v, h)
    for a, b in zip(logpi, back):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_leaf_to_node_dead_states_get_uniform():
    # V=2, H=2: all mass on leaves (0,0) and (0,1) -> state "1" is unreachable.
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[0.25, 0.75, 0.0, 0.0]]))
    node = theory.leaf_to_node_logp(lp, 2, 2)
    np.testing.assert_allclose(np.exp(node[0][0, 0]), [1.0, 0.0])
    np.testing.assert_allclose(np.exp(node[1][0, 0]), [0.25, 0.75])
    np.testing.assert_allclose(node[1][0, 1], [-np.log(2), -np.log(2)])


def test_leaf_marginals_sum_subtrees():
    p = np.array([[0.1, 0.2, 0.3, 0.4]])
    marg = theory.leaf_marginals(p, 2, 2)
    np.testing.assert_allclose(marg[0], [[1.0]])
    np.testing.assert_allclose(marg[1], [[0.3, 0.7]])
    np.testing.assert_allclose(marg[2], p)


def test_log_normalize_leaf():
    z = np.array([[0.0, np.log(3.0)], [5.0, 5.0]])
    np.testing.assert_allclose(np.exp(theory.log_normalize_leaf(z)), [[0.25, 0.75], [0.5, 0.5]])


def test_check_tree_size_raises_and_names_fields():
    theory.check_tree_size(2, 2, 3, max_leaves=16)  # exactly at the limit: fine
    with pytest.raises(
        theory.TreeTooLargeError, match=r"vocab.*horizon.*17 leaves > max_leaves = 16"
    ):
        theory.check_tree_size(1, 17, 1, max_leaves=16)
    with pytest.raises(UserError):  # the CLI maps UserError to exit code 2
        theory.check_tree_size(2, 2, 4, max_leaves=31)
    with pytest.raises(theory.TreeTooLargeError):
        make_env(vocab=2, horizon=5, r_star=np.zeros(32), max_leaves=31)


# ------------------------------------------------------------------ soft value iteration


def test_soft_vi_hand_case():
    # V=2, H=1, uniform π_ref, β=1, r = (0, log 3):
    # Z = ½ e^0 + ½ e^{log 3} = 2, π* = (½·1/2, ½·3/2) = (1/4, 3/4), V_0 = log 2.
    sv = theory.soft_value_iteration(
        theory.uniform_node_logp(1, 2, 1), np.array([[0.0, np.log(3)]]), 1.0
    )
    np.testing.assert_allclose(np.exp(sv.logpi[0][0, 0]), [0.25, 0.75], atol=1e-15)
    np.testing.assert_allclose(sv.log_z, [np.log(2)], atol=1e-15)
    np.testing.assert_allclose(sv.values[1], [[0.0, np.log(3)]])


def _pure_python_soft_optimal(logpi_ref, r, beta, x):
    """P* ∝ P_ref e^{r/β} over every token tuple, with plain floats (no numpy reductions)."""
    vocab, horizon = logpi_ref[0].shape[-1], len(logpi_ref)
    ref = brute_leaf_logp(logpi_ref, x)
    unnorm = {}
    for toks in itertools.product(range(vocab), repeat=horizon):
        leaf = sum(a * vocab ** (horizon - 1 - k) for k, a in enumerate(toks))
        unnorm[toks] = math.exp(ref[toks] + float(r[x, leaf]) / beta)
    z = math.fsum(unnorm.values())
    return {k: v / z for k, v in unnorm.items()}, math.log(z)


@pytest.mark.parametrize(("vocab", "horizon", "beta"), [(2, 3, 0.3), (3, 2, 1.7), (2, 1, 5.0)])
def test_soft_vi_equals_enumeration(vocab, horizon, beta):
    env = random_env(11, vocab=vocab, horizon=horizon, n_prompts=2, beta=beta)
    sv = theory.soft_value_iteration(env.logpi_ref, env.r_star, beta)
    lp_vi = theory.node_to_leaf_logp(sv.logpi)
    lp_enum = theory.soft_optimal_leaf_logp(env.logp_ref, env.r_star, beta)
    np.testing.assert_allclose(lp_vi, lp_enum, atol=1e-12)
    np.testing.assert_allclose(
        theory.soft_optimal(env.logpi_ref, env.r_star, beta), lp_enum, atol=1e-12
    )
    np.testing.assert_allclose(
        sv.log_z, theory.log_partition_leaf(env.logp_ref, env.r_star, beta), atol=1e-12
    )
    toks = theory.leaf_tokens(vocab, horizon)
    for x in range(2):
        p_star, log_z = _pure_python_soft_optimal(env.logpi_ref, env.r_star, beta, x)
        np.testing.assert_allclose(np.exp(lp_vi[x]), [p_star[tuple(t)] for t in toks], atol=1e-12)
        assert sv.log_z[x] == pytest.approx(log_z, abs=1e-12)


def test_soft_vi_bellman_and_q():
    env = random_env(5, vocab=3, horizon=3, n_prompts=2, beta=0.7)
    sv = env.soft_star
    assert len(sv.values) == 4
    np.testing.assert_allclose(sv.values[3], env.r_star / 0.7)
    for h in range(3):
        q = sv.q(h, env.logpi_ref)
        # V_h = log Σ_a exp Q_h and π* = exp(Q_h − V_h)
        np.testing.assert_allclose(sv.values[h], np.log(np.exp(q).sum(-1)), atol=1e-12)
        np.testing.assert_allclose(sv.logpi[h], q - sv.values[h][..., None], atol=1e-12)


def test_soft_vi_rejects_nonpositive_beta():
    with pytest.raises(ValueError, match="beta"):
        theory.soft_value_iteration(theory.uniform_node_logp(1, 2, 1), np.zeros((1, 2)), 0.0)


def test_soft_vi_no_underflow_for_large_reward_gaps():
    # V=2, H=1, uniform π_ref, β=1, r = (0, 1000): π*(0) = 1/(1 + e^1000), log π*(0) ≈ −1000.
    r = np.array([[0.0, 1000.0]])
    sv = theory.soft_value_iteration(theory.uniform_node_logp(1, 2, 1), r, 1.0)
    np.testing.assert_allclose(sv.logpi[0][0, 0], [-1000.0, 0.0], atol=1e-9)


def test_local_reward_forms():
    lp = np.log(np.array([[0.25, 0.75]]))
    ref = np.log(np.array([[0.5, 0.5]]))
    np.testing.assert_allclose(
        theory.local_reward(lp, ref, 2.0), [[2 * np.log(0.5), 2 * np.log(1.5)]]
    )
    np.testing.assert_allclose(theory.local_reward(lp, None, 3.0), 3 * lp)


# ------------------------------------------------------------------ property-based identities


@given(small_trees())
@PROPERTY
def test_gibbs_identity(tree):
    # E_π r − β KL(π‖ref) = β log Z − β KL(π‖π*)  (docs/theory.md §3), per prompt and in
    # ρ-expectation.
    env = _env_from(tree)
    rng = np.random.default_rng(tree["seed"] + 1)
    lp = random_leaf_logp(rng, env.n_prompts, env.n_leaves, scale=2.0)
    b = env.beta
    lhs = theory.objective_j(lp, env.r_star, env.logp_ref, b, env.rho)
    rhs = b * float(env.rho @ env.soft_star.log_z) - b * theory.kl(lp, env.logp_star, env.rho)
    assert lhs == pytest.approx(rhs, abs=1e-9 * (1 + abs(lhs)))
    assert lhs <= env.j_star + 1e-12
    assert env.objective(env.logp_star) == pytest.approx(env.j_star, abs=1e-9)


@given(small_trees())
@PROPERTY
def test_local_reward_normalisation(tree):
    # Σ_ξ P_ref exp(r_π/β) = Σ_ξ P_π = 1, so soft RL on r_π returns π (claim 2).
    env = _env_from(tree)
    rng = np.random.default_rng(tree["seed"] + 2)
    lp = random_leaf_logp(rng, env.n_prompts, env.n_leaves, scale=2.0)
    r_pi = theory.local_reward(lp, env.logp_ref, env.beta)
    np.testing.assert_allclose(
        (np.exp(env.logp_ref) * np.exp(r_pi / env.beta)).sum(1), 1.0, atol=1e-12
    )
    np.testing.assert_allclose(
        theory.log_partition_leaf(env.logp_ref, r_pi, env.beta), 0, atol=1e-12
    )
    np.testing.assert_allclose(theory.soft_optimal(env.logpi_ref, r_pi, env.beta), lp, atol=1e-10)


@given(small_trees())
@PROPERTY
def test_kl_identities(tree):
    env = _env_from(tree)
    rng = np.random.default_rng(tree["seed"] + 3)
    logpi = random_ref_policy(env.n_prompts, env.vocab, env.horizon, 0.8, rng)
    lp = theory.node_to_leaf_logp(logpi)
    # per-token KL summed along the trajectory = trajectory KL
    traj = theory.kl(lp, env.logp_ref, env.rho)
    assert theory.per_token_kl(logpi, env.logpi_ref, env.rho) == pytest.approx(traj, abs=1e-10)
    assert traj >= -1e-12
    assert theory.kl(lp, lp, env.rho) == pytest.approx(0.0, abs=1e-14)
    assert float(env.rho @ theory.kl_per_prompt(lp, env.logp_ref)) == pytest.approx(traj, abs=1e-12)
    # against the uniform reference, KL = H log V − entropy
    uni = theory.node_to_leaf_logp(theory.uniform_node_logp(env.n_prompts, env.vocab, env.horizon))
    kl_uni = theory.kl(lp, uni, env.rho)
    ent = theory.entropy(lp, env.rho)
    assert kl_uni == pytest.approx(env.horizon * np.log(env.vocab) - ent, abs=1e-10)


def test_kl_zero_mass_convention():
    # P = (1, 0), Q = (½, ½): KL = 1·log 2 + 0 (0·log 0 = 0).
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[1.0, 0.0]]))
    q = np.log(np.array([[0.5, 0.5]]))
    assert theory.kl(lp, q, np.ones(1)) == pytest.approx(np.log(2))
    assert theory.entropy(lp, np.ones(1)) == 0.0
    assert theory.expected_reward(lp, np.array([[3.0, 7.0]]), np.ones(1)) == 3.0


def test_kl_with_disjoint_support_is_infinite():
    """Issue 19: P(ξ₂) = e^{-5000} > 0 (it underflows in float64, but log P is finite) where
    Q(ξ₂) = 0 makes KL(P‖Q) = +∞; it returned 0. Exact zeros of P still contribute 0, and
    the per-prompt and per-token forms agree."""
    rho = np.ones(1)
    assert theory.kl(np.array([[0.0, -5000.0]]), np.array([[0.0, -np.inf]]), rho) == np.inf
    assert theory.kl_per_prompt(np.array([[0.0, -5000.0]]), np.array([[0.0, -np.inf]]))[0] == np.inf
    half = np.log(np.array([[0.5, 0.5]]))
    assert theory.kl(half, np.array([[0.0, -np.inf]]), rho) == np.inf
    assert theory.kl(np.array([[0.0, -np.inf]]), np.array([[0.0, -np.inf]]), rho) == 0.0
    nan = theory.kl(np.array([[0.0, np.nan]]), np.array([[0.0, -np.inf]]), rho)
    assert math.isnan(nan)  # NaN propagates


# ------------------------------------------------------------------ best-of-n


def _brute_best_of_n(p: np.ndarray, r_hat: np.ndarray, n: int) -> np.ndarray:
    """Best-of-n law by enumerating all N^n sample tuples; ties uniform over tied *samples*."""
    out = np.zeros_like(p)
    for tup in itertools.product(range(p.size), repeat=n):
        prob = math.prod(p[i] for i in tup)
        top = max(r_hat[i] for i in tup)
        winners = [i for i in tup if r_hat[i] == top]
        for i in winners:
            out[i] += prob / len(winners)
    return out


def test_best_of_n_tie_hand_case():
    # P = (.5, .3, .2), r̂ = (1, 0, 1), n = 2. The top level {0, 2} has mass .7, so it wins
    # with prob 1 − .3² = .91, shared 5:2 within the level → (.65, .09, .26). Check with leaf 0:
    # (0,0) .25 + (0,1),(1,0) 2·.15 + (0,2),(2,0) tie, each ½ → 2·.1·½ = .1 → .65.
    p = np.array([[0.5, 0.3, 0.2]])
    r_hat = np.array([[1.0, 0.0, 1.0]])
    out = np.exp(theory.best_of_n_logp(np.log(p), r_hat, 2))
    np.testing.assert_allclose(out, [[0.65, 0.09, 0.26]], atol=1e-15)
    np.testing.assert_allclose(out[0], _brute_best_of_n(p[0], r_hat[0], 2), atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_best_of_n_equals_enumeration(n):
    rng = np.random.default_rng(n)
    lp = random_leaf_logp(rng, 2, 4)
    r_hat = rng.integers(0, 3, size=(2, 4)).astype(float)  # few levels -> ties
    r_hat[0, :2] = 5.0  # a guaranteed tie at the top
    out = np.exp(theory.best_of_n_logp(lp, r_hat, n))
    for x in range(2):
        np.testing.assert_allclose(out[x], _brute_best_of_n(np.exp(lp[x]), r_hat[x], n), atol=1e-13)
    if n == 1:
        np.testing.assert_allclose(out, np.exp(lp), atol=1e-15)


def test_best_of_n_zero_mass_and_bad_n():
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[0.0, 0.6, 0.4]]))
    out = theory.best_of_n_logp(lp, np.array([[9.0, 1.0, 0.0]]), 3)
    assert out[0, 0] == -np.inf
    np.testing.assert_allclose(np.exp(out), [[0.0, 1 - 0.4**3, 0.4**3]])
    with pytest.raises(ValueError, match="n must be"):
        theory.best_of_n_logp(lp, np.zeros((1, 3)), 0)


def test_best_of_n_is_accurate_down_to_1e300():
    """Issue 19: P(best) = F^n − F_<^n cancelled (relative error 3.1e-4 at p = 1e-13, P = 0
    at p = 1e-17). Against the same law in 740-digit arithmetic (tests/mp_reference.py):
    relative error ≤ 1e-12 (the target is 1e-9) wherever P ≥ 1e-300, ties included."""
    from mp_reference import best_of_n_law

    for p_top in (1e-13, 1e-17, 1e-300):
        lp = np.log(np.array([[p_top, 0.3, 0.7 - p_top]]))
        r_hat = np.array([[2.0, 1.0, 0.0]])
        got, want = theory.best_of_n_logp(lp, r_hat, 25), best_of_n_law(lp, r_hat, 25)
        np.testing.assert_allclose(np.exp(got - want), 1.0, rtol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(3):
        lp = rng.uniform(-690.0, 0.0, (2, 7))
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        r_hat = rng.integers(0, 4, (2, 7)).astype(float)
        for n in (1, 2, 25):
            got, want = theory.best_of_n_logp(lp, r_hat, n), best_of_n_law(lp, r_hat, n)
            big = want >= np.log(1e-300)
            np.testing.assert_allclose(np.exp(got[big] - want[big]), 1.0, rtol=1e-12)


# ------------------------------------------------------------------ win rate


def _brute_win_rate(logp, logq, r, rho):
    """Σ_x ρ Σ_{ξ,ξ'} P(ξ) Q(ξ') σ(r(ξ) − r(ξ')) as an explicit double loop over leaves."""
    total = 0.0
    for x in range(r.shape[0]):
        for i in range(r.shape[1]):
            for j in range(r.shape[1]):
                d = r[x, i] - r[x, j]
                total += rho[x] * math.exp(logp[x, i] + logq[x, j]) * (1 / (1 + math.exp(-d)))
    return total


def test_win_rate_equals_double_sum():
    rng = np.random.default_rng(7)
    lp, lq = random_leaf_logp(rng, 2, 9), random_leaf_logp(rng, 2, 9)
    r = np.round(rng.standard_normal((2, 9)), 1)  # rounding creates repeated levels
    rho = np.array([0.3, 0.7])
    w = theory.win_rate(lp, lq, r, rho)
    assert w == pytest.approx(_brute_win_rate(lp, lq, r, rho), abs=1e-13)
    # antisymmetry: w(P, Q) + w(Q, P) = 1 since σ(d) + σ(−d) = 1
    assert w + theory.win_rate(lq, lp, r, rho) == pytest.approx(1.0, abs=1e-13)
    assert theory.win_rate(lp, lp, np.zeros((2, 9)), rho) == pytest.approx(0.5)


def test_win_rate_binned_error_bound():
    # 5000 distinct levels > WIN_RATE_EXACT_LEVELS: binned, |error| ≤ δ/4 with δ = range/4096.
    rng = np.random.default_rng(8)
    n = 5000
    lp, lq = random_leaf_logp(rng, 1, n), random_leaf_logp(rng, 1, n)
    r = 3.0 * rng.standard_normal((1, n))
    p, q = np.exp(lp[0]), np.exp(lq[0])
    exact = sum(
        float(p[i : i + 1024] @ expit(r[0, i : i + 1024, None] - r[0, None, :]) @ q)
        for i in range(0, n, 1024)
    )
    delta = np.ptp(r) / theory.metrics.WIN_RATE_EXACT_LEVELS
    assert abs(theory.win_rate(lp, lq, r, np.ones(1)) - exact) <= delta / 4


# ------------------------------------------------------------------ env metrics


def test_env_metrics_anchor_values():
    env = random_env(21, vocab=3, horizon=2, n_prompts=2, beta=0.5)
    m_star = env.metrics(env.logp_star)
    m_ref = env.metrics(env.logp_ref)
    assert m_star["J_norm"] == pytest.approx(1.0, abs=1e-12)
    assert m_star["kl_opt"] == pytest.approx(0.0, abs=1e-12)
    assert m_star["J"] == pytest.approx(env.j_star, abs=1e-12)
    assert m_ref["J_norm"] == pytest.approx(0.0, abs=1e-12)
    assert m_ref["kl_ref"] == pytest.approx(0.0, abs=1e-14)
    assert m_ref["win_rate"] == pytest.approx(0.5, abs=1e-12)
    assert m_ref["reward"] == pytest.approx(env.j_ref)
    # π* improves the reward and wins against π_ref under the true BT model
    assert m_star["reward"] > m_ref["reward"]
    assert m_star["win_rate"] > 0.5
    # J = reward − β kl_ref for both
    for m in (m_star, m_ref):
        assert m["J"] == pytest.approx(m["reward"] - env.beta * m["kl_ref"], abs=1e-12)


def test_env_metrics_nan_when_no_gap():
    env = make_env(vocab=2, horizon=2, r_star=np.ones(4))
    assert np.isnan(env.metrics(env.logp_ref)["J_norm"])


def test_make_env_validates_inputs():
    with pytest.raises(UserError, match="vocab"):
        make_env(vocab=1, horizon=2, r_star=np.zeros(1))
    with pytest.raises(UserError, match="beta"):
        make_env(vocab=2, horizon=2, beta=0.0, r_star=np.zeros(4))
    with pytest.raises(UserError, match="ref"):
        make_env(vocab=2, horizon=2, r_star=np.zeros(4), ref="peaked")
    with pytest.raises(UserError, match="ref_concentration"):
        make_env(vocab=2, horizon=2, r_star=np.zeros(4), ref="random", ref_concentration=0.0)


def test_make_env_reward_forms_and_features():
    # r* as a function of the token array: number of 1-tokens.
    env = make_env(
        vocab=2, horizon=2, n_prompts=2, r_star=lambda t: t.sum(1).astype(float), features=np.eye(4)
    )
    np.testing.assert_array_equal(env.r_star, [[0, 1, 1, 2]] * 2)
    assert env.features.shape == (2, 4, 4)
    np.testing.assert_allclose(env.rho, [0.5, 0.5])
    np.testing.assert_array_equal(env.tokens, theory.leaf_tokens(2, 2))


def test_log_softmax_matches_its_definition_and_keeps_minus_inf_rows() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 5)) * 50
    want = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - z.max(-1, keepdims=True)
    )
    np.testing.assert_allclose(theory.log_softmax(z), want, atol=1e-12)
    # a row of -inf (a state no token can reach) stays -inf, without NaN
    rows = np.array([[-np.inf, -np.inf], [0.0, -np.inf]])
    with np.errstate(all="raise"):
        out = theory.log_softmax(rows)
    assert np.all(out[0] == -np.inf) and out[1, 0] == 0.0 and out[1, 1] == -np.inf
    # a NaN or +inf logit (a diverged θ) poisons its row instead of passing for log-probs
    with np.errstate(invalid="ignore"):
        bad = theory.log_softmax(
            np.array([[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [0.0, 0.0, 0.0]])
        )
    assert np.isnan(bad[0]).all() and np.isnan(bad[1, 0]) and np.all(bad[1, 1:] == -np.inf)
    np.testing.assert_allclose(bad[2], np.log(1 / 3))


def test_win_rate_sigmoid_within_absolute_rounding_of_expit() -> None:
    x = np.linspace(-800, 800, 100_001)
    assert np.max(np.abs(theory.metrics._sigmoid(x) - expit(x))) <= 2.3e-16
