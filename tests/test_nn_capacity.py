"""Capacity residuals (gvgap.nn.capacity): the regression objective is the hand-derived
fraction (1 at r = 0), both residuals vanish where the network contains its target and not
where it cannot, more capacity never measures worse, and the second-order J cost of a
verifier error matches the exact regret of π*_{r*+δ} (Gibbs identity, docs/theory.md §3)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap import theory as theory  # noqa: E402
from gvgap.envs.families import make_family  # noqa: E402
from gvgap.nn import capacity as capacity  # noqa: E402
from gvgap.nn.pipelines import Arch  # noqa: E402
from gvgap.nn.rewards import ScalarHeadRM  # noqa: E402

OPT = {"steps": 150, "lr": 0.03, "polish": 100}


def _arch(arch="mlp", width=16, depth=1):
    return Arch(arch, width, depth, 1, "fresh", placement())


def test_regression_objective_is_one_at_zero_reward():
    """r_w ≡ 0: Σ q (0 − r* − μ)² / Σ q (r* − μ*)² = 1 exactly (the numerator is the
    denominator), for any weights q and per-prompt constants."""
    env = random_env(0, vocab=3, horizon=2, n_prompts=2)
    rm = ScalarHeadRM(
        2, 3, 2, arch="mlp", width=4, depth=1, placement=placement(), n_models=2, seed=[0, 1]
    )
    q = np.stack([env.rho[:, None] * np.exp(env.logp_star)] * 2)
    fit = capacity.fit_regression(rm, np.stack([env.r_star] * 2), q, steps=0, polish=0)
    assert np.allclose(fit.info.loss, 1.0, atol=1e-14)
    shifted = env.r_star + np.array([[3.0], [-1.0]])  # per-prompt constants are free
    fit2 = capacity.fit_regression(rm, np.stack([shifted] * 2), q, steps=0, polish=0)
    assert np.allclose(fit2.info.loss, 1.0, atol=1e-14)


def test_residuals_vanish_when_the_networks_contain_the_targets():
    """A 2×2 tree (3 states, 4 leaves) with width-16 networks: both fit to ~0."""
    env = random_env(1, vocab=2, horizon=2)
    arch = _arch()
    pol = capacity.policy_capacity(arch.policy([env] * 2, [0, 1]), [env], 2, **OPT)[0]
    rew = capacity.reward_capacity(arch.reward([env] * 2, [0, 1]), [env], 2, **OPT)[0]
    assert pol["offline/capacity_residual"] < 1e-6
    assert rew["online/capacity_residual"] < 1e-6
    assert pol["offline/capacity_regret"] == pytest.approx(
        env.beta * pol["offline/capacity_residual"]
    )


def test_a_tiny_network_cannot_represent_a_random_policy_and_width_helps():
    """policy_complex on 3×3 (13 states of a random tabular π): a width-1 MLP keeps a clear
    KL floor; width 32 reaches a smaller one (best of 2 restarts each)."""
    env = make_family(
        "policy_complex", rng=np.random.default_rng(2), vocab=3, horizon=3, k=3, logit_scale=2.0
    )
    narrow = capacity.policy_capacity(_arch(width=1).policy([env] * 2, [0, 1]), [env], 2, **OPT)[0]
    wide = capacity.policy_capacity(_arch(width=32).policy([env] * 2, [0, 1]), [env], 2, **OPT)[0]
    assert narrow["offline/capacity_residual"] > 0.05
    assert wide["offline/capacity_residual"] < 0.5 * narrow["offline/capacity_residual"]
    rn = capacity.reward_capacity(_arch(width=1).reward([env] * 2, [0, 1]), [env], 2, **OPT)[0]
    assert rn["online/capacity_residual"] > 0.05


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_second_order_cost_matches_exact_regret(beta):
    """J(π*) − J(π*_{r*+εu}) = β KL(P*_{r*+εu} ‖ P*) = ε² Var_{P*}(u)/(2β) + O(ε³)."""
    env = random_env(3, vocab=3, horizon=3, n_prompts=2, beta=beta)
    u = np.random.default_rng(3).normal(size=env.r_star.shape)
    var_u = capacity._weighted_var(u, env.logp_star, env.rho)
    for eps in (1e-2, 1e-3):
        lp = theory.soft_optimal_leaf_logp(env.logp_ref, env.r_star + eps * u, beta)
        regret = env.j_star - env.objective(lp)
        assert regret / (eps**2 * var_u / (2 * beta)) == pytest.approx(1.0, abs=20 * eps)
