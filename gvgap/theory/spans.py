"""Exact membership of a reward in a linear span, and the variance outside it.

Two kinds of span, both modulo per-prompt constants and measured under the uniform law on
each prompt's V^H leaves (ρ-weighted across prompts):

* **window spans** (the reward rungs ``window<J>``): rewards Σ_h f_h(a_{h−J}, …, a_h), sums of
  functions of J + 1 consecutive tokens. Under the uniform (product) law the functional-ANOVA
  (Hoeffding) components r_u, u ⊆ {0, …, H−1}, are orthogonal, and the window span is spanned
  by the components whose positions fit in one window (max u − min u ≤ J). Grouping the
  others by their extreme positions i = min u < j = max u,

      Σ_{u: min u = i, max u = j} r_u = (I − M_i)(I − M_j) E[r | a_i, …, a_j],

M_h the mean over a_h,

  so the variance outside window<J> is Σ_{j − i > J} e_ij with

      e_ij = mean over leaves of ((I − M_i)(I − M_j) E[r | a_i..a_j])²,

  each computed on a V^{j−i+1} array (O(H² N) in all, every J at once). The pieces are
  computed directly — never as a difference of large variances — so a reward inside the span
  gives e_ij at the rounding level (≈ ε|r|), and containment is decided against a tolerance
  that is a stated multiple of machine precision (:data:`SPAN_RTOL`).
* **dense spans** (the oracle / dictionary features): least squares by QR
  (:func:`span_residual`).

Dimension of window<J> per prompt, modulo constants (J < H):
dim = V^{J+1} − 1 + (H − J − 1)(V^{J+1} − V^J); J ≥ H − 1 gives V^H − 1 (every reward).
"""

from __future__ import annotations

import numpy as np

#: A reward lies in a span when the RMS of its residual is at most SPAN_RTOL · (1 + H) times
#: the RMS of the centred reward (relative, a multiple of machine precision: the rounding of
#: the means over ≤ V^H leaves and the H-level recursions that produce r*).
SPAN_RTOL = 2.0**10 * np.finfo(float).eps


def window_dim(vocab: int, horizon: int, order: int) -> int:
    """Dimension of window<J> modulo constants, one prompt (module docstring)."""
    if order >= horizon - 1:
        return vocab**horizon - 1
    v1 = vocab ** (order + 1)
    return v1 - 1 + (horizon - order - 1) * (v1 - vocab**order)


def window_pieces(r: np.ndarray, vocab: int, horizon: int) -> np.ndarray:
    """The energies e_ij of the module docstring, per prompt.

    For each i the reward is averaged over the positions before i once, then over the
    positions after j one at a time as j goes down: E[r | a_i..a_j] for every j costs one pass
    over an array that shrinks by V each step, O(N) per i and O(N·H) in all.

    Args:
        r: ``(m, V^H)`` rewards (leaf index in base V, first token most significant).

    Returns:
        ``(m, H, H)`` with e_ij at i < j (zero elsewhere).
    """
    m = r.shape[0]
    t = r.reshape((m,) + (vocab,) * horizon)
    out = np.zeros((m, horizon, horizon))
    head = t
    for i in range(horizon):  # positions, not leaves
        g = head  # E[r | a_i .. a_{H−1}]: axes 1.. are a_i … a_{H−1}
        for j in range(horizon - 1, i, -1):
            c = g - g.mean(axis=1, keepdims=True)  # (I − M_i)
            c -= c.mean(axis=-1, keepdims=True)  # (I − M_j)
            out[:, i, j] = (c * c).reshape(m, -1).mean(axis=1)
            g = g.mean(axis=-1)  # drop a_j
        head = head.mean(axis=1)  # drop a_i
    return out


def window_outside(pieces: np.ndarray, order: int) -> np.ndarray:
    """Variance of each prompt's reward outside window<J>: Σ_{j − i > J} e_ij, ``(m,)``."""
    horizon = pieces.shape[1]
    i, j = np.triu_indices(horizon, 1)
    far = (j - i) > order
    return pieces[:, i[far], j[far]].sum(axis=1)


def centred_var(r: np.ndarray) -> np.ndarray:
    """Per-prompt variance of r under the uniform leaf law, ``(m,)``."""
    c = r - r.mean(axis=1, keepdims=True)
    return (c * c).mean(axis=1)


def fraction(outside: np.ndarray, var: np.ndarray, rho: np.ndarray) -> float:
    """ρ-weighted fraction Σ ρ_x outside_x / Σ ρ_x var_x (0 for a constant reward)."""
    tot = float(rho @ var)
    return float(rho @ outside) / tot if tot > 0 else 0.0


def contains(outside: np.ndarray, var: np.ndarray, horizon: int) -> bool:
    """Whether every prompt's residual RMS is within SPAN_RTOL·(1 + H) of its reward's RMS."""
    tol = (SPAN_RTOL * (1 + horizon)) ** 2
    return bool(np.all(outside <= tol * np.maximum(var, np.finfo(float).tiny)))


def shared_outside(r: np.ndarray, rho: np.ndarray, vocab: int, horizon: int, order: int):
    """Variance outside a window<J> span *shared* by every prompt (one weight vector, per-prompt
    constants free), per prompt: the part outside the span plus the part of r_x − r̄ inside
    it, r̄ = Σ ρ_x r_x (the best shared member is the projection of r̄).

    Returns:
        ``(m,)`` residual variances.
    """
    dev = r - rho @ r
    own = window_outside(window_pieces(r, vocab, horizon), order)
    dev_out = window_outside(window_pieces(dev, vocab, horizon), order)
    return own + np.maximum(centred_var(dev) - dev_out, 0.0)


def span_residual(
    r: np.ndarray, features: np.ndarray, rho: np.ndarray, *, shared: bool
) -> tuple[np.ndarray, int]:
    """Per-prompt residual variance of r outside span{1, features} (least squares, QR), and
    the dimension of the span modulo constants.

    Args:
        r: ``(m, N)``.
        features: ``(m, N, d)`` (``shared``: one weight vector for every prompt; the span is
            {Σ_d w_d φ_d(x, ·) + c_x}, fitted by ρ-weighted least squares) or per prompt (one
            w_x each).
        rho: ``(m,)`` prompt law.

    Returns:
        ``(outside (m,), dim)``; ``dim`` is the rank of the centred features (stacked over
        prompts when shared, summed over prompts otherwise), decided relative to the largest
        singular value with tolerance max(N, d)·ε.
    """
    m, n = r.shape
    rc = r - r.mean(axis=1, keepdims=True)
    fc = features - features.mean(axis=1, keepdims=True)
    if shared:
        sw = np.sqrt(rho)[:, None, None]
        coef, rank = _lstsq((fc * sw).reshape(m * n, -1), (rc * sw[..., 0]).ravel())
        res = rc - fc @ coef
        return (res * res).mean(axis=1), rank
    out, dim = np.zeros(m), 0
    for x in range(m):  # prompts, not leaves
        coef, rank = _lstsq(fc[x], rc[x])
        res = rc[x] - fc[x] @ coef
        out[x], dim = float((res * res).mean()), dim + rank
    return out, dim


def _lstsq(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum-norm least squares by SVD with a data-relative rank cut (max(N, d)·ε·σ_max)."""
    if a.shape[1] == 0:
        return np.zeros(0), 0
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = s > max(a.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
    coef = vt[keep].T @ ((u[:, keep].T @ y) / s[keep])
    return coef, int(keep.sum())
