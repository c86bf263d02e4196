"""Exact evaluation of a policy on an enumerable tree (docs/theory.md §2–§3, docs/design.md §5
metrics).

Every function takes leaf log-probabilities ``(m, N)`` (N = V^H) and a prompt distribution
ρ ``(m,)``; expectations are exact sums, never samples.
"""

from __future__ import annotations

import numpy as np

from gvgap.theory.tree import NodeLogp, leaf_marginals

#: Above this many distinct reward values per prompt, win rates bin rewards (error ≤ δ/4).
WIN_RATE_EXACT_LEVELS = 4096
#: Rows per block in the N² pairwise-accuracy sums (bounds memory at ~8 MB per block array).
ACC_BLOCK = 1024


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = (1 + tanh(x/2))/2: overflow-free, absolute error ≤ 2.3e-16 (what a probability
    sum needs; not for log σ). numpy only, so that importing gvgap does not load scipy."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _xlogy_diff(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """P · (log P − log Q) elementwise, with 0 · (… ) = 0 where P = 0 exactly (log P = −∞) and
    +∞ where P > 0 and Q = 0 (log Q = −∞), even if P underflows in float64 (log P = −5000:
    disjoint support makes KL infinite, issue 19). NaN propagates."""
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        out = p * (logp - logq)
    out = np.where(logp == -np.inf, 0.0, out)
    return np.where((logq == -np.inf) & (logp > -np.inf), np.inf, out)


def expected_reward(logp: np.ndarray, r: np.ndarray, rho: np.ndarray) -> float:
    """E_x E_{ξ~π}[r(x, ξ)]."""
    return float(rho @ (np.exp(logp) * r).sum(axis=1))


def kl(logp: np.ndarray, logq: np.ndarray, rho: np.ndarray) -> float:
    """Trajectory KL: E_x KL(P(·|x) ‖ Q(·|x)) = Σ_x ρ Σ_ξ P (log P − log Q)."""
    return float(rho @ _xlogy_diff(logp, logq).sum(axis=1))


def kl_per_prompt(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(P(·|x) ‖ Q(·|x)) for each prompt, ``(m,)``."""
    return _xlogy_diff(logp, logq).sum(axis=1)


def entropy(logp: np.ndarray, rho: np.ndarray) -> float:
    """E_x H(P(·|x)) in nats."""
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        plogp = np.where(p > 0, p * logp, 0.0)
    return float(-(rho @ plogp.sum(axis=1)))


def per_token_kl(logpi_p: NodeLogp, logpi_q: NodeLogp, rho: np.ndarray) -> float:
    """Σ_h E_{s_h ~ P} KL(π_p(·|s_h) ‖ π_q(·|s_h)) — equals :func:`kl` on a tree (docs/theory.md
    §3).

    Args:
        logpi_p, logpi_q: node policies, ``[h]`` of shape ``(m, V^h, V)``.
    """
    from gvgap.theory.tree import node_to_leaf_logp

    m, _, vocab = logpi_p[0].shape
    horizon = len(logpi_p)
    marg = leaf_marginals(np.exp(node_to_leaf_logp(logpi_p)), vocab, horizon)
    tot = np.zeros(m)
    for h in range(horizon):
        step = _xlogy_diff(logpi_p[h], logpi_q[h]).sum(axis=-1)  # (m, V^h)
        tot += (marg[h] * step).sum(axis=1)
    return float(rho @ tot)


def objective_j(
    logp: np.ndarray, r: np.ndarray, logp_ref: np.ndarray, beta: float, rho: np.ndarray
) -> float:
    """J(π) = E_x E_π[r] − β KL(P_π ‖ P_ref) (docs/theory.md §2)."""
    return expected_reward(logp, r, rho) - beta * kl(logp, logp_ref, rho)


