"""How well a network class can represent the generator and the verifier of an instance:
capacity residuals, measured like containment on the class ladder (exactly, on the whole
tree, best of several restarts, with gradient norms).

- ``offline/capacity_residual`` = min_θ E_x KL(P_θ ‖ P*) (nats): the reverse-KL projection
  of π* = π*_{r*} on the policy class, i.e. exact RL on r* (Gibbs identity, docs/theory.md
  §3 and §12: J(π*) − J(π_θ) = β E_x KL(P_θ ‖ P*)), so ``offline/capacity_regret`` =
  β × the residual is the J the policy network cannot reach even with a perfect verifier.
- ``online/capacity_residual`` = min_w Σ_x ρ_x Var_{P*(·|x)}(r_w − r*) / Σ_x ρ_x
  Var_{P*(·|x)}(r*) ∈ [0, 1]: the π*-weighted squared error of r* up to one constant per
  prompt (the best constant is the π*-mean, so the error is a per-prompt variance), as a
  fraction of the π*-weighted, per-prompt-centred variance of r*. π* weights the leaves
  where RL goes; BT likelihood never sees per-prompt constants.
  ``online/capacity_cost`` = Σ_x ρ_x Var_{P*}(r_w − r*) / (2β) (J units): to second order in
  δ = r_w − r*, J(π*) − J(π*_{r_w}) = β KL(P*_{r_w} ‖ P*) = Var_{P*}(δ)/(2β) + O(δ³) (both KL
  directions agree at second order), the J cost of the verifier network with an
  unrestricted policy. ``online/capacity_regret`` = J(π*) − J(π*_{r_w}) exactly at the fit
  (soft value iteration) is reported beside it, but it is not a capacity measure: the
  π*-weighted fit leaves r_w free where π* has no mass, and π*_{r_w} moves there (at β = ¼
  a fit with 0.15 % residual variance measured 1.7 nats of regret).
- ``capacity_asymmetry`` = offline/capacity_regret − online/capacity_cost (J units, both
  "J lost by that network alone"): positive where the policy network is the tighter
  bottleneck (the verifier fits, the generator does not).

Each fit starts ``restarts`` models from different initialisations (all at π_ref / r = 0:
zero heads), runs the full optimiser and keeps the best; the spread of the restarts is
reported. Every restart of every instance in a batch is one stacked model of one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gvgap import theory as theory
from gvgap.nn import losses as losses
from gvgap.nn import train as TR
from gvgap.nn.device import import_torch

torch = import_torch()


def policy_capacity(policy, envs: Sequence, restarts: int, **opt) -> list[dict[str, float]]:
    """``offline/*`` capacity metrics of each env; ``policy`` holds len(envs)·restarts
    models (env-major: env i's restarts are models i·R … i·R + R − 1)."""
    rep = [e for e in envs for _ in range(restarts)]
    fit = TR.fit_rl(
        policy,
        np.stack([e.logp_ref for e in rep]),
        np.stack([e.r_star for e in rep]),
        beta=envs[0].beta,
        rho=np.stack([e.rho for e in rep]),
        **opt,
    )
    out = []
    for i, env in enumerate(envs):
        kls = np.array(
            [theory.kl(fit.out[i * restarts + r], env.logp_star, env.rho) for r in range(restarts)]
        )
        best = i * restarts + int(np.argmin(kls))
        out.append(
            {
                "offline/capacity_residual": float(kls.min()),
                "offline/capacity_regret": float(env.beta * kls.min()),
                "offline/capacity_grad_norm": float(fit.info.grad_norm[best]),
                "offline/capacity_spread": float(kls.max() - kls.min()),
            }
        )
    return out


def reward_capacity(rm, envs: Sequence, restarts: int, **opt) -> list[dict[str, float]]:
    """``online/*`` capacity metrics of each env (``rm``: len(envs)·restarts models,
    env-major)."""
    rep = [e for e in envs for _ in range(restarts)]
    q = np.stack([e.rho[:, None] * np.exp(e.logp_star) for e in rep])
    target = np.stack([e.r_star for e in rep])
    fit = fit_regression(rm, target, q, **opt)
    out = []
    for i, env in enumerate(envs):
        frac = fit.info.loss[i * restarts : (i + 1) * restarts]
        best = i * restarts + int(np.argmin(frac))
        r_w = fit.out[best]
        logp_w = theory.soft_optimal_leaf_logp(env.logp_ref, r_w, env.beta)
        var = _weighted_var(env.r_star, env.logp_star, env.rho)
        out.append(
            {
                "online/capacity_residual": float(frac.min()),
                "online/capacity_cost": float(frac.min() * var / (2 * env.beta)),
                "online/capacity_regret": float(env.j_star - env.objective(logp_w)),
                "online/capacity_grad_norm": float(fit.info.grad_norm[best]),
                "online/capacity_spread": float(frac.max() - frac.min()),
            }
        )
    return out


def fit_regression(rm, target: np.ndarray, q: np.ndarray, **opt) -> TR.Fit:
    """Minimise Σ_x Σ_ξ q (r_w − r* − μ_x)² / Σ_x Σ_ξ q (r* − μ*_x)² over each model of
    ``rm`` (``target``, ``q``: ``(B, m, N)``; μ the q-weighted per-prompt means): the
    fraction of q-weighted per-prompt variance of r* that r_w leaves unexplained."""
    import copy

    mod = copy.deepcopy(rm)
    space = mod.leaf_space
    p0 = next(mod.parameters())
    r_t = torch.as_tensor(space.pack(list(target)), dtype=p0.dtype, device=p0.device)
    q_t = torch.as_tensor(space.pack(list(q)), dtype=p0.dtype, device=p0.device)
    m, n = space.n_prompts, space.n_leaves
    denom = losses.weighted_centred_sq_rows(r_t, q_t, m, n)
    if bool((denom <= 0).any()):
        raise ValueError("r* is constant under π* on some instance: no variance to explain")

    def objective(rew, rows):
        return losses.weighted_centred_sq_rows(rew - r_t, q_t, m, n) / denom

    info = TR.optimise(mod, objective, {**opt, "batch_size": 0})
    return TR.Fit(TR.outputs(mod, space), info, np.zeros(len(target)), mod)


def _weighted_var(r: np.ndarray, logp: np.ndarray, rho: np.ndarray) -> float:
    """Σ_x ρ_x Var_{P(·|x)}(r), ``(m, N)`` arrays."""
    p = np.exp(logp)
    mu = (p * r).sum(axis=1, keepdims=True)
    return float(rho @ (p * (r - mu) ** 2).sum(axis=1))


def asymmetry(offline: dict, online: dict) -> float:
    """``capacity_asymmetry`` (module docstring)."""
    return float(offline["offline/capacity_regret"] - online["online/capacity_cost"])
