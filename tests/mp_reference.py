"""Independent high-precision references (mpmath, 40 digits) for the certificates of issue 19.

Every function recomputes its quantity from the definition, in arbitrary precision, without
any gvgap code: the BT objective's optimum by Newton's method in mpmath, the best-vs-worst pair
law and the best-of-n law by inclusion–exclusion with exact powers, and KL by its sum.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

#: Working precision (decimal digits) of every reference.
DPS = 40


def _softplus_terms(delta):
    """log(1 + e^{−Δ}), −σ(−Δ), σ(Δ)σ(−Δ) in mpmath."""
    s_neg = 1 / (1 + mp.exp(delta))
    return mp.log1p(mp.exp(-delta)), -s_neg, s_neg * (1 - s_neg)


def bt_tabular_optimum(prompt, chosen, rejected, weight, shape, lam, r0, iters: int = 8):
    """argmin over centred r ``(m, N)`` of Σ ŵ softplus(−Δ) + (μ/2)‖C r‖², ŵ = w/Σw,
    μ = λ/(m Σw) (learners/newton.py), by Newton in mpmath from ``r0``; float64 ``(m, N)``.

    The Hessian L + μC is singular along per-prompt constants; the step solves
    (L + μC + P₁) s = −∇f with P₁ the per-prompt mean projector, which leaves s centred."""
    with mp.workdps(DPS):
        m, n = shape
        size = m * n
        w_total = mp.fsum(mp.mpf(float(v)) for v in weight)
        wn = [mp.mpf(float(v)) / w_total for v in weight]
        mu = mp.mpf(lam) / (w_total * m)
        ic = [int(p) * n + int(c) for p, c in zip(prompt, chosen)]
        ir = [int(p) * n + int(c) for p, c in zip(prompt, rejected)]
        r = [mp.mpf(float(v)) for v in np.asarray(r0, float).ravel()]
        for x in range(m):  # centre the start
            mean = mp.fsum(r[x * n : (x + 1) * n]) / n
            for j in range(x * n, (x + 1) * n):
                r[j] -= mean
        for _ in range(iters):
            g = [mu * v for v in r]
            h = mp.zeros(size, size)
            for x in range(m):
                for i in range(x * n, (x + 1) * n):
                    for j in range(x * n, (x + 1) * n):
                        h[i, j] = (mu * ((1 if i == j else 0) - mp.mpf(1) / n)) + mp.mpf(1) / n
            for a, b, wk in zip(ic, ir, wn):
                _, d1, d2 = _softplus_terms(r[a] - r[b])
                g[a] += wk * d1
                g[b] -= wk * d1
                h[a, a] += wk * d2
                h[b, b] += wk * d2
                h[a, b] -= wk * d2
                h[b, a] -= wk * d2
            step = mp.lu_solve(h, mp.matrix([-v for v in g]))
            r = [r[i] + step[i] for i in range(size)]
        return np.array([float(v) for v in r]).reshape(shape)


def bt_linear_gradient_on_span(features, prompt, chosen, rejected, weight, lam, r) -> float:
    """‖P ∇_r f‖ at the reward r ``(m, N)``, P the orthogonal projector onto span(C Φ): the
    gradient of the linear-RM objective on the whole feature span (orthonormal coordinates),
    with the basis from a 40-digit QR of the centred features (no rank truncation)."""
    with mp.workdps(DPS):
        m, n, k = features.shape
        w_total = mp.fsum(mp.mpf(float(v)) for v in weight)
        mu = mp.mpf(lam) / (w_total * m)
        rv = [[mp.mpf(float(v)) for v in row] for row in r]
        g = [[mu * (v - mp.fsum(row) / n) for v in row] for row in rv]
        for p, c, b, wk in zip(prompt, chosen, rejected, weight):
            _, d1, _ = _softplus_terms(rv[p][c] - rv[p][b])
            g[p][c] += mp.mpf(float(wk)) / w_total * d1
            g[p][b] -= mp.mpf(float(wk)) / w_total * d1
        cols = []
        for j in range(k):
            col = []
            for x in range(m):
                vals = [mp.mpf(float(features[x, i, j])) for i in range(n)]
                mean = mp.fsum(vals) / n
                col += [v - mean for v in vals]
            cols.append(col)
        basis = []  # modified Gram-Schmidt, twice, in 40 digits
        for col in cols:
            v = list(col)
            for _ in range(2):
                for q in basis:
                    dot = mp.fsum(a * b for a, b in zip(q, v))
                    v = [a - dot * b for a, b in zip(v, q)]
            nv = mp.sqrt(mp.fsum(a * a for a in v))
            if nv > mp.mpf(10) ** (-30) * mp.sqrt(mp.fsum(a * a for a in col) + 1):
                basis.append([a / nv for a in v])
        gf = [v for row in g for v in row]
        return float(mp.sqrt(mp.fsum(mp.fsum(a * b for a, b in zip(q, gf)) ** 2 for q in basis)))


def _levels(r_row):
    """Distinct reward values of one prompt (ascending) and each leaf's level index."""
    levels = sorted(set(float(v) for v in r_row))
    index = {v: k for k, v in enumerate(levels)}
    return levels, [index[float(v)] for v in r_row]


