"""Exact soft (KL-regularised) optimal control on the tree (docs/theory.md §2, §3).

Soft value iteration: V_H = r/β; V_h(s) = log Σ_a π_ref(a|s) exp(V_{h+1}(s·a));
π*(a|s) = π_ref(a|s) exp(V_{h+1}(s·a) − V_h(s)); log Z_r(x) = V_0(x).
One exponential per tree edge: the softmax weights of the log-sum-exp are π* itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from gvgap.errors import UserError
from gvgap.theory import soft_fused
from gvgap.theory.tree import NodeLogp, node_to_leaf_logp

#: Environment switch for the soft VI kernel: ``numpy`` (reference), ``numba`` (fused kernel of
#: :mod:`gvgap.theory.soft_fused`; needs ``gvgap[fast]``) or ``auto`` (default).
SOFTVI_ENV = "GVGAP_SOFTVI"
#: ``auto`` uses the fused kernel from this many edges m·V^H on (when numba is importable):
#: below it the first call's JIT (1–3 s per V, benchmarks/README.md) outweighs the gain.
FUSED_MIN_LEAVES = 1 << 20


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


@dataclass(frozen=True)
class SoftVIBuffers:
    """Preallocated outputs of :func:`soft_value_iteration` (``out=``): reused across calls,
    they spare the page faults of fresh arrays (half the cost of a large tree). A result
    computed into them is overwritten by the next call that uses them.

    Attributes:
        logpi: ``logpi[h]`` ``(m, V^h, V)``; values: ``values[h]`` ``(m, V^h)``, h = 0..H;
        scratch: ``(m V^H,)`` work array.
    """

    logpi: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    scratch: np.ndarray

    @classmethod
    def empty(cls, n_prompts: int, vocab: int, horizon: int) -> SoftVIBuffers:
        """Buffers for ``n_prompts`` prompts, V = ``vocab``, H = ``horizon``."""
        m = n_prompts
        return cls(
            tuple(np.empty((m, vocab**h, vocab)) for h in range(horizon)),
            tuple(np.empty((m, vocab**h)) for h in range(horizon + 1)),
            np.empty(m * vocab**horizon),
        )

    def fits(self, logpi_ref: NodeLogp) -> bool:
        """Whether these buffers have the shapes of this tree."""
        return len(self.logpi) == len(logpi_ref) and all(
            a.shape == b.shape for a, b in zip(self.logpi, logpi_ref)
        )


def _requested(backend: str | None) -> str:
    """The backend asked for: ``backend``, else ``$GVGAP_SOFTVI``, else auto (normalised)."""
    return (os.environ.get(SOFTVI_ENV, "auto") if backend is None else backend).strip().lower()


def softvi_backend(n_leaves: int, backend: str | None = None) -> str:
    """The kernel soft VI uses for a tree of ``n_leaves`` = m·V^H: ``"numpy"`` or ``"numba"``.

    Args:
        n_leaves: m·V^H.
        backend: ``numpy`` | ``numba`` | ``auto``; None reads ``$GVGAP_SOFTVI`` (default auto).

    Raises:
        UserError: an unknown value, or ``numba`` asked for where numba is not installed.
    """
    mode = _requested(backend)
    if mode not in ("auto", "numpy", "numba"):
        raise UserError(f"{SOFTVI_ENV}: expected numpy, numba or auto, got {mode!r}")
    if mode == "numba" and not soft_fused.available():
        why = soft_fused.DISABLED[0] if soft_fused.DISABLED else "numba is not installed"
        raise UserError(f"{SOFTVI_ENV}=numba: {why} (pip install 'gvgap[fast]')")
    if mode == "auto":
        return "numba" if n_leaves >= FUSED_MIN_LEAVES and soft_fused.available() else "numpy"
    return mode


def soft_value_iteration(
    logpi_ref: NodeLogp,
    r: np.ndarray,
    beta: float,
    *,
    out: SoftVIBuffers | None = None,
    backend: str | None = None,
) -> SoftVIResult:
    """Soft-optimal policy π*_r ∝ π_ref · exp(r/β), exactly, by backward induction.

    Args:
        logpi_ref: reference node policy, ``logpi_ref[h]`` of shape ``(m, V^h, V)``.
        r: ``(m, V^H)`` trajectory rewards, finite (not checked here, on the hot path: with
            ±inf or NaN rewards the result is undefined, and the two backends differ).
        beta: KL strength β > 0.
        out: optional :class:`SoftVIBuffers` of this tree's shapes to write into (no fresh
            allocation); the returned result views them.
        backend: ``numpy`` | ``numba`` | ``auto`` (see :func:`softvi_backend`); None reads
            ``$GVGAP_SOFTVI``. Both kernels agree to rounding (≤ 1e-14, not bit for bit:
            tests/test_softvi_fused.py); ``auto`` picks by tree size, the same on every
            executor of one installation.

    Returns:
        :class:`SoftVIResult`. Cost per edge: one add, one exp, one token sum and one
        subtract (benchmarks/bench_softvi.py).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m = r.shape[0]
    horizon = len(logpi_ref)
    if out is None:
        out = SoftVIBuffers.empty(m, logpi_ref[0].shape[-1], horizon)
    elif not out.fits(logpi_ref):
        raise ValueError("out: SoftVIBuffers of another tree shape")
    values, logpi = out.values, out.logpi
    if softvi_backend(r.size, backend) == "numba":
        try:
            soft_fused.fused_into(logpi_ref, r, beta, values, logpi)
            return SoftVIResult(tuple(logpi), tuple(values), values[0][:, 0])
        except Exception as exc:  # e.g. a numba that cannot compile the kernel
            if _requested(backend) == "numba":
                raise
            soft_fused.disable(f"{type(exc).__name__}: {exc}")  # auto: numpy from now on
    np.divide(r, beta, out=values[horizon])
    # Each level receives Ṽ_{h+1} = V_{h+1} − C (C: a per-prompt shift making max Ṽ = 0), so
    # Q − C = log π_ref + Ṽ ≤ 0 never overflows exp, without a separate max/shift pass over
    # the edges; the shifts live in C, on the (V times smaller) state arrays.
    shift = values[horizon].max(axis=1)
    v_shifted = None
    for h in range(horizon - 1, -1, -1):
        q = logpi[h]
        if v_shifted is None:  # the leaf level: Ṽ_H = r/β − C straight into q
            np.subtract(values[horizon].reshape(q.shape), shift[:, None, None], out=q)
            q += logpi_ref[h]
        else:
            np.add(logpi_ref[h], v_shifted.reshape(q.shape), out=q)
        log_tot = _backup_shifted(q, out.scratch[: q.size].reshape(q.shape))
        np.add(log_tot, shift[:, None], out=values[h])
        shift = values[h].max(axis=1)
        v_shifted = values[h] - shift[:, None]
    return SoftVIResult(tuple(logpi), tuple(values), values[0][:, 0])


