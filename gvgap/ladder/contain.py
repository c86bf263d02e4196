"""Containment of π* in the policy rungs, decided algebraically, and certified residuals.

**Containment** (exact, no optimiser). π* ∈ markovJ iff its tilt from π_ref,
log π*(a|s) − log π_ref(a|s) = V_{h+1}(s·a) − V_h(s) (soft values, :mod:`gvgap.theory.soft`),
depends on the state only through (x, h, c_J(s)) up to a per-state constant: set
θ[x, h, c, a] = that tilt and π_θ = π*; conversely every member's tilt has this form. So with
the centred tilt t_h(s, a) = V_{h+1}(s·a) − mean_a V_{h+1}(s·a),

    spread_J = max_{x, h, c, a} ( max_{s: c_J(s) = c} t_h(s, a) − min_{s: c_J(s) = c} t_h(s, a) ),

and π* ∈ markovJ iff spread_J = 0, decided as spread_J ≤ SPAN_RTOL·(1 + H)·max(1, max|V|)
(rounding of H levels of log-sum-exp on values of that size; :data:`gvgap.theory.spans.SPAN_RTOL`
= 2¹⁰ ε). Since π* ∈ markovJ iff r* − β log Z ∈ R(markovJ) (local-reward normalisation,
docs/theory.md §3), the same test decides whether offline DPO over markovJ is consistent.

**Residual** of a rung that does not contain π*: the reverse-KL projection
res(J) = min_θ E_x KL(P_θ ‖ P*) (= (J(π*) − max_{rung} J)/β, Gibbs identity). The problem is
not convex, so gvgap reports a *certified upper bound*: the KL of an actual member of the rung
(any member bounds the minimum). Candidates, best kept: θ = 0 (π_ref; first rung only); the
π*-weighted mean of
the centred tilts per context (a moment start, away from the saddle at θ = 0 that symmetric
checks create); the previous rung's best point embedded (so the bounds never increase up the
ladder, like the true residuals); then L-BFGS from the best candidate for at most
:data:`POLISH_ITERS` iterations (gradient norm reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from gvgap.envs.tree_env import TreeEnv
from gvgap.policies.markov import MarkovPolicy
from gvgap.theory import leaf_marginals
from gvgap.theory.spans import SPAN_RTOL

#: L-BFGS iterations polishing a residual bound (each costs one pass over the tree).
POLISH_ITERS = 10
#: L-BFGS iterations from every start before the best is polished (a start's value alone
#: does not tell which basin is lower: the mode start begins worse than θ = 0 on a symmetric
#: check, and ends at its optimum).
PROBE_ITERS = 2


def centred_tilts(env: TreeEnv) -> list[np.ndarray]:
    """t_h(s, a) = V_{h+1}(s·a) − mean_a V_{h+1}(s·a), per depth ``(m, V^h, V)``."""
    m, vocab = env.n_prompts, env.vocab
    out = []
    for h in range(env.horizon):
        v = env.soft_star.values[h + 1].reshape(m, -1, vocab)
        out.append(v - v.mean(axis=-1, keepdims=True))
    return out


def containment_tol(env: TreeEnv) -> float:
    """SPAN_RTOL·(1 + H)·max(1, max |V_h|): the rounding scale of the soft values."""
    scale = max(1.0, max(float(np.abs(v).max()) for v in env.soft_star.values))
    return SPAN_RTOL * (1 + env.horizon) * scale


def tilt_spread(tilts: list[np.ndarray], vocab: int, order: int) -> float:
    """spread_J of the module docstring (0 for the tabular rung J ≥ H − 1)."""
    out = 0.0
    for h, t in enumerate(tilts):
        if h <= order:  # the context is the whole prefix: one state per context
            continue
        m = t.shape[0]
        g = t.reshape(m, vocab ** (h - order), vocab**order, vocab)  # (x, older tokens, c, a)
        out = max(out, float((g.max(axis=1) - g.min(axis=1)).max()))
    return out


@dataclass(frozen=True)
class PolicyBound:
    """Certified upper bound on res(J) (module docstring).

    Attributes:
        value: KL(P_θ ‖ P*) of the best member found (nats, ρ-weighted).
        theta: that member's parameters (for the next rung's warm start).
        grad_norm: ‖∇‖ at it (0 when the rung contains π*).
        start: the candidate the polish started from (``ref``, ``moment``, ``mode``,
            ``previous``).
    """

    value: float
    theta: np.ndarray
    grad_norm: float
    start: str


def _kl_and_grad(pol: MarkovPolicy, theta: np.ndarray, env: TreeEnv) -> tuple[float, np.ndarray]:
    lp = pol.leaf_logp(theta)
    p = np.exp(lp)
    diff = lp - env.logp_star
    value = float(env.rho @ (p * diff).sum(axis=1))
    return value, pol.vjp(theta, env.rho[:, None] * p * (diff + 1.0))


def moment_start(env: TreeEnv, tilts: list[np.ndarray], pol: MarkovPolicy) -> np.ndarray:
    """θ[x, h, c, a] = E_{s ~ P*, c_J(s) = c} t_h(s, a) (uniform over states of zero mass)."""
    marg = leaf_marginals(np.exp(env.logp_star), env.vocab, env.horizon)  # [h] (m, V^h)
    num, den = [], []
    for h, t in enumerate(tilts):
        w = marg[h] + 1e-300
        num.append(w[..., None] * t)
        den.append(np.broadcast_to(w[..., None], t.shape))
    s_num, s_den = pol.pull(num), pol.pull(den)
    return np.where(s_den > 0, s_num / np.maximum(s_den, 1e-300), 0.0)


def mode_start(env: TreeEnv, tilts: list[np.ndarray], pol: MarkovPolicy) -> np.ndarray:
    """The moment start with, on the contexts met along each prompt's most probable leaf
    under P*, that path's own centred tilts: a deterministic symmetry breaker (a symmetric
    check leaves the moment start at the saddle θ = 0; the mode picks one of its optima)."""
    theta = moment_start(env, tilts, pol)
    best = np.argmax(env.logp_star, axis=1)  # (m,)
    m = env.n_prompts
    for h, t in enumerate(tilts):
        state = best // env.vocab ** (env.horizon - h)  # (m,) prefix state at depth h
        idx = pol.index[h][np.arange(m), state]  # (m, V)
        theta[idx] = t[np.arange(m), state]
    return theta


def embed(theta: np.ndarray, lower: MarkovPolicy, upper: MarkovPolicy) -> np.ndarray:
    """The parameters of ``upper`` (order J) that give the same policy as ``theta`` of
    ``lower`` (order < J): every context of ``upper`` reads its suffix context's logits."""
    out = np.zeros(upper.n_params)
    for idx_lo, idx_up in zip(lower.index, upper.index):
        out[idx_up.ravel()] = theta[idx_lo.ravel()]
    return out


