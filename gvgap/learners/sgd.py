"""Finite-compute stochastic trainers (H3): Adam or SGD on sampled minibatches.

Every trainer takes a budget of ``steps`` stochastic gradient steps and records the policy at
``checkpoints`` (steps after which the parameters are read), so pipelines can be compared at
equal compute. Objectives are the library's (docs/design.md §3), estimated on samples:

- DPO: the minibatch mean of the DPO loss on ``batch`` pairs drawn with replacement from D
  (probability ∝ weight), plus the exact reward-coordinate prior (λ/Σw) Ω(r_θ) — an unbiased
  estimate of the full-batch objective of :func:`gvgap.learners.dpo`;
- the RM: the same for the BT loss of a reward class (:func:`gvgap.learners.fit_reward`);
- soft RL: RLOO (REINFORCE with a leave-one-out baseline, Kool et al. 2019) on
  J_r̂(θ) = E_θ[r̂] − β KL(P_θ‖P_ref): per step ``prompts`` prompts x ~ ρ, ``k`` samples each,
  sequence reward R = r̂(x,ξ) − β(log P_θ(ξ|x) − log P_ref(ξ|x)), advantage R − mean of the
  other k − 1 samples' R, gradient estimate mean(adv ∇ log P_θ(ξ|x)) (unbiased, since
  E ∇ log P_θ = 0).

No global RNG: every draw comes from the ``rng`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gvgap import losses
from gvgap.data import Preferences, sample_leaves, sample_prompts
from gvgap.envs.tree_env import TreeEnv
from gvgap.learners.offline import scatter

OPTIMISERS = ("adam", "sgd")
#: Plain SGD clips its step to this gradient norm (the DPO gradient scales with β, so an
#: unclipped step at β = 1e3 overflows; Adam is scale-free and needs no clip).
SGD_CLIP = 10.0


def run_steps(
    grad: Callable[[np.ndarray], np.ndarray],
    theta0: np.ndarray,
    *,
    steps: int,
    lr: float,
    checkpoints: tuple[int, ...] = (),
    optimiser: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``steps`` updates θ ← θ − lr · u(g) with g = ``grad(θ)`` (stochastic), u = Adam
    (bias-corrected moments) or SGD with the gradient clipped to norm ``SGD_CLIP``:
    u = g · min(1, SGD_CLIP / ‖g‖).

    Returns:
        the final θ and ``{step: θ after that many steps}`` for each checkpoint ≤ steps.
    """
    if optimiser not in OPTIMISERS:
        raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {optimiser!r}")
    theta = np.array(theta0, dtype=np.float64, copy=True)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    saved = {0: theta.copy()} if 0 in checkpoints else {}
    for t in range(1, steps + 1):
        g = grad(theta)
        if optimiser == "adam":
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            step = (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
        else:
            norm = float(np.linalg.norm(g))
            step = g * (SGD_CLIP / norm) if norm > SGD_CLIP else g
        theta -= lr * step
        if t in checkpoints:
            saved[t] = theta.copy()
    return theta, saved


def _draw(data: Preferences, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` row indices of D drawn with replacement, probability ∝ weight."""
    return rng.choice(len(data), size=batch, p=data.weight / data.weight.sum())


def dpo_grad(policy, env: TreeEnv, data: Preferences, *, lam: float, batch: int, rng):
    """The stochastic gradient of DPO + (λ/Σw) Ω(r_θ) on ``batch`` sampled pairs."""
    shape, beta, w_total = env.logp_ref.shape, env.beta, float(data.weight.sum())

    def grad(theta):
        i = _draw(data, batch, rng)
        p, c, r = data.prompt[i], data.chosen[i], data.rejected[i]
        lp = policy.leaf_logp(theta)
        ref = env.logp_ref
        _, (dc, dr) = losses.dpo_loss(lp[p, c], lp[p, r], ref[p, c], ref[p, r], beta,
                                      np.ones(batch))  # fmt: skip
        g = scatter(dc, p, c, shape) + scatter(dr, p, r, shape)
        if lam:
            g = g + beta * (lam / w_total) * losses.centred_sq(beta * (lp - ref))[1]
        return policy.vjp(theta, g)

    return grad


def rm_grad(reward_class, data: Preferences, shape, *, lam: float, batch: int, rng):
    """The stochastic gradient of the BT loss + (λ/Σw) Ω(r_w) on ``batch`` sampled pairs."""
    w_total = float(data.weight.sum())

    def grad(w):
        i = _draw(data, batch, rng)
        p, c, r = data.prompt[i], data.chosen[i], data.rejected[i]
        rew = reward_class.leaf_reward(w)
        _, d = losses.bt_nll(rew[p, c] - rew[p, r], np.ones(batch))
        g = scatter(d, p, c, shape) - scatter(d, p, r, shape)
        if lam:
            g = g + (lam / w_total) * losses.centred_sq(rew)[1]
        return reward_class.vjp(w, g)

    return grad


def rloo_grad(
    policy, env: TreeEnv, r_hat: np.ndarray, *, prompts: int, k: int, rng, beta: float | None = None
):
    """The RLOO estimate of −∇ J_r̂(θ) from ``prompts`` × ``k`` on-policy samples, with the KL
    strength ``beta`` (default ``env.beta``)."""
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    shape = env.logp_ref.shape
    beta = env.beta if beta is None else float(beta)

    def grad(theta):
        lp = policy.leaf_logp(theta)
        x = np.repeat(sample_prompts(env.rho, prompts, rng), k)
        xi = sample_leaves(lp, x, rng)
        rew = (r_hat[x, xi] - beta * (lp[x, xi] - env.logp_ref[x, xi])).reshape(prompts, k)
        adv = rew - (rew.sum(axis=1, keepdims=True) - rew) / (k - 1)
        return policy.vjp(theta, scatter(-adv.ravel() / (prompts * k), x, xi, shape))

    return grad
