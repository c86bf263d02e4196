"""Converged optimisation: scipy L-BFGS on analytic gradients, then Newton polishing.

Optimisation error must never masquerade as a statistical effect (docs/design.md §3): every fit
reports its final gradient norm, and small problems are polished by Newton steps on a
finite-difference Hessian of the exact gradient until ‖∇‖ ≤ gtol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize as _scipy_minimize

FunGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: Default stopping tolerance on the gradient's Euclidean norm.
GTOL = 1e-9
#: Newton polishing is used up to this many parameters (Hessian by n gradient calls).
NEWTON_MAX_PARAMS = 400


@dataclass(frozen=True)
class OptResult:
    """Minimiser, value, gradient norm and whether ‖∇‖ ≤ gtol was reached."""

    x: np.ndarray
    fun: float
    grad_norm: float
    n_iter: int
    converged: bool


def minimize(
    fg: FunGrad,
    x0: np.ndarray,
    *,
    gtol: float = GTOL,
    maxiter: int = 20000,
    newton_max_params: int = NEWTON_MAX_PARAMS,
) -> OptResult:
    """Minimise a smooth function given value-and-gradient ``fg``.

    L-BFGS (scipy) first; if ‖∇‖ > gtol, up to 20 Newton polishing steps: a dense
    pseudo-inverse of the symmetrised finite-difference Hessian up to ``newton_max_params``
    parameters (robust to the flat directions of over-parameterised classes), Newton-CG with
    finite-difference Hessian-vector products above, each with backtracking on ‖∇‖ and f.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    res = _scipy_minimize(
        fg,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": maxiter,
            "maxfun": 4 * maxiter,
            "gtol": gtol * 1e-2,
            "ftol": 0.0,
            "maxcor": 30,
        },
    )
    x, n_iter = res.x, int(res.nit)
    f, g = fg(x)
    if np.linalg.norm(g) > gtol:
        solve = _dense_newton_step if x.size <= newton_max_params else _cg_newton_step
        x, f, g, k = _newton_polish(fg, x, f, g, gtol, solve)
        n_iter += k
    gn = float(np.linalg.norm(g))
    return OptResult(x, float(f), gn, n_iter, gn <= gtol)


def _dense_newton_step(fg: FunGrad, x: np.ndarray, g: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """−H⁺ g with H the symmetrised forward-difference Hessian of the exact gradient."""
    n = x.size
    hess = np.empty((n, n))
    for i in range(n):
        xi = x.copy()
        xi[i] += eps
        hess[:, i] = (fg(xi)[1] - g) / eps
    hess = 0.5 * (hess + hess.T)
    evals, evecs = np.linalg.eigh(hess)
    keep = evals > 1e-10 * max(evals.max(), 1e-300)
    return -(evecs[:, keep] @ ((evecs[:, keep].T @ g) / evals[keep]))


def _cg_newton_step(fg: FunGrad, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Newton-CG: solve H s = −g by conjugate gradients on finite-difference H·v products."""
    from scipy.sparse.linalg import LinearOperator, cg

    def hv(v: np.ndarray) -> np.ndarray:
        nv = np.linalg.norm(v)
        if nv == 0:
            return np.zeros_like(v)
        h = 1e-6 / nv
        return (fg(x + h * v)[1] - g) / h

    op = LinearOperator((x.size, x.size), matvec=hv, dtype=np.float64)
    step, _ = cg(op, -g, rtol=1e-4, maxiter=200)
    return step


def _newton_polish(fg: FunGrad, x, f, g, gtol, solve, max_steps: int = 20):
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (the count is returned)
        step = solve(fg, x, g)
        if not np.all(np.isfinite(step)) or g @ step >= 0:  # not a descent direction
            step = -g
        t, accepted = 1.0, None
        while t > 1e-8:
            fn, gn = fg(x + t * step)
            if fn <= f + 1e-4 * t * (g @ step) or np.linalg.norm(gn) < np.linalg.norm(g):
                accepted = (x + t * step, fn, gn)
                break
            t *= 0.5
        if accepted is None:
            break
        x, f, g = accepted
        if np.linalg.norm(g) <= gtol:
            break
    return x, f, g, steps
