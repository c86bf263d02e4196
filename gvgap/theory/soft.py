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
    for h in range(horizon - 1, -1, -1):
        vocab = logpi_ref[h].shape[-1]
        q = logpi_ref[h] + values[h + 1].reshape(m, -1, vocab)
        step = _backup_slices if vocab <= SLICE_MAX_VOCAB else _backup_axis
        values[h], logpi[h] = step(q)
    return SoftVIResult(tuple(logpi), tuple(values), values[0][:, 0])


#: Up to this V the log-sum-exp runs on contiguous per-token slices (V − 1 elementwise ops),
#: which beats numpy's reductions over a short last axis by 4–5× (benchmarks/bench_softvi.py).
SLICE_MAX_VOCAB = 8


def _backup_axis(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V_h = logsumexp_a Q(s, a) and log π*(a|s) = Q − V_h, reducing over the last axis."""
    qmax = q.max(axis=-1, keepdims=True)
    log_tot = np.log(np.exp(q - qmax).sum(axis=-1, keepdims=True))
    v = qmax + log_tot
    return v[..., 0], q - v  # log π*: no underflow for Q-gaps beyond ~745 nats


def _backup_slices(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`_backup_axis` on contiguous per-token slices; overwrites ``q``."""
    cols = [np.ascontiguousarray(q[..., a]) for a in range(q.shape[-1])]
    qmax = cols[0].copy()
    for c in cols[1:]:
        np.maximum(qmax, c, out=qmax)
    tot, tmp = np.zeros_like(qmax), np.empty_like(qmax)
    for c in cols:
        np.subtract(c, qmax, out=tmp)
        np.exp(tmp, out=tmp)
        tot += tmp
    np.log(tot, out=tot)
    tot += qmax
    for a, c in enumerate(cols):
        np.subtract(c, tot, out=q[..., a])
    return tot, q


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