def win_rate(logp: np.ndarray, logp_ref: np.ndarray, r: np.ndarray, rho: np.ndarray) -> float:
    """Exact P(ξ ≻ ξ') under the true BT model, ξ ~ π, ξ' ~ π_ref, same prompt.

    Σ_x ρ Σ_{ξ,ξ'} P(ξ) P_ref(ξ') σ(r(ξ) − r(ξ')), computed over the distinct reward levels of
    each prompt (K levels → K² work). Above ``WIN_RATE_EXACT_LEVELS`` levels, rewards are
    rounded to a grid of width δ = range/WIN_RATE_EXACT_LEVELS (|error| ≤ δ/4 since σ' ≤ 1/4).
    """
    p, q = np.exp(logp), np.exp(logp_ref)
    out = 0.0
    for x in range(r.shape[0]):
        rx = r[x]
        levels, inv = np.unique(rx, return_inverse=True)
        if levels.size > WIN_RATE_EXACT_LEVELS:
            lo, hi = rx.min(), rx.max()
            delta = (hi - lo) / WIN_RATE_EXACT_LEVELS
            grid = np.round((rx - lo) / delta)
            levels, inv = np.unique(lo + grid * delta, return_inverse=True)
        pk = np.bincount(inv, weights=p[x], minlength=levels.size)
        qk = np.bincount(inv, weights=q[x], minlength=levels.size)
        out += rho[x] * float(pk @ _sigmoid(levels[:, None] - levels[None, :]) @ qk)
    return out


def best_of_n_logp(logp_base: np.ndarray, r_hat: np.ndarray, n: int) -> np.ndarray:
    """Exact output distribution of best-of-n: draw n i.i.d. ξ ~ P_base, return argmax r̂.

    Ties in r̂ are broken uniformly at random among the tied samples. For a level set L of r̂
    with base mass p_L, F = F_≤(L) the mass up to it and F_<(L) = F − p_L,
    P(out ∈ L) = F^n − F_<^n = F^n (1 − (1 − p_L/F)^n), evaluated without cancellation as
    log P = n log F + log(−expm1(n log1p(−p_L/F))) (log(1 − p_L/F) from log F_< − log F when
    p_L/F > 1/2), so that it is accurate to a few hundred ε relative down to P = 1e-300
    (issue 19: the difference of powers lost 3e-4 at p = 1e-13 and all at p = 1e-17). Shared
    within L in proportion to P_base.

    Args:
        logp_base: ``(m, N)``; r_hat: ``(m, N)``; n ≥ 1.

    Returns:
        ``(m, N)`` log-probabilities (−inf off the support).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = np.empty_like(logp_base, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for x in range(logp_base.shape[0]):
            levels, inv = np.unique(r_hat[x], return_inverse=True)
            mass = np.bincount(inv, weights=np.exp(logp_base[x]), minlength=levels.size)
            below = np.concatenate([[0.0], np.cumsum(mass)[:-1]])  # F_<(L): a sum, exact-ish
            upto = below + mass
            q = mass / upto
            log_1mq = np.where(q <= 0.5, np.log1p(-q), np.log(below) - np.log(upto))
            log_level = n * np.log(upto) + np.log(-np.expm1(n * log_1mq))
            share = np.where(mass > 0, log_level - np.log(mass), -np.inf)
            out[x] = np.where(np.isfinite(logp_base[x]), logp_base[x] + share[inv], -np.inf)
    return out


def pairwise_accuracy(
    r_hat: np.ndarray, r_star: np.ndarray, logq: np.ndarray, rho: np.ndarray, *, tie: float = 0.5
) -> float:
    """Exact ranking accuracy of ``r_hat`` against ``r_star`` on pairs ξ, ξ' ~ q i.i.d.

    acc = Σ_x ρ Σ_{ξ,ξ'} q q c / Σ_x ρ Σ_{ξ,ξ'} q q 1[r*(ξ) ≠ r*(ξ')], with c = 1 where r̂
    orders the pair as r* does, ``tie`` where r̂ ties it, 0 otherwise; pairs that r* ties are
    excluded. Exact r* / r̂ equality defines ties (snap numerically tied r̂ first).

    Args:
        r_hat, r_star, logq: ``(m, N)``; rho: ``(m,)``.

    Returns:
        accuracy in [0, 1]; nan if q puts no mass on pairs with distinct r*.
    """
    num = den = 0.0
    q_all = np.exp(logq)
    for x in range(r_star.shape[0]):
        q, rs, rh = q_all[x], r_star[x], r_hat[x]
        for lo in range(0, rs.size, ACC_BLOCK):
            sl = slice(lo, lo + ACC_BLOCK)
            s_star = np.sign(rs[sl, None] - rs[None, :])
            s_hat = np.sign(rh[sl, None] - rh[None, :])
            w = q[sl, None] * q[None, :] * (s_star != 0)
            score = np.where(s_hat == s_star, 1.0, np.where(s_hat == 0, tie, 0.0))
            num += rho[x] * float((w * score).sum())
            den += rho[x] * float(w.sum())
    return num / den if den > 0 else float("nan")
