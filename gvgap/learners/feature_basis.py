"""The orthonormal coordinates of a feature map's centred reward span, with its rank decided
relative to the data (docs/theory.md §3, issue 19): what the linear Bradley–Terry fit of
:func:`gvgap.learners.newton.bt_newton_linear` solves in and certifies on.

The span is that of the centred, column-normalised features, so rescaling a column changes
neither the basis nor the fit; directions with singular values at rounding level are
dropped, and the certificate measures the gradient along them (:meth:`FeatureBasis.
certificate`), so a fit is "converged" only on the whole stated span. One basis per feature
map (:func:`feature_basis`), shared by every fit of the λ path and the train/full refits.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
from scipy.linalg import lapack, solve_triangular, svd

#: Rank tolerance of the column-normalised centred features Φ̃_c, in units of
#: max(mN, k) · ε · ‖Φ̃‖_F (numpy.linalg.matrix_rank's rule, scaled by the uncentred
#: column-normalised features so that a column constant within each prompt, which centres to
#: rounding noise, spans nothing): singular values at or below it are numerically zero.
RANK_EPS_FACTOR = 1.0
#: Full-span fast path (:class:`FeatureBasis`): pivots of the column-normalised centred Gram
#: above this (σ ≳ 1e-5 of a unit column) certify that the features reach every centred
#: reward; a weaker span goes to the SVD.
FULL_SPAN_PIVOT_TOL = 1e-10


class FeatureBasis:
    """Orthonormal coordinates of the centred feature span, rank decided relative to the data.

    With Φ ``(m N, k)`` the flattened features, D the diagonal of their (uncentred) column
    norms and Φ̃_c = C Φ D⁻¹ the centred column-normalised features, the thin SVD
    Φ̃_c = U Σ Vᵀ keeps the r directions with σ_i > tol = ``RANK_EPS_FACTOR`` · max(mN, k) · ε ·
    ‖Φ̃‖_F (a stated multiple of machine precision in the data's own units: rescaling a
    column leaves U, Σ, V unchanged). Then

    * ``u`` = U_r ``(m N, r)``: an orthonormal basis of the centred reward span; the
      pair-difference rows of a data set are rows of ``u``;
    * ``t`` = D⁻¹ V_r Σ_r⁻¹ ``(k, r)``: w = t z has Φ_c w = u z (when the features are
      rank-deficient, the minimum-norm w in D-scaled units: r_w is unique, w is not);
    * ``v_dropped`` = V_{r:} and ``sigma_dropped`` = σ_{r+1} (0 if none): the directions
      discarded as numerically null and their size, ‖Φ̃_c − U_r Σ_r V_rᵀ‖₂ (issue 19).

    Full span (k ≥ m(N − 1), the fit is the tabular one): when the pivoted Cholesky of
    Φ̃_cᵀΦ̃_c (LAPACK ``pstrf``) finds m(N − 1) pivots above ``FULL_SPAN_PIVOT_TOL`` (every
    direction at σ ≳ 1e-5 of a unit column), the features reach every centred reward and no
    SVD is needed: ``u`` is None, w = D⁻¹ R₁₁⁻¹ R₁₁⁻ᵀ Φ̃_c[:, piv]ᵀ r_c on the pivot columns
    (two triangular solves), and the gradient on the span is the whole centred gradient.
    Otherwise the SVD decides.
    """

    def __init__(self, shape, flat, col_norm, rank: int, *, u=None, t=None, v_dropped=None,
                 sigma_dropped: float = 0.0, pivots=None):  # fmt: skip
        self.shape, self.flat, self.col_norm, self.rank = shape, flat, col_norm, int(rank)
        self.u, self.t, self.v_dropped = u, t, v_dropped
        self.sigma_dropped, self._pivots = float(sigma_dropped), pivots

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureBasis:
        """From features ``(m, N, k)``: column norms, centring, rank, basis (class doc)."""
        m, n_leaves, k = features.shape
        flat = features.reshape(-1, k)
        norm = np.sqrt(np.einsum("ij,ij->j", flat, flat))
        d = np.where(norm > 0, norm, 1.0)
        phi_c = ((features - features.mean(axis=1, keepdims=True)) / d).reshape(-1, k)
        full = m * (n_leaves - 1)
        if k >= full > 0:
            fac, piv, rank, info = lapack.dpstrf(phi_c.T @ phi_c, tol=FULL_SPAN_PIVOT_TOL, lower=0)
            if info >= 0 and rank == full:
                sel = piv[:rank] - 1
                return cls((m, n_leaves), flat, d, rank, pivots=(sel, fac[:rank, :rank], phi_c))
        u, s, vt = svd(phi_c, full_matrices=False, overwrite_a=True, check_finite=False)
        tol = RANK_EPS_FACTOR * max(m * n_leaves, k) * np.finfo(float).eps
        tol *= math.sqrt(float(np.count_nonzero(norm)))  # ‖Φ̃‖_F: unit columns
        rank = int(np.count_nonzero(s > tol))
        return cls(
            (m, n_leaves),
            flat,
            d,
            rank,
            u=u[:, :rank].copy(),
            t=vt[:rank].T / s[:rank] / d[:, None],
            v_dropped=vt[rank:].T.copy(),
            sigma_dropped=float(s[rank]) if s.size > rank else 0.0,
        )

    def w_of_centred_reward(self, r_c: np.ndarray) -> np.ndarray:
        """w with Φ_c w = r_c for a centred reward r_c in the span: t uᵀ r_c, or (full span)
        the two triangular solves on the pivot columns (class doc)."""
        if self._pivots is None:
            return self.t @ (self.u.T @ r_c.ravel())
        sel, r11, phi_c = self._pivots
        z = solve_triangular(r11, (phi_c.T @ r_c.ravel())[sel], trans="T", lower=False)
        w = np.zeros(self.flat.shape[1])
        w[sel] = solve_triangular(r11, z, lower=False) / self.col_norm[sel]
        return w

    def certificate(self, g_r: np.ndarray) -> tuple[float, float]:
        """(‖uᵀ g‖, ‖V_droppedᵀ D⁻¹ Φᵀ g‖) for a per-prompt centred gradient g ``(m N,)``: the
        gradient on the kept span (orthonormal coordinates; ‖g‖ itself on a full span) and
        the directional derivatives along the dropped directions per unit of column-normalised
        weight (≤ σ_{r+1} ‖g‖)."""
        if self._pivots is not None:
            return float(np.linalg.norm(g_r)), 0.0
        dropped = 0.0
        if self.v_dropped.shape[1]:
            dropped = float(
                np.linalg.norm(self.v_dropped.T @ ((self.flat.T @ g_r) / self.col_norm))
            )
        return float(np.linalg.norm(self.u.T @ g_r)), dropped


_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def feature_basis(reward_class) -> FeatureBasis:
    """The :class:`FeatureBasis` of a ``LinearReward``, computed once per instance (shared
    factorisation across the λ path and the train/full refits)."""
    basis = _BASES.get(reward_class)
    if basis is None:
        basis = _BASES[reward_class] = FeatureBasis.of(reward_class.features)
    return basis
