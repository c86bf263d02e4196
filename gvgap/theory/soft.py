"""Exact soft (KL-regularised) optimal control on the tree (THEORY §2, §3).

Soft value iteration: V_H = r/β; V_h(s) = log Σ_a π_ref(a|s) exp(V_{h+1}(s·a));
π*(a|s) = π_ref(a|s) exp(V_{h+1}(s·a) − V_h(s)); log Z_r(x) = V_0(x).
One exponential per tree edge: the softmax weights of the log-sum-exp are π* itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gvgap.theory.tree import NodeLogp, node_to_leaf_logp


@dataclass(frozen=True)
class SoftVIResult:
    """Output of :func:`soft_value_iteration`.

    Attributes:
        logpi: node policy of π*_r; ``logpi[h]`` is ``(m, V^h, V)``.
        values: ``values[h]`` = V_h, shape ``(m, V^h)`` for h = 0..H (V_H = r/β).
        log_z: ``(m,)`` log partition log Z_r(x) = log Σ_ξ P_ref(ξ|x) exp(r(x,ξ)/β).
    """

    logpi: NodeLogp
    values: tuple[np.ndarray, ...]
    log_z: np.ndarray

    def q(self, h: int, logpi_ref: NodeLogp) -> np.ndarray:
        """Soft Q at depth h: Q_h(s,a) = log π_ref(a|s) + V_{h+1}(s·a), shape ``(m, V^h, V)``."""
        m, _, vocab = logpi_ref[h].shape
        return logpi_ref[h] + self.values[h + 1].reshape(m, -1, vocab)


def soft_value_iteration(logpi_ref: NodeLogp, r: np.ndarray, beta: float) -> SoftVIResult:
    """Soft-optimal policy π*_r ∝ π_ref · exp(r/β), exactly, by backward induction.

    Args:
        logpi_ref: reference node policy, ``logpi_ref[h]`` of shape ``(m, V^h, V)``.
        r: ``(m, V^H)`` trajectory rewards.
        beta: KL strength β > 0.

    Returns:
        :class:`SoftVIResult`. Cost ≈ one exp and a few adds per edge (benchmarks/).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m = r.shape[0]
    horizon = len(logpi_ref)
    values: list[np.ndarray] = [None] * (horizon + 1)  # type: ignore[list-item]
    logpi: list[np.ndarray] = [None] * horizon  # type: ignore[list-item]
    values[horizon] = np.asarray(r, dtype=np.float64) / beta
    scratch = np.empty(values[horizon].size)  # reused by every level: no fresh pages
    for h in range(horizon - 1, -1, -1):
        vocab = logpi_ref[h].shape[-1]
        q = logpi_ref[h] + values[h + 1].reshape(m, -1, vocab)
        values[h], logpi[h] = _backup(q, scratch[: q.size].reshape(q.shape))
    return SoftVIResult(tuple(logpi), tuple(values), values[0][:, 0])


#: Below this per-state normaliser the shared shift underflowed: such states are redone with
#: their own maximum (exact for any reward range).
_TINY = 1e-280
#: Up to this V, broadcasts over the token axis run as per-token slices (faster in numpy).
SLICE_MAX_VOCAB = 8


def _backup(q: np.ndarray, scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One level of soft VI: V_h(s) = log Σ_a e^{Q(s,a)} and log π*(a|s) = Q(s,a) − V_h(s).

        The log-sum-exp is stabilised by one shift per *prompt*, c_x = max Q (a long, fast
    reduction), rather than per state; sums and broadcasts over tokens run on per-token slices
    for small V (numpy's short-axis reductions are 4–15× slower than a contiguous pass).
    States whose normaliser underflows under the shared shift (Q-gaps beyond ~645 nats) are
    redone with their own maximum, so the result is exact for any reward range. ``q`` is
    consumed.

    Args:
            q: ``(m, S, V)`` soft Q-values Q(s, a) = log π_ref(a|s) + V_{h+1}(s·a).
            scratch: optional work array of q's shape (reused across levels).

        Returns:
            ``(m, S)`` values and ``(m, S, V)`` log-policy.
    """
    m = q.shape[0]
    c = q.reshape(m, -1).max(axis=1)
    q -= c[:, None, None]
    e = np.exp(q, out=scratch) if scratch is not None else np.exp(q)
    tot = _sum_tokens(e)
    log_tot = np.log(np.maximum(tot, _TINY))
    _subtract_per_state(q, log_tot)
    values = c[:, None] + log_tot
    low = tot < _TINY
    if low.any():
        z = q[low] + log_tot[low][:, None]  # back to Q − c for those states
        zmax = z.max(axis=-1, keepdims=True)
        lse = zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True))
        q[low] = z - lse
        values[low] = np.broadcast_to(c[:, None], low.shape)[low] + lse[:, 0]
    return values, q


def _sum_tokens(e: np.ndarray) -> np.ndarray:
    """Σ_a e[x, s, a] (per-token slices for small V: no BLAS, no short-axis reduction)."""
    if e.shape[-1] > SLICE_MAX_VOCAB:
        return e.sum(axis=-1)
    tot = e[..., 0].copy()
    for a in range(1, e.shape[-1]):
        tot += e[..., a]
    return tot


def _subtract_per_state(q: np.ndarray, v: np.ndarray) -> None:
    """In place q[x, s, a] −= v[x, s] (per-token slices for small V, a broadcast above)."""
    if q.shape[-1] <= SLICE_MAX_VOCAB:
        for a in range(q.shape[-1]):
            q[..., a] -= v
    else:
        q -= v[..., None]


def soft_optimal_leaf_logp(logp_ref_leaf: np.ndarray, r: np.ndarray, beta: float) -> np.ndarray:
    """Trajectory form of π*_r: log P* = log P_ref + r/β − log Z (brute-force enumeration).

    Args:
        logp_ref_leaf: ``(m, N)``; r: ``(m, N)``.

    Returns:
        ``(m, N)`` normalised log-probabilities.
    """
    s = logp_ref_leaf + r / beta
    return s - log_partition_leaf(logp_ref_leaf, r, beta)[:, None]


def log_partition_leaf(logp_ref_leaf: np.ndarray, r: np.ndarray, beta: float) -> np.ndarray:
    """log Z_r(x) = log Σ_ξ P_ref(ξ|x) e^{r/β} by enumeration, ``(m,)``."""
    s = logp_ref_leaf + r / beta
    mx = s.max(axis=1, keepdims=True)
    return (mx + np.log(np.exp(s - mx).sum(axis=1, keepdims=True)))[:, 0]


def soft_optimal(logpi_ref: NodeLogp, r: np.ndarray, beta: float) -> np.ndarray:
    """Leaf log-probabilities of π*_r computed by soft value iteration, ``(m, V^H)``."""
    return node_to_leaf_logp(soft_value_iteration(logpi_ref, r, beta).logpi)


def local_reward(
    logp_leaf: np.ndarray, logp_ref_leaf: np.ndarray | None, beta: float = 1.0
) -> np.ndarray:
    """Local (DPO implicit) reward r_π = β (log P_π − log P_ref); reference-free if None.

    THEORY §2. Shapes ``(m, N)``.
    """
    if logp_ref_leaf is None:
        return beta * logp_leaf
    return beta * (logp_leaf - logp_ref_leaf)
