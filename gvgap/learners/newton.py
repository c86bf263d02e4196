"""Exact Bradley–Terry fits in reward coordinates by damped Newton (THEORY §3, issue 8).

Every BT-type fit in gvgap — the RM of ``fit_reward`` and, over the tabular class, DPO itself
— minimises, in the reward coordinates r it induces,

    f(r) = Σ_i ŵ_i softplus(−Δ_i(r)) + (μ/2) ‖C r‖²,   Δ_i = r(x_i, ξ⁺_i) − r(x_i, ξ⁻_i),

with ŵ = w/Σw, μ = λ/(m Σw) and C the per-prompt centring (``losses.centred_sq`` =
(1/2m)‖C r‖²). f depends on r only modulo per-prompt constants, and on that quotient it is
strictly convex for λ > 0 with Hessian

    ∇²f = Dᵀ diag(ŵ σ(Δ) σ(−Δ)) D + μ C      (D: pair-difference map),

the *pair Laplacian* of the comparison graph plus the regulariser. Two parameterisations:

* **tabular** (r free per leaf; TabularReward, tabular DPO): the Laplacian is sparse; the
  Newton system is solved by Jacobi-preconditioned CG on the centred subspace, where μC = μI.
* **linear** (r = Φ w): in the orthonormal coordinates z of the centred feature span
  (Φ_c t orthonormal, w = t z, so ‖C r‖ = ‖z‖) the Hessian is Dzᵀ W Dz + μ I, factorised by
  Cholesky (k×k, or the n×n Woodbury form when n < rank). The basis is computed once per
  feature map and shared by every fit (λ path, train/full refits).

Both are certified by the Euclidean norm of ∇f in those coordinates: a fit stops when
‖∇f‖ ≤ min(gtol, RTOL · ‖∇f(r₀)‖) and reports ``converged = ‖∇f‖ ≤ gtol``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve, lapack, solve_triangular
from scipy.sparse import coo_matrix
from scipy.special import expit, log_expit

#: Relative stopping tolerance on ‖∇f‖ (w.r.t. the gradient at the warm start).
RTOL = 1e-10
#: Newton iterations at most (each with an Armijo backtracking line search).
MAX_ITER = 100
#: Up to this many touched leaves the tabular Newton system is factorised densely (Cholesky);
#: above, Jacobi-preconditioned CG on the sparse pair Laplacian.
DENSE_MAX = 300
#: Predicted decreases below this (relative to 1 + |f|) are not resolvable by f in float64.
FLOOR = 1e-10
#: Pivoted Cholesky of ΦcᵀΦc stops at pivots below this fraction of its largest diagonal.
CHOL_RANK_TOL = 1e-10
#: Eigenvalues of ΦcᵀΦc below this fraction of the largest span no reward direction.
RANK_TOL = 1e-12


#: Solutions of the fits run inside :func:`warm_path`, per problem space and λ.
_WARM: ContextVar[dict | None] = ContextVar("gvgap_warm_path", default=None)


@contextmanager
def warm_path() -> Iterator[None]:
    """Within this block, a fit given no explicit start begins at the stored solution of the
    same problem space (the same leaf shape, or the same feature map) with the nearest λ (in
    log λ): a warm-started λ path. Any start reaches the same certified optimum; the block's
    fits run in a fixed order, so results stay deterministic. ``select_lambda`` uses it."""
    token = _WARM.set({})
    try:
        yield
    finally:
        _WARM.reset(token)


def _warm_get(space: tuple, lam: float) -> np.ndarray | None:
    store = _WARM.get()
    sols = None if store is None else store.get(space)
    if not sols:
        return None
    return sols[min(sols, key=lambda lam2: abs(math.log(lam2) - math.log(lam)))]


def _warm_put(space: tuple, lam: float, x: np.ndarray) -> None:
    store = _WARM.get()
    if store is not None:
        store.setdefault(space, {})[lam] = x


@dataclass(frozen=True)
class NewtonResult:
    """Minimiser (in the solver's coordinates), value, ‖∇f‖, iterations, certificate."""

    x: np.ndarray
    fun: float
    grad_norm: float
    n_iter: int
    converged: bool


def _bt_terms(delta: np.ndarray, wn: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Σ ŵ softplus(−Δ), its derivative a = −ŵ σ(−Δ) and curvature c = ŵ σ(Δ)σ(−Δ)."""
    s_neg = expit(-delta)
    return float(wn @ -log_expit(delta)), -wn * s_neg, wn * s_neg * (1.0 - s_neg)


def _newton(
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray, Callable]],
    value: Callable[[np.ndarray], float],
    x0: np.ndarray,
    gtol: float,
) -> NewtonResult:
    """Damped Newton: ``evaluate(x) -> (f, ∇f, solve)`` with solve(v) ≈ (∇²f)⁻¹ v.

    Armijo backtracking on f while the predicted decrease −∇f·s (twice the Newton decrement)
    is resolvable in float64; below ``FLOOR``·(1 + |f|) (deep in the quadratic region, where f
    no longer resolves decreases) a full step is taken iff it reduces ‖∇f‖.
    """
    x = x0
    f, g, solve = evaluate(x)
    gn = g0 = float(np.linalg.norm(g))
    target = min(gtol, RTOL * g0) if g0 > 0 else 0.0
    it = 0
    while gn > target and it < MAX_ITER:
        it += 1
        step = -solve(g)
        slope = float(g @ step)
        if not np.all(np.isfinite(step)) or slope >= 0:
            step, slope = -g, -(gn**2)
        if -slope <= FLOOR * (1.0 + abs(f)):
            fn, g_new, solve_new = evaluate(x + step)
            if float(np.linalg.norm(g_new)) >= gn:
                break  # the floating-point floor of ∇f
            x, f, g, solve = x + step, fn, g_new, solve_new
            gn = float(np.linalg.norm(g))
            continue
        t = 1.0
        while fn_ok := t > 1e-12:
            fn = value(x + t * step)
            if fn <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        if not fn_ok:
            break
        x = x + t * step
        f, g, solve = evaluate(x)
        gn = float(np.linalg.norm(g))
    return NewtonResult(x, f, gn, it, gn <= gtol)


# ----------------------------------------------------------------------------- tabular


def bt_newton_tabular(
    prompt: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    shape: tuple[int, int],
    lam: float,
    r0: np.ndarray | None = None,
    gtol: float = 1e-9,
) -> NewtonResult:
    """BT-MLE of a free leaf reward r ``(m, N)`` with the centred-norm prior, λ > 0.

    Returns:
        :class:`NewtonResult` with ``x`` the centred reward ``(m, N)``; ``fun`` = the
        objective of ``fit_reward(TabularReward)`` / tabular DPO at it.
    """
    m, n_leaves = shape
    size = m * n_leaves
    ic = prompt * n_leaves + chosen
    ir = prompt * n_leaves + rejected
    w_total = float(weight.sum())
    wn = weight / w_total
    mu = lam / (w_total * m)

    def centre(v: np.ndarray) -> np.ndarray:
        v2 = v.reshape(m, n_leaves)
        return (v2 - v2.mean(axis=1, keepdims=True)).ravel()

    def value(r: np.ndarray) -> float:
        return float(wn @ -log_expit(r[ic] - r[ir])) + 0.5 * mu * float(centre(r) @ centre(r))

    def evaluate(r: np.ndarray):
        f, a, c = _bt_terms(r[ic] - r[ir], wn)
        rc = centre(r)
        f += 0.5 * mu * float(rc @ rc)
        g = np.bincount(ic, a, size) - np.bincount(ir, a, size) + mu * rc

        def solve(v: np.ndarray) -> np.ndarray:
            # On the centred subspace (L + μC) s = v ⇔ (L + μI) s = v (L·1 = 0 per prompt), and
            # L vanishes off the touched leaves: there s = v/μ; on them, a d × d system.
            s = v / mu
            s[touched] = _solve_touched(c, v[touched], mu)
            return centre(s)

        return f, g, solve

    touched, local = np.unique(np.concatenate([ic, ir]), return_inverse=True)
    lc, lr = local[: len(ic)], local[len(ic) :]
    d = touched.size

    def _solve_touched(c: np.ndarray, v: np.ndarray, mu: float) -> np.ndarray:
        """(L_TT + μ I)⁻¹ v: dense Cholesky up to DENSE_MAX touched leaves, else Jacobi-PCG."""
        if d <= DENSE_MAX:
            idx = np.concatenate([lc * d + lc, lr * d + lr, lc * d + lr, lr * d + lc])
            h = np.bincount(idx, np.concatenate([c, c, -c, -c]), d * d).reshape(d, d)
            h[np.diag_indices(d)] += mu
            return cho_solve(cho_factor(h), v)
        lap = coo_matrix(
            (
                np.concatenate([c, c, -c, -c]),
                (np.concatenate([lc, lr, lc, lr]), np.concatenate([lc, lr, lr, lc])),
            ),
            shape=(d, d),
        ).tocsr()
        rtol = max(min(1e-3, float(np.linalg.norm(v))), 1e-14)  # inexact-Newton forcing term
        dinv = 1.0 / (lap.diagonal() + mu)
        return _pcg(lambda u: lap @ u + mu * u, v, lambda u: dinv * u, rtol, 20 * d)

    space = ("tabular", shape)
    if r0 is None:
        r0 = _warm_get(space, lam)
    x0 = centre(np.zeros(size) if r0 is None else np.asarray(r0, float).ravel())
    res = _newton(evaluate, value, x0, gtol)
    _warm_put(space, lam, res.x)
    return NewtonResult(res.x.reshape(shape), res.fun, res.grad_norm, res.n_iter, res.converged)


def _pcg(matvec, b: np.ndarray, precond, rtol: float, maxiter: int) -> np.ndarray:
    """Preconditioned conjugate gradients for SPD systems (``precond(r)`` ≈ A⁻¹ r), stopping
    at ‖b − A x‖ ≤ rtol ‖b‖."""
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r)
    p = z.copy()
    rz = float(r @ z)
    stop = rtol * float(np.linalg.norm(b))
    for _ in range(maxiter):
        if float(np.linalg.norm(r)) <= stop:
            break
        q = matvec(p)
        alpha = rz / float(p @ q)
        x += alpha * p
        r -= alpha * q
        z = precond(r)
        rz, rz_old = float(r @ z), rz
        p = z + (rz / rz_old) * p
    return x


# ------------------------------------------------------------------------------ linear


class FeatureBasis:
    """Orthonormal coordinates of the centred feature span: ``t`` ``(k, rank)`` with Φ_c t
    orthonormal, and ``u = Φ t`` ``(m N, rank)`` (Φ_c t plus per-prompt constants, which
    cancel in every margin). w = t z maps back (when the features are rank-deficient, the
    solution supported on a maximal independent set of columns: r_w is unique, w is not),
    and the pair-difference rows of a data set are rows of ``u``. ``t`` and ``u`` are formed
    only when needed (the full-span path needs two triangular solves instead)."""

    def __init__(self, flat: np.ndarray, rank: int, sel=None, r11=None, t=None):
        self.flat, self.rank = flat, rank
        self._sel, self._r11, self._t, self._u = sel, r11, t, None

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureBasis:
        """From features ``(m, N, k)``: the Gram matrix G = Φ_cᵀΦ_c and its pivoted Cholesky
        factorisation Pᵀ G P = Rᵀ R (LAPACK ``pstrf``, which stops at the numerical rank r):
        the r pivot columns span the centred feature space and Φ_c[:, piv] R₁₁⁻¹ is
        orthonormal, so ``t`` = R₁₁⁻¹ on those rows (zero elsewhere). Falls back to an
        eigendecomposition if ``pstrf`` reports an error."""
        k = features.shape[-1]
        flat = features.reshape(-1, k)
        phi_c = (features - features.mean(axis=1, keepdims=True)).reshape(-1, k)
        gram = phi_c.T @ phi_c
        scale = max(float(np.max(np.diag(gram))), 1e-300)
        fac, piv, rank, info = lapack.dpstrf(gram, tol=CHOL_RANK_TOL * scale, lower=0)
        if info < 0 or rank == 0:
            evals, evecs = np.linalg.eigh(gram)
            keep = evals > RANK_TOL * max(float(evals[-1]), 1e-300)
            return cls(flat, int(keep.sum()), t=evecs[:, keep] / np.sqrt(evals[keep]))
        # solve_triangular(lower=False) reads only the upper triangle: no triu copy needed
        return cls(flat, int(rank), sel=piv[:rank] - 1, r11=fac[:rank, :rank])

    @property
    def t(self) -> np.ndarray:
        """``(k, rank)``: w = t z."""
        if self._t is None:
            self._t = np.zeros((self.flat.shape[1], self.rank))
            self._t[self._sel] = solve_triangular(self._r11, np.eye(self.rank), lower=False)
        return self._t

    @property
    def u(self) -> np.ndarray:
        """``(m N, rank)`` = Φ t."""
        if self._u is None:
            self._u = self.flat @ self.t
        return self._u

    def w_of_centred_reward(self, r_c: np.ndarray) -> np.ndarray:
        """w = t (Φ_c t)ᵀ r_c for a centred reward r_c in the span (Φ_cᵀ r_c = Φᵀ r_c): with the
        pivoted factor, two triangular solves, w[piv] = R₁₁⁻¹ R₁₁⁻ᵀ Φ[:, piv]ᵀ r_c."""
        phit_r = self.flat.T @ r_c.ravel()
        if self._t is not None or self._r11 is None:
            return self.t @ (self.t.T @ phit_r)
        z = solve_triangular(self._r11, phit_r[self._sel], trans="T", lower=False)
        w = np.zeros(self.flat.shape[1])
        w[self._sel] = solve_triangular(self._r11, z, lower=False)
        return w


_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def feature_basis(reward_class) -> FeatureBasis:
    """The :class:`FeatureBasis` of a ``LinearReward``, computed once per instance (shared
    factorisation across the λ path and the train/full refits)."""
    basis = _BASES.get(reward_class)
    if basis is None:
        basis = _BASES[reward_class] = FeatureBasis.of(reward_class.features)
    return basis


def bt_newton_linear(
    features: np.ndarray,
    basis: FeatureBasis,
    prompt: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    lam: float,
    w0: np.ndarray | None = None,
    gtol: float = 1e-9,
) -> NewtonResult:
    """BT-MLE of r_w = Φ w with the centred-norm prior, λ > 0, by Newton in z.

    Returns:
        :class:`NewtonResult` with ``x`` = w ``(k,)`` (= T z) and ``grad_norm`` = ‖∇_z f‖.
    """
    m, n_leaves = features.shape[:2]
    rank = basis.rank
    if rank == m * (n_leaves - 1):  # the features reach every centred reward: R_sim = tabular
        return _linear_via_tabular(features, basis, prompt, chosen, rejected, weight, lam, w0, gtol)
    w_total = float(weight.sum())
    wn = weight / w_total
    mu = lam / (w_total * m)
    dz = basis.u[prompt * n_leaves + chosen] - basis.u[prompt * n_leaves + rejected]  # (n, rank)
    n = dz.shape[0]
    gram_n = dz @ dz.T if n < rank else None

    def value(z: np.ndarray) -> float:
        return float(wn @ -log_expit(dz @ z)) + 0.5 * mu * float(z @ z)

    def evaluate(z: np.ndarray):
        f, a, c = _bt_terms(dz @ z, wn)
        f += 0.5 * mu * float(z @ z)
        g = dz.T @ a + mu * z

        def solve(v: np.ndarray) -> np.ndarray:
            if gram_n is None:  # (Dzᵀ W Dz + μ I)⁻¹ v by Cholesky of the rank × rank Hessian
                a = np.sqrt(c)[:, None] * dz
                h = a.T @ a  # one BLAS syrk
                h[np.diag_indices_from(h)] += mu
                return cho_solve(cho_factor(h, check_finite=False), v, check_finite=False)
            # Woodbury with M = μ I + W½ K W½ (n × n):  H⁻¹v = (v − Dzᵀ W½ M⁻¹ W½ Dz v)/μ
            sc = np.sqrt(c)
            mm = sc[:, None] * gram_n * sc[None, :]
            mm[np.diag_indices_from(mm)] += mu
            inner = cho_solve(cho_factor(mm, check_finite=False), sc * (dz @ v), check_finite=False)
            return (v - dz.T @ (sc * inner)) / mu

        return f, g, solve

    space = ("linear", basis)  # the store holds the basis: no id reuse within a path
    if w0 is None:
        z0 = _warm_get(space, lam)
        z0 = np.zeros(rank) if z0 is None else z0
    else:  # the z with the same centred reward: Φ_c t z = Φ_c w0, i.e. z = (Φ_c t)ᵀ Φ_c w0
        r0 = (features.reshape(-1, features.shape[-1]) @ np.asarray(w0, float)).reshape(m, -1)
        u_c = basis.u.reshape(m, -1, rank)
        u_c = u_c - u_c.mean(axis=1, keepdims=True)
        z0 = np.einsum("xnr,xn->r", u_c, r0 - r0.mean(axis=1, keepdims=True))
    res = _newton(evaluate, value, z0, gtol)
    _warm_put(space, lam, res.x)
    return NewtonResult(basis.t @ res.x, res.fun, res.grad_norm, res.n_iter, res.converged)


def _linear_via_tabular(features, basis, prompt, chosen, rejected, weight, lam, w0, gtol):
    """Full-span features (rank m(N − 1)): {Φ_c w} is every centred reward, so the linear fit
    *is* the tabular fit — solve it there (sparse, cheap) and map back, w = t (Φ_c t)ᵀ r̂ (exact:
    Φ_c t is an orthonormal basis of the centred rewards). ‖∇_z f‖ = ‖(Φ_c t)ᵀ ∇_r f‖ ≤ ‖∇_r f‖
    (and equal, ∇_r f being centred), so the certificate carries over."""
    m, n_leaves, k = features.shape
    r0 = None if w0 is None else (features.reshape(-1, k) @ np.asarray(w0, float)).reshape(m, -1)
    fit = bt_newton_tabular(prompt, chosen, rejected, weight, (m, n_leaves), lam, r0, gtol)
    w = basis.w_of_centred_reward(fit.x)
    return NewtonResult(w, fit.fun, fit.grad_norm, fit.n_iter, fit.converged)