#: Below this per-state normaliser the shared shift underflowed: such states are redone with
#: their own maximum (exact for any reward range).
_TINY = 1e-280
#: Up to this V, broadcasts over the token axis run as per-token slices (faster in numpy).
SLICE_MAX_VOCAB = 8


def _backup_shifted(q: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """One level of soft VI on shifted Q-values: in place, q ← log π*(a|s) = q − log Σ_a e^q;
    returns the per-state log Σ_a e^{q(s,a)} ``(m, S)``.

    ``q`` ≤ 0 up to rounding (the caller's shift), so exp cannot overflow; states whose sum
    underflows (all q below ≈ −645) are redone with their own maximum, so the result is exact
    for any reward range. Sums and broadcasts over tokens run on per-token slices for small V
    (numpy's short-axis reductions are 4–15× slower than a contiguous pass).
    """
    e = np.exp(q, out=scratch)
    tot = _sum_tokens(e)
    log_tot = np.log(np.maximum(tot, _TINY))
    _subtract_per_state(q, log_tot)
    low = tot < _TINY
    if low.any():
        z = q[low] + log_tot[low][:, None]  # back to the shifted Q for those states
        zmax = z.max(axis=-1, keepdims=True)
        lse = zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True))
        q[low] = z - lse
        log_tot[low] = lse[:, 0]
    return log_tot


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

    docs/theory.md §2. Shapes ``(m, N)``.
    """
    if logp_ref_leaf is None:
        return beta * logp_leaf
    return beta * (logp_leaf - logp_ref_leaf)
