"""The gap descriptor of a problem instance (``env.info["gap"]``; definitions in the
:mod:`gvgap.envs.families` docstring)."""

from __future__ import annotations

import numpy as np

from gvgap.envs.tree_env import TreeEnv
from gvgap.theory import kl, log_softmax, spans

#: Above this many leaves (m V^H) ``kl_markov_rev`` is not computed (NaN).
REVERSE_KL_MAX_LEAVES = 1 << 22
_ROUND = 1e9  # rows equal up to 1e-9 count as one
_MF_SWEEPS, _MF_TOL = 200, 1e-11


def gap_descriptor(env: TreeEnv) -> dict[str, float]:
    """The gap descriptor of an instance (definitions in the :mod:`gvgap.envs.families` docstring).

    Args:
        env: a TreeEnv; ``features`` may be None (then ``n_params_r`` etc. are NaN).

    Returns:
        dict of float scalars: n_params_pi, n_params_r, log_gap, n_states, n_distinct_pi,
        distinct_frac_pi, n_distinct_tilt, distinct_frac_tilt, kl_markov_fwd, kl_markov_rev,
        misspec_frac, kl_star_ref, r_star_std.
    """
    m, vocab, horizon, rho = env.n_prompts, env.vocab, env.horizon, env.rho
    n_pi = m * (vocab**horizon - 1)
    k = float(env.features.shape[-1]) if env.features is not None else float("nan")
    sv = env.soft_star
    pi_rows = np.concatenate([np.exp(lp).reshape(-1, vocab) for lp in sv.logpi])
    tilt = [sv.values[h + 1].reshape(-1, vocab) for h in range(horizon)]
    tilt_rows = np.concatenate([t - t.mean(axis=1, keepdims=True) for t in tilt])
    n_states = pi_rows.shape[0]
    n_pi_rows, n_tilt_rows = _n_distinct(pi_rows), _n_distinct(tilt_rows)
    fwd, rev = _markov_kls(env.logp_star, vocab, horizon)
    return {
        "n_params_pi": float(n_pi),
        "n_params_r": k,
        "log_gap": float(np.log(n_pi / k)),
        "n_states": float(n_states),
        "n_distinct_pi": float(n_pi_rows),
        "distinct_frac_pi": n_pi_rows / n_states,
        "n_distinct_tilt": float(n_tilt_rows),
        "distinct_frac_tilt": n_tilt_rows / n_states,
        "kl_markov_fwd": float(rho @ fwd),
        "kl_markov_rev": float(rho @ rev),
        "misspec_frac": _misspec_frac(env),
        "kl_star_ref": kl(env.logp_star, env.logp_ref, rho),
        "r_star_std": float(rho @ env.r_star.std(axis=1)),
    }


def _n_distinct(rows: np.ndarray) -> int:
    """Number of distinct rows after rounding to 1e-9 (lexicographic sort, no loop)."""
    keys = np.round(rows * _ROUND).astype(np.int64)
    srt = keys[np.lexsort(keys.T[::-1])]
    return 1 + int(np.count_nonzero((srt[1:] != srt[:-1]).any(axis=1)))


def _misspec_frac(env: TreeEnv) -> float:
    """ρ-weighted fraction of Var r* outside span{per-prompt constants, features} (shared w;
    :func:`gvgap.theory.spans.span_residual`)."""
    if env.features is None:
        return float("nan")
    outside, _ = spans.span_residual(env.r_star, env.features, env.rho, shared=True)
    return spans.fraction(outside, spans.centred_var(env.r_star), env.rho)


def _markov_kls(logp: np.ndarray, vocab: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt KL(P ‖ ∏ marginals) and mean-field min_q KL(∏ q_h ‖ P), each ``(m,)``."""
    m = logp.shape[0]
    lt = logp.reshape((m,) + (vocab,) * horizon)
    p = np.exp(lt)
    axes = range(1, horizon + 1)
    marg = np.stack(
        [p.sum(axis=tuple(a for a in axes if a != h + 1)) for h in range(horizon)], axis=1
    )  # (m, H, V)
    neg_ent = (p * lt).reshape(m, -1).sum(axis=1)
    fwd = -(marg * np.log(np.maximum(marg, 1e-300))).sum(axis=(1, 2)) + neg_ent
    if logp.size > REVERSE_KL_MAX_LEAVES:
        return fwd, np.full(m, np.nan)

    def expect(q: np.ndarray, skip: int | None) -> np.ndarray:
        """E_{∏_{j≠skip} q_j}[log P], contracting the token axes one at a time (last first)."""
        t = lt
        for j in range(horizon - 1, -1, -1):  # positions, not leaves
            if j == skip:
                continue
            shape = (m,) + (1,) * j + (vocab,) + (1,) * (t.ndim - j - 2)
            t = (t * q[:, j].reshape(shape)).sum(axis=j + 1)
        return t.reshape(m, -1) if skip is not None else t.reshape(m)

    def rev_kl(q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            q_log_q = np.where(q > 0, q * np.log(q), 0.0)  # 0 log 0 = 0
        return q_log_q.sum(axis=(1, 2)) - expect(q, None)

    q = np.maximum(marg, 1e-300)
    q /= q.sum(axis=-1, keepdims=True)
    old = rev_kl(q)
    for _ in range(_MF_SWEEPS):  # coordinate ascent: each update lowers KL(Q ‖ P)
        for h in range(horizon):
            q[:, h] = np.exp(log_softmax(expect(q, h)))
        new = rev_kl(q)
        if np.all(old - new < _MF_TOL):
            return fwd, np.maximum(new, 0.0)
        old = new
    return fwd, np.maximum(old, 0.0)
