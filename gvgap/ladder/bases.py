"""Tangent bases ψ of the rungs at the truth, modulo per-prompt constants (full column rank):
the coordinates in which :mod:`gvgap.theory.asymptotics` computes the constants C.

* window<J> (reward rung; also markovJ's local rewards when π_ref is uniform): one-hot window
  indicators with the redundant columns removed — all V^{J+1} − 1 first-window indicators of
  (a_0 … a_J) but the last, then at each h > J the indicators of (a_{h−J} … a_h) with
  a_h < V − 1. The constant is spanned by the full first block, each dropped indicator at h is
  its context's indicator (a window of position h − 1) minus the kept ones, so these columns
  and 1 span window<J>, and their count is :func:`gvgap.theory.spans.window_dim`.
* markovJ at π* (offline rung, any π_ref): the Jacobian of r_θ/β = log P_θ − log P_ref,
  ∂/∂θ[h, c, a] = Σ_h 1[c_h = c] (1[a_h = a] − π*(a | s_h)), for a < V − 1 (the columns of
  one context sum to zero: the softmax shift). Its dimension is dim(markovJ)/m.
* dense features (oracle, dictionary): a basis of the centred columns (SVD, rank cut
  max(N, d)·ε·σ_max, relative to the data; one change of coordinates for every prompt when
  the parameters are shared).

All bases are ``(N, d)`` for one prompt, scipy.sparse CSR for the one-hot ones.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from gvgap.policies.markov import context_index
from gvgap.theory.spans import window_dim


def window_basis(vocab: int, horizon: int, order: int) -> sp.csr_matrix:
    """The window<J> basis of the module docstring, ``(V^H, dim)`` sparse (J < H − 1)."""
    n = vocab**horizon
    leaf = np.arange(n, dtype=np.int64)
    width = vocab ** (order + 1)
    rows, cols = [], []
    first = leaf // vocab ** (horizon - 1 - order)  # (a_0 … a_J) in base V
    keep = first < width - 1
    rows.append(leaf[keep])
    cols.append(first[keep])
    offset = width - 1
    per = vocab**order * (vocab - 1)
    for h in range(order + 1, horizon):  # positions, not leaves
        win = (leaf // vocab ** (horizon - 1 - h)) % width
        tok = win % vocab
        keep = tok < vocab - 1
        rows.append(leaf[keep])
        cols.append(offset + (win[keep] // vocab) * (vocab - 1) + tok[keep])
        offset += per
    r, c = np.concatenate(rows), np.concatenate(cols)
    dim = window_dim(vocab, horizon, order)
    return sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n, dim))


def policy_tangent(logpi: list[np.ndarray], x: int, order: int) -> sp.csr_matrix:
    """The markovJ Jacobian basis at the node policy ``logpi`` (π*), prompt ``x``.

    Args:
        logpi: per depth ``(m, V^h, V)`` log π*(a|s).
        x: prompt.
        order: J < H − 1.

    Returns:
        ``(V^H, Σ_h V^{min(h,J)} (V − 1))`` sparse.
    """
    horizon, vocab = len(logpi), logpi[0].shape[-1]
    n = vocab**horizon
    leaf = np.arange(n, dtype=np.int64)
    a_idx = np.arange(vocab - 1)
    rows, cols, vals = [], [], []
    offset = 0
    for h in range(horizon):  # positions, not leaves
        state = leaf // vocab ** (horizon - h)  # s_h of every leaf
        token = (leaf // vocab ** (horizon - 1 - h)) % vocab
        ctx = context_index(vocab, h, order)[state]
        pi = np.exp(logpi[h][x][state])  # (N, V): π*(·|s_h)
        val = (token[:, None] == a_idx[None, :]) - pi[:, : vocab - 1]
        rows.append(np.repeat(leaf, vocab - 1))
        cols.append((offset + ctx[:, None] * (vocab - 1) + a_idx[None, :]).ravel())
        vals.append(val.ravel())
        offset += vocab ** min(h, order) * (vocab - 1)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, offset)
    )


def spans_everything(features: np.ndarray) -> bool:
    """Whether the centred columns of ``features`` ``(N, d)`` (d ≥ N − 1) span every centred
    reward: the Gram matrix F_c F_cᵀ + 11ᵀ/N is then positive definite, certified by a
    Cholesky factor whose smallest pivot is above √(N ε) times its largest (O(N³/3), a tenth of
    an SVD)."""
    from scipy.linalg import LinAlgError, cholesky

    n, d = features.shape
    if d < n - 1:
        return False
    fc = features - features.mean(axis=0, keepdims=True)
    gram = fc @ fc.T + np.full((n, n), 1.0 / n)
    try:
        diag = np.abs(np.diag(cholesky(gram, lower=True, check_finite=False)))
    except LinAlgError:
        return False
    return bool(diag.min() > np.sqrt(n * np.finfo(float).eps) * diag.max())


def dense_basis(features: np.ndarray, *, shared: bool) -> list[np.ndarray]:
    """Bases of the centred columns of ``features`` ``(m, N, d)``, one ``(N, r)`` per prompt.

    ``shared``: one parameter vector for all prompts, so one change of coordinates T for all,
    Ψ_x = F_x,c T with T = V_r Σ_r⁻¹ from the SVD of the stacked centred features; otherwise
    an orthonormal basis per prompt (U_r of F_x,c), except where the columns span every reward
    (:func:`spans_everything`): there the N − 1 first leaf indicators (a basis modulo
    constants, not orthonormal). Rank cut: max(rows, d)·ε·σ_max.
    """
    fc = features - features.mean(axis=1, keepdims=True)
    m, n, d = fc.shape
    if d == 0:
        return [fc[x] for x in range(m)]
    if shared:
        _, s, vt = np.linalg.svd(fc.reshape(m * n, d), full_matrices=False)
        keep = s > max(m * n, d) * np.finfo(float).eps * s[0]
        t = vt[keep].T / s[keep]
        return [fc[x] @ t for x in range(m)]
    out = []
    for x in range(m):  # prompts, not leaves
        if spans_everything(features[x]):  # the tabular class: leaf indicators minus one
            out.append(np.eye(n)[:, : n - 1])
            continue
        u, s, _ = np.linalg.svd(fc[x], full_matrices=False)
        keep = s > max(n, d) * np.finfo(float).eps * (s[0] if s.size else 0.0)
        out.append(u[:, keep])
    return out
