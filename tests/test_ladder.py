"""Class ladders (policies markovJ, reward windows) and the gap measured on an instance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import central_fd, random_env

from gvgap import theory as T
from gvgap.envs import make_family
from gvgap.envs.features import position_token, position_window
from gvgap.envs.ladder import CONTAIN_TOL, ladder_gap, policy_residual, smallest_reward_rung
from gvgap.errors import UserError
from gvgap.policies import TabularPolicy
from gvgap.policies.ladder import MarkovPolicy, policy_dim, policy_order


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("with_offset", [False, True])
def test_markov_policy_vjp_matches_finite_differences(order, with_offset):
    env = random_env(3, vocab=3, horizon=3, n_prompts=2)
    pol = MarkovPolicy(2, 3, 3, order, env.logpi_ref if with_offset else None)
    rng = np.random.default_rng(order)
    theta = 0.7 * rng.standard_normal(pol.n_params)
    g = rng.standard_normal((2, 27))
    fd = central_fd(lambda t: float((g * pol.leaf_logp(t)).sum()), theta)
    np.testing.assert_allclose(pol.vjp(theta, g), fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.exp(pol.leaf_logp(theta)).sum(1), 1.0, atol=1e-12)


def test_policy_dims_by_hand():
    # V=3, H=4: product Σ_h 1·2 = 8; markov1 (1+3+3+3)·2 = 20; markov2 (1+3+9+9)·2 = 44;
    # tabular V^H − 1 = 80 (= markov3); two prompts double each.
    assert [policy_dim(j, 1, 3, 4) for j in range(4)] == [8, 20, 44, 80]
    assert policy_dim(1, 2, 3, 4) == 40
    assert policy_order("product", 4) == 0 and policy_order("tabular", 4) == 3
    assert policy_order("markov7", 4) == 3
    with pytest.raises(UserError, match="policy_class"):
        policy_order("markovX", 4)


def test_markov_top_rung_is_tabular():
    """markov(H−1) sees the whole prefix: with a uniform base, θ = tabular logits gives the
    same policy, and DPO over either class reaches the same optimum."""
    m, v, h = 2, 2, 3
    rng = np.random.default_rng(0)
    tab = TabularPolicy(m, v, h)
    mk = MarkovPolicy(m, v, h, h - 1)
    theta = rng.standard_normal(tab.n_params)
    assert mk.n_params == tab.n_params
    # both lay parameters out as (prompt, depth, state, token) blocks
    blocks = np.split(theta, np.cumsum(tab.sizes)[:-1])
    mk_theta = np.concatenate(
        [np.concatenate([b.reshape(m, -1)[x] for b in blocks]) for x in range(m)]
    )
    np.testing.assert_allclose(mk.leaf_logp(mk_theta), tab.leaf_logp(theta), atol=1e-12)
    from gvgap.data import sample_pairs
    from gvgap.learners import dpo

    env = random_env(1, vocab=v, horizon=h, n_prompts=m, ref="uniform")
    data = sample_pairs(env.logp_ref, env.r_star, env.rho, 40, np.random.default_rng(1))
    a = dpo(TabularPolicy(m, v, h, init=env.logpi_ref), env, data, lam=0.1)
    b = dpo(MarkovPolicy(m, v, h, h - 1, env.logpi_ref), env, data, lam=0.1)
    np.testing.assert_allclose(a.logp, b.logp, atol=1e-6)


def test_ladder_is_nested():
    """markovJ ⊂ markov(J+1): copying θ_J onto every longer context reproduces the policy;
    window rungs are nested spans; window0 = position_token; window(H−1) spans every reward."""
    v, h = 3, 3
    rng = np.random.default_rng(2)
    for j in range(h - 1):
        small, big = MarkovPolicy(1, v, h, j), MarkovPolicy(1, v, h, j + 1)
        theta = rng.standard_normal(small.n_params)
        emb = np.zeros(big.n_params)
        for ia, ib in zip(small._index, big._index):
            emb[ib.ravel()] = theta[ia.ravel()]
        np.testing.assert_allclose(big.leaf_logp(emb), small.leaf_logp(theta), atol=1e-12)
    tokens = T.leaf_tokens(v, h)
    np.testing.assert_array_equal(position_window(tokens, v, 0), position_token(tokens, v))
    ranks = [np.linalg.matrix_rank(position_window(tokens, v, j)) for j in range(h)]
    both = [
        np.linalg.matrix_rank(
            np.hstack([position_window(tokens, v, j), position_window(tokens, v, j + 1)])
        )
        for j in range(h - 1)
    ]
    assert ranks == sorted(ranks) and both == ranks[1:]
    assert ranks[-1] == v**h  # with the constant inside: every reward
    env = random_env(4, vocab=v, horizon=h, ref="uniform")
    res = [policy_residual(env, j) for j in range(h)]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(res)) and res[-1] == 0.0


def _family(name, **kw):
    return make_family(name, rng=np.random.default_rng(0), **kw)


def test_gap_additive_reward_gives_product_policy():
    """r* additive over positions, uniform π_ref ⇒ soft values add, π*(a|s) ∝ exp(r_h(a)/β)
    (THEORY §3): π* is a product policy, dim_pi_min = H(V−1) = 8 at V=3, H=4; with all 12
    position×token columns as the oracle, dim_r_min = rank = 8 too, so gap = 0."""
    env = _family("linear", vocab=3, horizon=4, dictionary="position_token", k=12)
    g = ladder_gap(env)
    assert g["pi_order_min"] == 0 and g["dim_pi_min"] == 8
    assert g["res_pi/product"] <= CONTAIN_TOL
    assert g["dim_r_min"] == 8 and g["gap"] == 0.0
    sub = ladder_gap(_family("linear", vocab=3, horizon=4, dictionary="position_token", k=3))
    assert sub["dim_r_min"] == 3 and sub["gap"] == pytest.approx(np.log(8 / 3))


def test_gap_planning_check_needs_a_larger_rung():
    """sum_mod: the last token must fix Σ a_h mod V, which depends on the whole prefix, so no
    markovJ with J < H−1 contains π* (residual > 0) and Π_min = tabular; R_min = the single
    check indicator (dim 1): gap = log(V^H − 1)."""
    env = _family("planning", vocab=2, horizon=4, k=1, check="sum_mod")
    g = ladder_gap(env)
    assert g["pi_order_min"] == 3 and g["dim_pi_min"] == 15 and g["dim_r_min"] == 1
    assert all(g[f"res_pi/{r}"] > 1e-3 for r in ("product", "markov1", "markov2"))
    assert g["gap"] == pytest.approx(np.log(15))
    assert smallest_reward_rung(g) == "oracle"


def test_gap_window_reward_gives_markov1_policy():
    """r* = Σ_h f_h(a_{h−1}, a_h) ⇒ the soft value after a prefix depends only on its last
    token (uniform π_ref), so π* ∈ markov1 but not product; r* ∈ window1 ⊄ window0."""
    env = _family("linear", vocab=2, horizon=4, dictionary="window1", k=14)
    g = ladder_gap(env)
    assert g["pi_order_min"] == 1 and g["r_order_min"] == 1
    assert g["res_pi/product"] > 1e-3 and g["res_r/window0"] > 1e-3


def test_patterned_dictionary_names():
    from gvgap.envs.features import dictionary, dictionary_size

    tokens = T.leaf_tokens(3, 3)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(
        dictionary("ngram2", tokens, 3, rng), dictionary("ngram", tokens, 3, rng, n=2)
    )
    # window1 at V=3, H=3: blocks V, V², V² → 3 + 9 + 9 = 21 columns
    assert dictionary_size("window1", 3, 3) == 21 == dictionary("window1", tokens, 3, rng).shape[1]
    with pytest.raises(UserError, match="dictionary"):
        dictionary_size("windowX", 3, 3)
