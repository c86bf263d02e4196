"""The generation–verification gap measured on an instance (DESIGN §5 gap metrics).

Policy ladder (:mod:`gvgap.policies.ladder`): markovJ for J = 0 (product) … H − 1 (tabular),
each a set of policies tilted from π_ref. Residual of rung J: the reverse-KL projection

    res_π(J) = min_{θ} E_x KL(P_θ(·|x) ‖ P*(·|x))      (nats; J(π*) − max_J J = β res_π(J))

found by converged L-BFGS from θ = 0 (π_ref); 0 for the tabular rung (π* ∈ Π, THEORY §2).

Reward ladder: the instance's generating (``oracle``) features ``env.features`` (shared w),
and the window rungs ``window<J>`` (J = 0 … H − 1; per-prompt w; window(H−1) = tabular).
Residual: the ρ-weighted fraction of Var_ξ r*(x, ·) outside span{1, rung} (least squares);
dimension: the rank of the centred rung features (× m for per-prompt rungs).

A rung *contains* π* (r*) when its residual is ≤ :data:`CONTAIN_TOL`. Then

    dim_pi_min = dim of the smallest policy rung containing π*,
    dim_r_min  = dim of the smallest reward rung containing r*,
    gap        = log(dim_pi_min / dim_r_min).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from gvgap.envs.features import position_window
from gvgap.envs.tree_env import TreeEnv
from gvgap.policies.ladder import MarkovPolicy, policy_dim, rung_name

#: A rung contains π* (r*) when its residual (KL nats; variance fraction) is at most this.
CONTAIN_TOL = 1e-6
_GTOL = 1e-11


def policy_residual(env: TreeEnv, order: int) -> float:
    """res_π(J) = min_θ E_x KL(P_θ ‖ P*) over rung markovJ (module docstring)."""
    if order >= env.horizon - 1:
        return 0.0
    pol = MarkovPolicy(env.n_prompts, env.vocab, env.horizon, order, env.logpi_ref)
    ls, rho = env.logp_star, env.rho

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        lp = pol.leaf_logp(theta)
        p = np.exp(lp)
        value = float(rho @ (p * (lp - ls)).sum(axis=1))
        return value, pol.vjp(theta, rho[:, None] * p * (lp - ls + 1.0))

    opt = minimize(
        fg,
        pol.init_params(),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": _GTOL, "ftol": 1e-15, "maxiter": 5000},
    )
    return max(float(opt.fun), 0.0)


def _centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=-2, keepdims=True)


def reward_residual(env: TreeEnv, features: np.ndarray, *, shared: bool) -> tuple[float, int]:
    """(fraction of ρ-weighted Var r* outside span{1, features}, rung dimension).

    Args:
        features: ``(N, D)`` (per-prompt w, dim = m rank) or ``(m, N, D)`` with ``shared``
            w across prompts (dim = rank of the stacked centred features).
    """
    r = env.r_star - env.r_star.mean(axis=1, keepdims=True)
    wt = np.sqrt(env.rho / env.n_leaves)
    tot = float((wt[:, None] ** 2 * r**2).sum())
    if shared:
        f = _centred(np.broadcast_to(features, (env.n_prompts, *features.shape[-2:])))
        a = (f * wt[:, None, None]).reshape(-1, f.shape[-1])
        y = (r * wt[:, None]).ravel()
        res = y - a @ np.linalg.lstsq(a, y, rcond=None)[0]
        dim = int(np.linalg.matrix_rank(a, tol=1e-9)) if a.size else 0
        return (float(res @ res) / tot if tot > 1e-300 else 0.0), dim
    f = _centred(features)
    coef = np.linalg.lstsq(f, r.T, rcond=None)[0]  # (D, m): one w per prompt
    res = (r.T - f @ coef) * wt[None, :]
    dim = env.n_prompts * int(np.linalg.matrix_rank(f, tol=1e-9))
    return (float((res**2).sum()) / tot if tot > 1e-300 else 0.0), dim


def ladder_gap(env: TreeEnv, *, oracle: np.ndarray | None = None) -> dict[str, float]:
    """Residuals of every rung and the gap metrics of the instance (module docstring).

    Args:
        env: the instance.
        oracle: generating features ``(m, N, k)`` (default ``env.features``; None → no
            oracle rung).

    Returns:
        dict of floats: ``res_pi/<rung>`` and ``dim_pi/<rung>`` per policy rung,
        ``res_r/<rung>`` and ``dim_r/<rung>`` per reward rung, ``pi_order_min`` (J of the
        smallest policy rung containing π*), ``r_order_min`` (smallest window J containing r*),
        ``dim_pi_min``, ``dim_r_min``, ``gap``.
    """
    m, vocab, horizon = env.n_prompts, env.vocab, env.horizon
    out: dict[str, float] = {}
    pi_min = None
    for order in range(horizon):
        name = rung_name(order, horizon)
        res = policy_residual(env, order)
        out[f"res_pi/{name}"] = res
        out[f"dim_pi/{name}"] = float(policy_dim(order, m, vocab, horizon))
        if pi_min is None and res <= CONTAIN_TOL:
            pi_min = order
    rungs: list[tuple[str, float, int]] = []
    oracle = env.features if oracle is None else oracle
    if oracle is not None:
        rungs.append(("oracle", *reward_residual(env, oracle, shared=True)))
    r_order = None
    for order in range(horizon):
        res, dim = reward_residual(env, position_window(env.tokens, vocab, order), shared=False)
        rungs.append((f"window{order}", res, dim))
        if r_order is None and res <= CONTAIN_TOL:
            r_order = order
    for name, res, dim in rungs:
        out[f"res_r/{name}"], out[f"dim_r/{name}"] = res, float(dim)
    dim_r = min(dim for _, res, dim in rungs if res <= CONTAIN_TOL)
    dim_pi = policy_dim(pi_min, m, vocab, horizon)
    out |= {
        "pi_order_min": float(pi_min),
        "r_order_min": float(r_order),
        "dim_pi_min": float(dim_pi),
        "dim_r_min": float(dim_r),
        "gap": float(np.log(dim_pi / max(dim_r, 1))),
    }
    return out


def smallest_reward_rung(gap: dict[str, float]) -> str:
    """Name of the smallest reward rung containing r* (``oracle`` or ``window<J>``)."""
    best = None
    for key, res in gap.items():
        if key.startswith("res_r/") and res <= CONTAIN_TOL:
            name = key[len("res_r/") :]
            dim = gap[f"dim_r/{name}"]
            if best is None or dim < best[1]:
                best = (name, dim)
    return best[0]