def best_worst_law(logp, r_hat, n: int, rho):
    """W[x, best, worst] ``(m, N, N)`` of (best, worst) among n i.i.d. samples, from the
    positive multinomial sum P(max in level i, min in level j) =
    Σ_{k≥1, l≥1, k+l≤n} n!/(k! l! (n−k−l)!) p_i^k p_j^l a^{n−k−l} (a: mass strictly between),
    shared within levels in proportion to P. No cancellation at any magnitude."""
    with mp.workdps(DPS):
        m, n_leaves = logp.shape
        out = np.zeros((m, n_leaves, n_leaves))
        for x in range(m):
            _, lvl = _levels(r_hat[x])
            p = [mp.exp(mp.mpf(float(v))) for v in logp[x]]
            n_lvl = max(lvl) + 1
            mass = [mp.fsum(p[i] for i in range(n_leaves) if lvl[i] == k) for k in range(n_lvl)]
            for a_leaf in range(n_leaves):
                for b_leaf in range(n_leaves):
                    i, j = lvl[a_leaf], lvl[b_leaf]
                    if i <= j:
                        continue
                    between = mp.fsum(mass[j + 1 : i])
                    tot = mp.fsum(
                        mp.factorial(n)
                        / (mp.factorial(k) * mp.factorial(l) * mp.factorial(n - k - l))
                        * mass[i] ** k
                        * mass[j] ** l
                        * between ** (n - k - l)
                        for k in range(1, n)
                        for l in range(1, n - k + 1)
                    )
                    share = p[a_leaf] / mass[i] * p[b_leaf] / mass[j]
                    out[x, a_leaf, b_leaf] = float(mp.mpf(float(rho[x])) * tot * share)
        return out


def best_of_n_law(logp_base, r_hat, n: int):
    """log P(best-of-n returns ξ) ``(m, N)``: level L gets F(≤L)^n − F(<L)^n (ties uniform,
    shared in proportion to P), computed at a precision that resolves every term."""
    m, n_leaves = logp_base.shape
    out = np.empty((m, n_leaves))
    for x in range(m):
        with mp.workdps(DPS + 700):  # p down to 1e-300: F^n − (F − p)^n needs > 300 digits
            _, lvl = _levels(r_hat[x])
            p = [mp.exp(mp.mpf(float(v))) for v in logp_base[x]]
            n_lvl = max(lvl) + 1
            mass = [mp.fsum(p[i] for i in range(n_leaves) if lvl[i] == k) for k in range(n_lvl)]
            below = [mp.fsum(mass[:k]) for k in range(n_lvl)]
            for i in range(n_leaves):
                k = lvl[i]
                prob = ((below[k] + mass[k]) ** n - below[k] ** n) * p[i] / mass[k]
                out[x, i] = float(mp.log(prob)) if prob > 0 else -np.inf
    return out
