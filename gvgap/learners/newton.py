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
  (Φ_c = U S Vᵀ, z = S Vᵀ w, so ‖C r‖ = ‖z‖) the Hessian is Dzᵀ W Dz + μ I, factorised by
  Cholesky (k×k, or the n×n Woodbury form when n < rank). The basis is computed once per
  feature map and shared by every fit (λ path, train/full refits).

Both are certified by the Euclidean norm of ∇f in those coordinates: a fit stops when
‖∇f‖ ≤ min(gtol, RTOL · ‖∇f(r₀)‖) and reports ``converged = ‖∇f‖ ≤ gtol``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import LinearOperator, cg
from scipy.special import expit, log_expit

#: Relative stopping tolerance on ‖∇f‖ (w.r.t. the gradient at the warm start).
RTOL = 1e-10
#: Newton iterations at most (each with an Armijo backtracking line search).
MAX_ITER = 100
#: Eigenvalues of ΦcᵀΦc below this fraction of the largest span no reward direction.
RANK_TOL = 1e-12


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
    """Damped Newton: ``evaluate(x) -> (f, ∇f, solve)`` with solve(v) ≈ (∇²f)⁻¹ v."""
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
        t = 1.0
        while t > 1e-12:
            xn = x + t * step
            fn = value(xn)
            if fn <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:  # no decrease representable: at the floor of floating point
            fn2, gn2, solve2 = evaluate(xn)
            if np.linalg.norm(gn2) < gn:
                x, f, g, solve = xn, fn2, gn2, solve2
                gn = float(np.linalg.norm(g))
                continue
            break
        x = xn
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
            lap = coo_matrix(
                (
                    np.concatenate([c, c, -c, -c]),
                    (np.concatenate([ic, ir, ic, ir]), np.concatenate([ic, ir, ir, ic])),
                ),
                shape=(size, size),
            ).tocsr()
            diag = lap.diagonal() + mu
            op = LinearOperator((size, size), matvec=lambda u: lap @ u + mu * u, dtype=float)
            pre = LinearOperator((size, size), matvec=lambda u: u / diag, dtype=float)
            rhs = centre(v)
            rtol = max(min(1e-3, float(np.linalg.norm(rhs))), 1e-14)  # forcing term
            s, _ = cg(op, rhs, rtol=rtol, atol=0.0, maxiter=20 * size, M=pre)
            return centre(s)

        return f, g, solve

    x0 = centre(np.zeros(size) if r0 is None else np.asarray(r0, float).ravel())
    res = _newton(evaluate, value, x0, gtol)
    return NewtonResult(res.x.reshape(shape), res.fun, res.grad_norm, res.n_iter, res.converged)


# ------------------------------------------------------------------------------ linear


@dataclass(frozen=True)
class FeatureBasis:
    """Orthonormal coordinates of the centred feature span: Φ_c T = U (orthonormal columns),
    ``T = V S⁻¹`` ``(k, rank)``; w = T z maps back (the minimum-norm w, as L-BFGS from 0)."""

    t: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureBasis:
        """From features ``(m, N, k)``: one Gram matrix and one symmetric eigensolve."""
        k = features.shape[-1]
        phi_c = (features - features.mean(axis=1, keepdims=True)).reshape(-1, k)
        gram = phi_c.T @ phi_c
        evals, evecs = np.linalg.eigh(gram)
        keep = evals > RANK_TOL * max(float(evals[-1]), 1e-300)
        return cls(evecs[:, keep] / np.sqrt(evals[keep]))


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
    m = features.shape[0]
    w_total = float(weight.sum())
    wn = weight / w_total
    mu = lam / (w_total * m)
    d = features[prompt, chosen] - features[prompt, rejected]  # (n, k)
    dz = d @ basis.t  # (n, rank)
    n, rank = dz.shape
    gram_n = dz @ dz.T if n < rank else None

    def value(z: np.ndarray) -> float:
        return float(wn @ -log_expit(dz @ z)) + 0.5 * mu * float(z @ z)

    def evaluate(z: np.ndarray):
        f, a, c = _bt_terms(dz @ z, wn)
        f += 0.5 * mu * float(z @ z)
        g = dz.T @ a + mu * z

        def solve(v: np.ndarray) -> np.ndarray:
            if gram_n is None:  # (Dzᵀ W Dz + μ I)⁻¹ v by Cholesky of the rank × rank Hessian
                h = dz.T @ (c[:, None] * dz)
                h[np.diag_indices_from(h)] += mu
                return cho_solve(cho_factor(h), v)
            # Woodbury with M = μ I + W½ K W½ (n × n):  H⁻¹v = (v − Dzᵀ W½ M⁻¹ W½ Dz v)/μ
            sc = np.sqrt(c)
            mm = sc[:, None] * gram_n * sc[None, :]
            mm[np.diag_indices_from(mm)] += mu
            inner = cho_solve(cho_factor(mm), sc * (dz @ v))
            return (v - dz.T @ (sc * inner)) / mu

        return f, g, solve

    if w0 is None:
        z0 = np.zeros(rank)
    else:  # the z whose T z is the projection of w0 on the span: z = S Vᵀ w0 = (TᵀT)⁻¹ Tᵀ w0
        z0 = (basis.t.T @ np.asarray(w0, float)) / (basis.t**2).sum(axis=0)
    res = _newton(evaluate, value, z0, gtol)
    return NewtonResult(basis.t @ res.x, res.fun, res.grad_norm, res.n_iter, res.converged)