def _polish(pol: MarkovPolicy, theta: np.ndarray, env: TreeEnv, iters: int):
    """(θ, KL) after at most ``iters`` L-BFGS iterations from θ (θ itself if no better)."""
    value = _kl_and_grad(pol, theta, env)[0]
    if iters <= 0:
        return theta, value
    opt = minimize(
        lambda th: _kl_and_grad(pol, th, env),
        theta,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": iters, "gtol": 1e-12, "ftol": 1e-15},
    )
    return (opt.x, float(opt.fun)) if opt.fun < value else (theta, value)


def policy_bound(
    env: TreeEnv,
    order: int,
    tilts: list[np.ndarray],
    previous: tuple[MarkovPolicy, np.ndarray] | None = None,
    polish_iters: int = POLISH_ITERS,
) -> tuple[MarkovPolicy, PolicyBound]:
    """The certified upper bound on res(J) (module docstring)."""
    pol = MarkovPolicy(env.n_prompts, env.vocab, env.horizon, order, env.logpi_ref)
    starts = {"moment": moment_start(env, tilts, pol), "mode": mode_start(env, tilts, pol)}
    if previous is None:
        starts["ref"] = pol.init_params()
    else:  # the previous rung's best point: its bound was already at most π_ref's KL
        starts["previous"] = embed(previous[1], previous[0], pol)
    probes = {k: _polish(pol, th, env, min(PROBE_ITERS, polish_iters)) for k, th in starts.items()}
    best = min(probes, key=lambda k: probes[k][1])
    theta, value = _polish(pol, probes[best][0], env, polish_iters)
    grad = _kl_and_grad(pol, theta, env)[1]
    return pol, PolicyBound(max(value, 0.0), theta, float(np.linalg.norm(grad)), best)
