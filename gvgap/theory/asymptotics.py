"""Large-n limits of Bradley–Terry maximum likelihood on a tree: the regret constant C of a
well-specified class and the misspecification floor of one that does not hold its target.

Setting (docs/theory.md §2, docs/theory.md "The sample-complexity constant"). D holds n pairs, each
drawn as x ~ ρ, ξ₁, ξ₂ ~ μ(·|x) i.i.d., labelled by the true BT model σ(r*(ξ₁) − r*(ξ₂)).
A reward class is smooth in its parameters θ; near the truth r_θ = r* + ψᵀ(θ − θ*) + o,
ψ(x, ξ) its *sufficient features* (for a linear class its features, for the local-reward
class of a policy class the Jacobian of β log π_θ/π_ref). Both pipelines of gvgap are BT MLE
over such a class followed by soft RL (offline DPO: the local-reward class; docs/theory.md §3), and
the regret of the returned policy is a KL to the optimum (Gibbs identity):

    regret = J(π*) − J(π̂) = β E_x KL(P*_{r̂} ‖ P*_{r*}) = (1/2β) E_x Var_{P*}(r̂ − r*) + O(‖δ‖³).

With θ̂ − θ* ≈ N(0, I⁻¹/n) (MLE asymptotics; the λ/Σw prior fades as 1/n):

    n · E[regret] → C = tr(Σ_* I⁻¹) / (2β),
    Σ_* = E_x Cov_{ξ~P*(·|x)} ψ(x, ξ),                                   (leaf covariance)
    I   = E_x E_{ξ₁,ξ₂~μ} σ'(Δ*) (ψ(ξ₁) − ψ(ξ₂))(ψ(ξ₁) − ψ(ξ₂))ᵀ,          (Fisher, one pair)

σ' = σ(1 − σ), Δ* = r*(ξ₁) − r*(ξ₂). Parameters shared across prompts add their prompts'
Σ_* and I before the trace (pooling); per-prompt parameters make C a sum over prompts in which
ρ cancels (prompt x gets ρ_x n pairs and weight ρ_x in the regret). C is invariant to any
invertible reparameterisation of ψ and to per-prompt constants in ψ, so every function below
takes a basis of the class's tangent space modulo constants (full column rank).

Per prompt, with W_ij = μ_i μ_j σ'(r*_i − r*_j) and w = W 1 (both over all ordered pairs),

    I_x = 2 Ψᵀ (diag(w) − W) Ψ,         Σ_x = Ψᵀ diag(p) Ψ − (Ψᵀ p)(Ψᵀ p)ᵀ.

The kernel σ'(r*_i − r*_j) is never formed: it is factorised as u a uᵀ with q columns
(:class:`PairKernel`: exactly, by grouping leaves of equal reward, when r* takes few values,
as a planning check's two; else by Chebyshev interpolation to ~1e-11), so the cost is
O(nnz(Ψ)·d + N·q·d + q²·d + d³). The tabular class (every reward, ψ = leaf indicators) has a
closed form in the Laplacian L = diag(w) − W of the pair graph, tr(Σ L⁺) = tr(Σ (L + c11ᵀ)⁻¹)
for any c > 0 (Σ1 = 0), inverted by Woodbury in O(N q²).

Misspecified classes: the MLE converges to the population minimiser of the BT cross-entropy
θ∞ = argmin_θ E_x E_{μ⊗μ} CE(σ(Δ*), σ(Δ_θ)) (:func:`population_bt_fit_linear`); its regret,
the *bias* floor, is computed by the caller from r_θ∞ (the policy it induces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import LinAlgError, cho_factor, cho_solve, eigh
from scipy.special import expit

from gvgap.losses import bt_rows

#: Relative eigenvalue tolerance (× dimension × machine ε) below which a Fisher direction is
#: numerically null; its leaf variance is reported as ``dropped`` (0 when every direction of
#: the class is identified by μ).
EIG_TOL = 64 * np.finfo(float).eps


def sigma_prime(delta: np.ndarray) -> np.ndarray:
    """σ'(Δ) = σ(Δ) σ(−Δ), computed without cancellation for any |Δ|."""
    return expit(delta) * expit(-delta)


