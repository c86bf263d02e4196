"""Converged optimisation: scipy L-BFGS on analytic gradients, then Newton polishing.

Optimisation error must never masquerade as a statistical effect (DESIGN §3): every fit
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

    L-BFGS (scipy) to ``gtol``; if not reached and the problem is small, up to 20 damped
    Newton steps (pseudo-inverse of the symmetrised finite-difference Hessian, which is
    robust to the flat directions of over-parameterised classes) with backtracking.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    res = _scipy_minimize(
        fg,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": maxiter, "maxfun": 4 * maxiter, "gtol": gtol * 1e-2, "ftol": 0.0,
                 "maxcor": 30},
    )
    x, n_iter = res.x, int(res.nit)
    f, g = fg(x)
    if np.linalg.norm(g) > gtol and x.size <= newton_max_params:
        x, f, g, k = _newton_polish(fg, x, f, g, gtol)
        n_iter += k
    gn = float(np.linalg.norm(g))
    return OptResult(x, float(f), gn, n_iter, gn <= gtol)


def _fd_hessian(fg: FunGrad, x: np.ndarray, g: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Symmetrised forward-difference Hessian of the exact gradient."""
    n = x.size
    hess = np.empty((n, n))
    for i in range(n):
        xi = x.copy()
        xi[i] += eps
        hess[:, i] = (fg(xi)[1] - g) / eps
    return 0.5 * (hess + hess.T)


def _newton_polish(fg: FunGrad, x, f, g, gtol, max_steps: int = 20):
    k = 0
    for k in range(1, max_steps + 1):
        hess = _fd_hessian(fg, x, g)
        step = -np.linalg.lstsq(hess, g, rcond=1e-10)[0]
        if g @ step >= 0:  # not a descent direction: fall back to the gradient
            step = -g
        t = 1.0
        while t > 1e-8:
            fn, gn = fg(x + t * step)
            if fn <= f + 1e-4 * t * (g @ step) or np.linalg.norm(gn) < np.linalg.norm(g):
                break
            t *= 0.5
        if np.linalg.norm(gn) >= np.linalg.norm(g) and fn >= f:
            break
        x, f, g = x + t * step, fn, gn
        if np.linalg.norm(g) <= gtol:
            break
    return x, f, g, k
