"""Policy and reward classes: exact VJPs against finite differences, expressivity, features."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_fd, random_env, random_leaf_logp

from gvgap import theory
from gvgap.policies import LogLinearPolicy, SoftOptimalPolicy, TabularPolicy, markov_features
from gvgap.policies.classes import edge_sums
from gvgap.rewards import LinearReward, LocalReward, TabularReward

M, V, H = 2, 3, 2  # small tree: 2 prompts × 9 leaves


def _check_policy_vjp(policy, seed: int, atol: float = 1e-7) -> None:
    """vjp(θ, g) equals the central-difference gradient of θ ↦ Σ g · leaf_logp(θ)."""
    rng = np.random.default_rng(seed)
    theta = 0.7 * rng.standard_normal(policy.n_params)
    g = rng.standard_normal(policy.leaf_logp(theta).shape)
    fd = central_fd(lambda t: float((g * policy.leaf_logp(t)).sum()), theta)
    np.testing.assert_allclose(policy.vjp(theta, g), fd, rtol=1e-6, atol=atol)


def _check_reward_vjp(reward, seed: int) -> None:
    """vjp(w, g) equals the central-difference gradient of w ↦ Σ g · leaf_reward(w)."""
    rng = np.random.default_rng(seed)
    w = 0.7 * rng.standard_normal(reward.n_params)
    g = rng.standard_normal(reward.leaf_reward(w).shape)
    fd = central_fd(lambda t: float((g * reward.leaf_reward(t)).sum()), w)
    np.testing.assert_allclose(reward.vjp(w, g), fd, rtol=1e-6, atol=1e-7)


def _assert_normalised(policy, theta) -> None:
    """Leaf and node distributions of ``policy`` at ``theta`` are normalised and consistent."""
    lp = policy.leaf_logp(theta)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, atol=1e-12)
    node = policy.node_logp(theta)
    for a in node:
        np.testing.assert_allclose(np.exp(a).sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(theory.node_to_leaf_logp(node), lp, atol=1e-10)


# ------------------------------------------------------------------ policy VJPs


@pytest.mark.parametrize(("m", "v", "h"), [(1, 2, 1), (2, 2, 3), (M, V, H)])
def test_tabular_policy_vjp(m, v, h):
    pol = TabularPolicy(m, v, h)
    assert pol.n_params == m * sum(v ** (k + 1) for k in range(h))
    _check_policy_vjp(pol, seed=v + h)
    _assert_normalised(pol, np.random.default_rng(0).standard_normal(pol.n_params))


@pytest.mark.parametrize("kind", ["position_token", "bigram", "position_bigram"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_loglinear_policy_vjp(kind, with_offset):
    env = random_env(1, vocab=V, horizon=3, n_prompts=M)
    offset = env.logpi_ref if with_offset else None
    pol = LogLinearPolicy(markov_features(M, V, 3, kind), offset)
    _check_policy_vjp(pol, seed=2)
    _assert_normalised(pol, np.random.default_rng(3).standard_normal(pol.n_params))


@pytest.mark.parametrize("reward_kind", ["linear", "tabular"])
def test_soft_optimal_policy_vjp(reward_kind):
    env = random_env(4, vocab=V, horizon=H, n_prompts=M, beta=0.6, n_features=3)
    rc = LinearReward(env.features) if reward_kind == "linear" else TabularReward(M, V**H)
    pol = SoftOptimalPolicy(rc, env.logp_ref, env.beta, V, H)
    _check_policy_vjp(pol, seed=5)
    _assert_normalised(pol, np.random.default_rng(6).standard_normal(pol.n_params))


def test_soft_optimal_policy_is_soft_vi_of_its_reward():
    env = random_env(7, vocab=2, horizon=3, n_prompts=M, beta=0.4, n_features=2)
    rc = LinearReward(env.features)
    pol = SoftOptimalPolicy(rc, env.logp_ref, env.beta, 2, 3)
    w = np.array([0.5, -1.2])
    np.testing.assert_allclose(
        pol.leaf_logp(w),
        theory.soft_optimal(env.logpi_ref, rc.leaf_reward(w), env.beta),
        atol=1e-12,
    )
    np.testing.assert_allclose(pol.leaf_logp(pol.init_params()), env.logp_ref, atol=1e-12)


# ------------------------------------------------------------------ reward VJPs


def test_tabular_reward():
    rc = TabularReward(M, 4)
    w = np.arange(8.0)
    np.testing.assert_array_equal(rc.leaf_reward(w), w.reshape(2, 4))
    np.testing.assert_array_equal(rc.init_params(), np.zeros(8))
    _check_reward_vjp(rc, 8)


def test_linear_reward():
    phi = np.random.default_rng(9).standard_normal((M, 5, 3))
    rc = LinearReward(phi)
    w = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(rc.leaf_reward(w), np.einsum("xnk,k->xn", phi, w))
    _check_reward_vjp(rc, 10)


@pytest.mark.parametrize("with_ref", [False, True])
def test_local_reward(with_ref):
    env = random_env(11, vocab=2, horizon=2, n_prompts=M, beta=0.8)
    pol = TabularPolicy(M, 2, 2)
    rc = LocalReward(pol, env.logp_ref if with_ref else None, beta=env.beta)
    _check_reward_vjp(rc, 12)
    theta = np.random.default_rng(13).standard_normal(pol.n_params)
    lp = pol.leaf_logp(theta)
    ref = env.logp_ref if with_ref else None
    np.testing.assert_allclose(rc.leaf_reward(theta), theory.local_reward(lp, ref, env.beta))
    if with_ref:  # normalisation: soft RL on r_π returns π
        np.testing.assert_allclose(
            theory.soft_optimal(env.logpi_ref, rc.leaf_reward(theta), env.beta), lp, atol=1e-12
        )


# ------------------------------------------------------------------ expressivity and init


def test_tabular_policy_represents_any_full_support_distribution():
    rng = np.random.default_rng(14)
    pol = TabularPolicy(M, V, H)
    for _ in range(5):
        lp = random_leaf_logp(rng, M, V**H, scale=3.0)
        theta = pol.params_from_node_logp(theory.leaf_to_node_logp(lp, V, H))
        assert theta.shape == (pol.n_params,)
        np.testing.assert_allclose(pol.leaf_logp(theta), lp, atol=1e-12)


def test_tabular_policy_init():
    env = random_env(15, vocab=V, horizon=H, n_prompts=M)
    np.testing.assert_allclose(
        TabularPolicy(M, V, H, init=env.logpi_ref).leaf_logp(
            TabularPolicy(M, V, H, init=env.logpi_ref).init_params()
        ),
        env.logp_ref,
        atol=1e-12,
    )
    uni = TabularPolicy(M, V, H)
    np.testing.assert_allclose(uni.leaf_logp(uni.init_params()), -H * np.log(V))


def test_loglinear_offset_zero_params_is_reference():
    env = random_env(16, vocab=V, horizon=H, n_prompts=M)
    pol = LogLinearPolicy(markov_features(M, V, H), env.logpi_ref)
    np.testing.assert_allclose(pol.leaf_logp(pol.init_params()), env.logp_ref, atol=1e-12)


def test_markov_features_layout():
    # V = 2, H = 2. position_token: d = H V = 4, feature index h V + a.
    pt = markov_features(1, 2, 2, "position_token")
    assert [f.shape for f in pt] == [(1, 1, 2, 4), (1, 2, 2, 4)]
    assert pt[1][0, 1, 0].tolist() == [0, 0, 1, 0]  # depth 1, token 0 -> index 1·2 + 0
    # bigram: d = (V+1) V = 6, index prev·V + a with prev = V (start symbol) at depth 0
    bg = markov_features(1, 2, 2, "bigram")
    assert bg[0].shape[-1] == 6
    assert np.flatnonzero(bg[0][0, 0, 1]).tolist() == [2 * 2 + 1]
    # depth-1 state s = 1 means the previous token was 1: token 0 -> index 1·2 + 0 = 2
    assert np.flatnonzero(bg[1][0, 1, 0]).tolist() == [2]
    pb = markov_features(3, 2, 2, "position_bigram")
    assert pb[1].shape == (3, 2, 2, 4 + 6)
    for f in pb:  # exactly one position and one bigram indicator per (state, token)
        np.testing.assert_array_equal(f.sum(-1), 2.0)
    with pytest.raises(ValueError, match="features"):
        markov_features(1, 2, 2, "trigram")


def test_edge_sums():
    # g over 4 leaves of a V=2, H=2 tree: depth 0 sums the two subtrees.
    g = np.array([[1.0, 2.0, 3.0, 4.0]])
    sums = edge_sums(g, 2, 2)
    np.testing.assert_array_equal(sums[0], [[[3.0, 7.0]]])
    np.testing.assert_array_equal(sums[1], [[[1.0, 2.0], [3.0, 4.0]]])