#: Above this many distinct reward values the pair kernel is represented by Chebyshev
#: interpolation instead of exact grouping.
GROUPS_MAX = 64
#: Target max error of the interpolated kernel σ'(r_i − r_j) (checked on the leaves' values).
KERNEL_TOL = 1e-11
#: Most Chebyshev nodes: enough for KERNEL_TOL on reward ranges up to ≈ 36 (the families'
#: defaults span ≤ 25); a wider range keeps this many and reports its larger ``error``. Bounds
#: the memory of the factor (N × q floats), which the memory estimate counts.
KERNEL_MAX_COLUMNS = 160


@dataclass(frozen=True)
class PairKernel:
    """A factorisation σ'(r_i − r_j) = (u a uᵀ)_ij of one prompt's pair kernel, ``u`` ``(N, q)``,
    ``a`` ``(q, q)`` symmetric positive semi-definite.

    * **grouped** (at most :data:`GROUPS_MAX` distinct rewards, exact): u = leaf → value
      indicators, a = σ'(v_k − v_l) over the K distinct values v;
    * **interpolated** (more values): u_ik = ℓ_k(r_i), the Lagrange polynomials at q Chebyshev
      nodes z_k of [min r, max r] (barycentric form), a = σ'(z_k − z_l). x ↦ σ'(x − y) is
      analytic in the strip |Im x| < π, so on an interval of half-length h the error decays like
      ρ^−q, ρ = π/h + √(1 + π²/h²) (Bernstein ellipse); q is chosen from that rate for
      :data:`KERNEL_TOL` (relative to σ'(0) = 1/4, far below the precision a constant
      compared with measured regrets needs) and the error is then measured on the leaves'
      own values
      (``error``: max over 4096 leaf pairs including the extremes).

    Either way the cost of everything below is O(N q), not O(N²).
    """

    u: np.ndarray
    a: np.ndarray
    error: float

    @classmethod
    def of(cls, r: np.ndarray) -> PairKernel:
        """The kernel of rewards ``r`` ``(N,)``."""
        values, inverse = np.unique(r, return_inverse=True)
        if values.size <= GROUPS_MAX:
            u = np.zeros((r.size, values.size))
            u[np.arange(r.size), inverse] = 1.0
            return cls(u, sigma_prime(values[:, None] - values[None, :]), 0.0)
        lo, hi = float(values[0]), float(values[-1])
        half = 0.5 * (hi - lo)
        rate = np.pi / half + np.sqrt(1.0 + (np.pi / half) ** 2)
        q = min(int(np.ceil(np.log(1.0 / KERNEL_TOL) / np.log(rate))) + 8, KERNEL_MAX_COLUMNS)
        z = np.cos(np.pi * (np.arange(q) + 0.5) / q)  # Chebyshev nodes of the first kind
        nodes = lo + half * (1.0 + z)
        u = _lagrange(r, nodes, z, lo, half)
        a = sigma_prime(nodes[:, None] - nodes[None, :])
        kernel = cls(u, a, 0.0)
        return cls(u, a, kernel.check(r))

    def check(self, r: np.ndarray, n_pairs: int = 4096) -> float:
        """Max |σ'(r_i − r_j) − (u a uᵀ)_ij| over a fixed set of leaf pairs (the extremes and
        a deterministic stride through the rest)."""
        i = np.unique(np.r_[np.argmin(r), np.argmax(r), np.linspace(0, r.size - 1, 64).astype(int)])
        j = np.unique(np.linspace(0, r.size - 1, max(n_pairs // i.size, 1)).astype(int))
        exact = sigma_prime(r[i][:, None] - r[j][None, :])
        approx = self.u[i] @ self.a @ self.u[j].T
        return float(np.abs(exact - approx).max())

    def row_weight(self, mu: np.ndarray) -> np.ndarray:
        """w_i = μ_i Σ_j μ_j σ'(r_i − r_j), ``(N,)``: the row sums of W = D_μ S D_μ."""
        return mu * (self.u @ (self.a @ (self.u.T @ mu)))


def _lagrange(x: np.ndarray, nodes: np.ndarray, z: np.ndarray, lo: float, half: float):
    """``(N, q)`` Lagrange basis ℓ_k(x) at Chebyshev nodes (barycentric formula of the second
    kind, weights (−1)^k sin θ_k; exact 1 at a node)."""
    q = nodes.size
    wts = (-1.0) ** np.arange(q) * np.sin(np.pi * (np.arange(q) + 0.5) / q)
    t = (x - lo) / half - 1.0  # in [-1, 1]
    out = np.subtract.outer(t, z)  # t_i − z_k, then the barycentric terms in place
    hit = out == 0.0
    rows = hit.any(axis=1)
    out[hit] = 1.0
    np.divide(wts, out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    if rows.any():
        out[rows] = hit[rows]
    return out


def _quad(psi: np.ndarray | sp.spmatrix, weight: np.ndarray) -> np.ndarray:
    """Ψᵀ diag(weight) Ψ as a dense ``(d, d)`` array (Ψ dense or sparse)."""
    if sp.issparse(psi):
        return np.asarray((psi.T @ sp.diags(weight) @ psi).todense())
    return (psi * weight[:, None]).T @ psi


def bt_fisher(psi: np.ndarray | sp.spmatrix, mu: np.ndarray, kernel: PairKernel) -> np.ndarray:
    """Fisher information of one BT pair from μ⊗μ in the coordinates of Ψ, one prompt.

    I = Σ_{i,j} μ_i μ_j σ'(r*_i − r*_j) (ψ_i − ψ_j)(ψ_i − ψ_j)ᵀ = 2 (Ψᵀ diag(w) Ψ − Gᵀ a G),
    G = uᵀ diag(μ) Ψ ``(q, d)`` (module docstring; :class:`PairKernel`).

    Args:
        psi: ``(N, d)`` tangent basis (dense or scipy.sparse).
        mu: ``(N,)`` leaf law of each side of a pair.
        kernel: :meth:`PairKernel.of` (r*) of the prompt.

    Returns:
        ``(d, d)`` symmetric positive semi-definite matrix.
    """
    w = kernel.row_weight(mu)
    g = np.asarray(psi.T @ (kernel.u * mu[:, None])).T  # (q, d)
    out = 2.0 * (_quad(psi, w) - g.T @ kernel.a @ g)
    return 0.5 * (out + out.T)


def leaf_covariance(psi: np.ndarray | sp.spmatrix, p: np.ndarray) -> np.ndarray:
    """Cov_{ξ~p} ψ(ξ) = Ψᵀ diag(p) Ψ − (Ψᵀp)(Ψᵀp)ᵀ, ``(d, d)`` (one prompt)."""
    mean = np.asarray(psi.T @ p).ravel()
    out = _quad(psi, p) - np.outer(mean, mean)
    return 0.5 * (out + out.T)


@dataclass(frozen=True)
class Constant:
    """C = tr(Σ I⁺)/(2β) with its certificate.

    Attributes:
        value: C (nats · pairs); +inf when a direction with leaf variance has no Fisher
            information (the class is not identified by the pair law).
        dim: dimension of the tangent basis.
        rank: Fisher directions kept (eigenvalue > EIG_TOL · d · λ_max), = dim when the
            Cholesky factorisation succeeded.
        dropped: fraction of tr(Σ) on the dropped directions (0 when rank = dim).
    """

    value: float
    dim: int
    rank: int
    dropped: float


def regret_constant(cov: np.ndarray, fisher: np.ndarray, beta: float) -> Constant:
    """C = tr(Σ I⁻¹)/(2β) by Cholesky; where I is numerically singular, by its eigenbasis:
    directions with eigenvalue ≤ EIG_TOL·d·λ_max are dropped and the share of tr(Σ) they
    carry is reported (C = +inf if that share exceeds √EIG_TOL: an unidentified direction
    that moves the policy)."""
    d = cov.shape[0]
    if d == 0:
        return Constant(0.0, 0, 0, 0.0)
    try:
        fac = cho_factor(fisher, lower=True, check_finite=True)
        diag = np.abs(np.diag(fac[0]))
        if diag.min() > np.sqrt(EIG_TOL * d) * diag.max():
            return Constant(float(np.trace(cho_solve(fac, cov))) / (2 * beta), d, d, 0.0)
    except LinAlgError:
        pass
    lam, vec = eigh(fisher)
    keep = lam > EIG_TOL * d * max(lam.max(), 0.0)
    proj = vec.T @ cov @ vec
    total = float(np.trace(cov))
    dropped = float(np.trace(proj[~keep][:, ~keep])) / total if total > 0 else 0.0
    if dropped > np.sqrt(EIG_TOL):
        return Constant(float("inf"), d, int(keep.sum()), dropped)
    value = float(np.sum(np.diag(proj)[keep] / lam[keep])) / (2 * beta)
    return Constant(value, d, int(keep.sum()), max(dropped, 0.0))


def linear_constant(
    psi: list[np.ndarray | sp.spmatrix],
    p: np.ndarray,
    mu: np.ndarray,
    r_star: np.ndarray,
    rho: np.ndarray,
    beta: float,
    *,
    shared: bool,
    kernels: list[PairKernel] | None = None,
) -> Constant:
    """C of a class with tangent bases ``psi[x]`` ``(N, d)`` per prompt.

    Args:
        psi: one basis per prompt (the same object may repeat).
        p: ``(m, N)`` P*(ξ|x); mu: ``(m, N)`` pair law of each side; r_star: ``(m, N)``.
        rho: ``(m,)``; beta: β.
        shared: one parameter vector for every prompt (Σ_* and I add with weights ρ_x), else
            one per prompt (C adds over prompts, ρ cancels).
        kernels: the prompts' :class:`PairKernel` (computed here if None).
    """
    covs, fishers = [], []
    for x, base in enumerate(psi):
        covs.append(leaf_covariance(base, p[x]))
        kernel = PairKernel.of(r_star[x]) if kernels is None else kernels[x]
        fishers.append(bt_fisher(base, mu[x], kernel))
    if shared:
        cov = sum(rho[x] * c for x, c in enumerate(covs))
        fisher = sum(rho[x] * f for x, f in enumerate(fishers))
        return regret_constant(cov, fisher, beta)
    parts = [regret_constant(c, f, beta) for c, f in zip(covs, fishers)]
    return Constant(
        float(sum(c.value for c in parts)),
        sum(c.dim for c in parts),
        sum(c.rank for c in parts),
        max(c.dropped for c in parts),
    )


def tabular_constant(
    p: np.ndarray,
    mu: np.ndarray,
    r_star: np.ndarray,
    beta: float,
    kernels: list[PairKernel] | None = None,
) -> Constant:
    """C of the tabular class (every reward modulo per-prompt constants), summed over prompts.

    Per prompt, ψ = leaf indicators, I = 2L with L = diag(w) − W the pair-graph Laplacian,
    Σ = diag(p) − ppᵀ, and tr(Σ I⁺) = ½ tr(Σ M⁻¹) with M = L + c 11ᵀ (c = mean w > 0)
    positive definite (Σ1 = 0 and M⁻¹ = L⁺ + 11ᵀ/(c N²)). With the kernel factorised,
    W = D_μ u a uᵀ D_μ, M = diag(w) + B Q Bᵀ with B = [D_μ u, 1], Q = diag(−a, c): diagonal
    plus rank q + 1, inverted by Woodbury in O(N q²).
    """
    total, dim = 0.0, 0
    for x in range(r_star.shape[0]):
        kernel = PairKernel.of(r_star[x]) if kernels is None else kernels[x]
        w = kernel.row_weight(mu[x])
        tr = _tabular_trace_woodbury(p[x], mu[x][:, None] * kernel.u, kernel.a, w)
        total += 0.5 * tr / (2 * beta)
        dim += r_star.shape[1] - 1
    return Constant(total, dim, dim, 0.0)


def _tabular_trace_woodbury(p: np.ndarray, u: np.ndarray, a: np.ndarray, w: np.ndarray) -> float:
    """tr((diag p − ppᵀ) M⁻¹), M = diag(w) − u a uᵀ + c11ᵀ = D + B Q Bᵀ (B = [u, 1],
    Q = diag(−a, c), c = mean w).

    Woodbury with Q kept on the left (a may be singular):
    M⁻¹ = D⁻¹ − D⁻¹ B Q (I + Bᵀ D⁻¹ B Q)⁻¹ Bᵀ D⁻¹.
    """
    n, k = u.shape
    q = np.zeros((k + 1, k + 1))
    q[:k, :k] = -a
    q[k, k] = float(w.mean())
    dinv_b = np.empty((n, k + 1))
    np.divide(u, w[:, None], out=dinv_b[:, :k])
    np.divide(1.0, w, out=dinv_b[:, k])
    gram = np.empty((k + 1, k + 1))  # Bᵀ D⁻¹ B, B = [u, 1] (D⁻¹B is dinv_b)
    gram[:k, :k] = u.T @ dinv_b[:, :k]
    gram[:k, k] = gram[k, :k] = dinv_b[:, k] @ u
    gram[k, k] = dinv_b[:, k].sum()
    inner = np.eye(k + 1) + gram @ q
    core = q @ np.linalg.solve(inner, np.eye(k + 1))  # Q (I + Bᵀ D⁻¹ B Q)⁻¹
    diag_corr = np.einsum("ik,ik->i", dinv_b @ core, dinv_b)
    tr_diag = float(np.sum(p / w) - p @ diag_corr)
    v = p / w - dinv_b @ (core @ (dinv_b.T @ p))  # M⁻¹ p
    return tr_diag - float(p @ v)


# ---------------------------------------------------------------- misspecified limits


@dataclass(frozen=True)
class PopulationFit:
    """θ∞ of :func:`population_bt_fit_linear` and its certificate."""

    theta: np.ndarray
    loss: float
    grad_norm: float
    converged: bool
    n_iter: int


def population_bt_loss(
    r: np.ndarray, r_star: np.ndarray, mu: np.ndarray, rho: np.ndarray
) -> tuple[float, np.ndarray, list[np.ndarray]]:
    """E_x E_{μ⊗μ} CE(σ(Δ*), σ(Δ_r)) minus its value at r = r* (so 0 at the truth), its
    gradient ``(m, N)`` w.r.t. r, and per prompt the Hessian kernel W^r_ij = μ_iμ_j σ'(Δ_r)
    (dense ``(N, N)``; O(N²) per prompt).

    CE(q, σ(Δ)) = −q log σ(Δ) − (1 − q) log σ(−Δ); ∂/∂r_i = 2 ρ_x Σ_j μ_iμ_j (σ(Δ_ij) − q_ij).
    """
    loss, grad, kernels = 0.0, np.zeros_like(r), []
    for x in range(r.shape[0]):
        d = r[x][:, None] - r[x][None, :]
        ds = r_star[x][:, None] - r_star[x][None, :]
        q = expit(ds)
        mm = mu[x][:, None] * mu[x][None, :]
        ce = q * bt_rows(d) + (1 - q) * bt_rows(-d)
        ce0 = q * bt_rows(ds) + (1 - q) * bt_rows(-ds)
        loss += rho[x] * float(np.sum(mm * (ce - ce0)))
        grad[x] = 2 * rho[x] * np.sum(mm * (expit(d) - q), axis=1)
        kernels.append(rho[x] * mm * sigma_prime(d))
    return loss, grad, kernels


def population_bt_fit_linear(
    psi: list[np.ndarray],
    r_star: np.ndarray,
    mu: np.ndarray,
    rho: np.ndarray,
    *,
    shared: bool,
    gtol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[np.ndarray, PopulationFit]:
    """The BT limit r∞ = Ψ θ∞ of a linear class (dense bases ``psi[x]`` ``(N, d)``): damped
    Newton on the population cross-entropy (convex in θ; Hessian 2Ψᵀ(diag(W1) − W)Ψ).

    Returns:
        ``(r∞ (m, N), fit)``; per-prompt classes are fitted jointly (block-diagonal system).
    """
    m, n = r_star.shape
    dims = [b.shape[1] for b in psi]
    if shared:
        offsets = [0] * m
        total = dims[0]
    else:
        offsets = list(np.cumsum([0, *dims[:-1]]))
        total = int(sum(dims))

    def reward(theta: np.ndarray) -> np.ndarray:
        return np.stack([psi[x] @ theta[offsets[x] : offsets[x] + dims[x]] for x in range(m)])

    def pull(g_leaf: np.ndarray) -> np.ndarray:
        out = np.zeros(total)
        for x in range(m):
            out[offsets[x] : offsets[x] + dims[x]] += psi[x].T @ g_leaf[x]
        return out

    theta = np.zeros(total)
    loss, g_leaf, kernels = population_bt_loss(reward(theta), r_star, mu, rho)
    grad = pull(g_leaf)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        if np.linalg.norm(grad) <= gtol:
            break
        hess = np.zeros((total, total))
        for x in range(m):
            sl = slice(offsets[x], offsets[x] + dims[x])
            lap = -kernels[x]
            lap[np.diag_indices(n)] += kernels[x].sum(axis=1)
            hess[sl, sl] += 2 * psi[x].T @ lap @ psi[x]
        step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
        t = 1.0
        while True:
            cand = theta + t * step
            new = population_bt_loss(reward(cand), r_star, mu, rho)
            if new[0] <= loss + 1e-4 * t * float(grad @ step) or t < 1e-10:
                break
            t *= 0.5
        theta, (loss, g_leaf, kernels) = cand, new
        grad = pull(g_leaf)
    gn = float(np.linalg.norm(grad))
    return reward(theta), PopulationFit(theta, loss, gn, gn <= gtol, it)
