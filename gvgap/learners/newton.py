"""Exact Bradley–Terry fits in reward coordinates by damped Newton (docs/theory.md §3, issue 8).

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
  (u = U_r from the SVD of the centred, column-normalised features, so ‖C r‖ = ‖z‖; w = t z)
  the Hessian is Dzᵀ W Dz + μ I, factorised by Cholesky (k×k, or the n×n Woodbury form when
  n < rank). The basis and its rank, decided relative to the data (rescaling a column changes
  neither the basis nor the fit), come from :mod:`gvgap.learners.feature_basis`, once per
  feature map and shared by every fit (λ path, train/full refits).

Both are certified by the Euclidean norm of ∇f in those coordinates. The iteration stops
when ‖∇f‖ ≤ min(gtol, RTOL · ‖∇f(r₀)‖), then takes full Newton steps while the step
s = −H⁻¹∇f (≈ the error r − r*, up to ‖∇f‖/μ at the gradient test) is above the rounding
floor and shrinks ‖∇f‖ (at most ``POLISH_STEPS``): quadratic convergence reaches the floor in
one step, and the next solve confirms it. A linear
fit's certificate is measured at the returned w itself (r = Φ w, as the class evaluates it),
on the whole stated span: ``converged`` = ‖∇_z f‖ ≤ gtol *and* the gradient along the
directions dropped as numerically null (``grad_dropped``) ≤ gtol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse import coo_matrix

from gvgap.learners.feature_basis import FeatureBasis
from gvgap.losses import bt_nll_terms, bt_rows

#: Relative stopping tolerance on ‖∇f‖ (w.r.t. the gradient at the warm start).
RTOL = 1e-10
#: Newton iterations at most (each with an Armijo backtracking line search).
MAX_ITER = 100
#: Up to this many touched leaves the tabular Newton system is factorised densely (Cholesky);
#: above, Jacobi-preconditioned CG on the sparse pair Laplacian.
DENSE_MAX = 300
#: Predicted decreases below this (relative to 1 + |f|) are not resolvable by f in float64.
FLOOR = 1e-10
#: Full Newton steps taken after the gradient test passes, while each shrinks ‖∇f‖ (the
#: quadratic-convergence floor; issue 19: |r̂ − r*| 3.5e-7 at the test, 1.2e-14 one step on).
POLISH_STEPS = 3
#: ... and while the Newton step, which estimates the error, exceeds this relative to 1 + ‖x‖∞.
POLISH_RTOL = 1e-13


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
    """Minimiser (in the solver's coordinates), value, ‖∇f‖, iterations, certificate, and
    (linear fits) the gradient along the feature directions dropped as numerically null."""

    x: np.ndarray
    fun: float
    grad_norm: float
    n_iter: int
    converged: bool
    grad_dropped: float = 0.0


def _newton(
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray, Callable]],
    value: Callable[[np.ndarray], float],
    x0: np.ndarray,
    gtol: float,
) -> NewtonResult:
    """Damped Newton: ``evaluate(x) -> (f, ∇f, solve)`` with solve(v) ≈ (∇²f)⁻¹ v.

    Armijo backtracking on f while the predicted decrease −∇f·s (twice the Newton decrement)
    is resolvable in float64; below ``FLOOR``·(1 + |f|) (deep in the quadratic region, where f
    no longer resolves decreases) a full step is taken iff it reduces ‖∇f‖. Once ‖∇f‖ passes
    the test, up to ``POLISH_STEPS`` more full steps while the step exceeds ``POLISH_RTOL``
    (1 + ‖x‖∞), each kept iff it reduces ‖∇f‖.
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
    if gn <= target:  # on to the quadratic-convergence floor (POLISH_STEPS)
        for _ in range(POLISH_STEPS):
            step = -solve(g)
            size = float(np.max(np.abs(step), initial=0.0))
            if not size > POLISH_RTOL * (1.0 + float(np.max(np.abs(x), initial=0.0))):
                break  # the Newton step (≈ the error) is at rounding level: done (or not finite)
            fn, g_new, solve_new = evaluate(x + step)
            gn_new = float(np.linalg.norm(g_new))
            if not gn_new < gn:
                break  # the floor: ∇f no longer shrinks
            x, f, g, solve, gn = x + step, fn, g_new, solve_new, gn_new
            it += 1
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
        return float(wn @ bt_rows(r[ic] - r[ir])) + 0.5 * mu * float(centre(r) @ centre(r))

    def evaluate(r: np.ndarray):
        f, a, c = bt_nll_terms(r[ic] - r[ir], wn)
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
        :class:`NewtonResult` with ``x`` = w ``(k,)`` (= t z); ``fun``, ``grad_norm`` = ‖∇_z f‖
        and ``grad_dropped`` measured at r = Φ w (:func:`_linear_certificate`).
    """
    m, n_leaves = features.shape[:2]
    rank = basis.rank
    ic, ir = prompt * n_leaves + chosen, prompt * n_leaves + rejected
    w_total = float(weight.sum())
    wn = weight / w_total
    mu = lam / (w_total * m)
    if rank == m * (n_leaves - 1):  # the features reach every centred reward: R_sim = tabular
        fit = _linear_via_tabular(features, basis, prompt, chosen, rejected, weight, lam, w0, gtol)
        return _linear_certificate(basis, ic, ir, wn, mu, fit, gtol)
    dz = basis.u[ic] - basis.u[ir]  # (n, rank)
    n = dz.shape[0]
    gram_n = dz @ dz.T if n < rank else None

    def value(z: np.ndarray) -> float:
        return float(wn @ bt_rows(dz @ z)) + 0.5 * mu * float(z @ z)

    def evaluate(z: np.ndarray):
        f, a, c = bt_nll_terms(dz @ z, wn)
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
    else:  # the z with the same centred reward: z = uᵀ C Φ w0 (u is orthonormal and centred)
        r0 = (basis.flat @ np.asarray(w0, float)).reshape(m, -1)
        z0 = basis.u.T @ (r0 - r0.mean(axis=1, keepdims=True)).ravel()
    res = _newton(evaluate, value, z0, gtol)
    _warm_put(space, lam, res.x)
    fit = NewtonResult(basis.t @ res.x, res.fun, res.grad_norm, res.n_iter, res.converged)
    return _linear_certificate(basis, ic, ir, wn, mu, fit, gtol)


def _linear_certificate(basis, ic, ir, wn, mu, fit: NewtonResult, gtol: float) -> NewtonResult:
    """The fit's value and certificate at the returned w itself, r = Φ w (what the class
    evaluates): ∇_r f = Σ ŵ(−σ(−Δ))(e⁺ − e⁻) + μ C r, then ‖∇_z f‖ = ‖uᵀ∇_r f‖ on the kept span
    and ``grad_dropped`` along the dropped directions (:meth:`FeatureBasis.certificate`);
    converged iff both ≤ gtol (and the solver converged)."""
    r = (basis.flat @ fit.x).reshape(basis.shape)
    rc = (r - r.mean(axis=1, keepdims=True)).ravel()
    r = r.ravel()
    f, a, _ = bt_nll_terms(r[ic] - r[ir], wn)
    f += 0.5 * mu * float(rc @ rc)
    g = np.bincount(ic, a, r.size) - np.bincount(ir, a, r.size) + mu * rc
    gn, dropped = basis.certificate(g)
    ok = fit.converged and gn <= gtol and dropped <= gtol
    return NewtonResult(fit.x, f, gn, fit.n_iter, ok, dropped)


def _linear_via_tabular(features, basis, prompt, chosen, rejected, weight, lam, w0, gtol):
    """Full-span features (rank m(N − 1)): {Φ_c w} is every centred reward, so the linear fit
    *is* the tabular fit — solve it there (sparse, cheap) and map back, w = t uᵀ r̂ (exact: u is
    an orthonormal basis of the centred rewards). The certificate is then measured at Φ w."""
    m, n_leaves, k = features.shape
    r0 = None if w0 is None else (features.reshape(-1, k) @ np.asarray(w0, float)).reshape(m, -1)
    fit = bt_newton_tabular(prompt, chosen, rejected, weight, (m, n_leaves), lam, r0, gtol)
    w = basis.w_of_centred_reward(fit.x)
    return NewtonResult(w, fit.fun, fit.grad_norm, fit.n_iter, fit.converged)
