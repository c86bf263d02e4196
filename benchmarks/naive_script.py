"""The baseline of issue 8: the per-cell scipy script a researcher writes by hand.

Grid: V = 4, H = 5 (N = 1024 leaves, one prompt), dense linear features
k ∈ {2, 8, 32, 128, 1024}, n ∈ {32, 256, 2048} pairs, 5 seeds; λ tuned on a 25 % held-out
split by validation Bradley–Terry log-likelihood (the same λ grid as gvgap), then refitted on
all pairs. Two pipelines per cell:

* DPO over the leaf distribution: θ ∈ R^N leaf logits, log P = log_softmax(θ), loss
  mean −log σ(β[(log P − log P_ref)(ξ⁺) − (log P − log P_ref)(ξ⁻)]) + (λ/n) Ω(β(log P −
  log P_ref)), scipy L-BFGS-B with its default tolerances;
* linear RM r = Φ w by BT maximum likelihood (+ the same regulariser), scipy L-BFGS-B with
  defaults, then the soft-optimal policy log P = log_softmax(log P_ref + Φ ŵ / β).

Only numpy and scipy. Run standalone (``python benchmarks/naive_script.py [--small]``) it draws
its own instances (Gaussian features, r* = Φ w*, uniform π_ref); ``bench_vs_naive.py`` calls
:func:`fit_cell` on gvgap's instances instead, so both codes fit the same data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, log_softmax

KS = (2, 8, 32, 128, 1024)
NS = (32, 256, 2048)
SEEDS = 5
LAMS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
BETA = 1.0
VAL_FRAC = 0.25


def omega(r):
    """Ω(r) = ½ Σ (r − mean r)² and its gradient (one prompt)."""
    c = r - r.mean()
    return 0.5 * c @ c, c


def dpo_fit(logp_ref, c, rj, lam, beta):
    """DPO over free leaf logits; returns log P."""
    n = len(c)

    def f(theta):
        lp = log_softmax(theta)
        u = beta * ((lp[c] - logp_ref[c]) - (lp[rj] - logp_ref[rj]))
        loss = -log_expit(u).mean()
        d = -expit(-u) / n * beta
        g_lp = np.bincount(c, d, len(theta)) - np.bincount(rj, d, len(theta))
        ov, og = omega(beta * (lp - logp_ref))
        loss += lam / n * ov
        g_lp += lam / n * beta * og
        p = np.exp(lp)
        return loss, g_lp - p * g_lp.sum()

    res = minimize(f, logp_ref.copy(), jac=True, method="L-BFGS-B")
    return log_softmax(res.x), float(np.linalg.norm(res.jac))


def rm_fit(phi, c, rj, lam):
    """Linear BT reward model; returns r = Φ ŵ."""
    n = len(c)
    d_phi = phi[c] - phi[rj]

    def f(w):
        u = d_phi @ w
        r = phi @ w
        ov, og = omega(r)
        loss = -log_expit(u).mean() + lam / n * ov
        return loss, d_phi.T @ (-expit(-u) / n) + lam / n * (phi.T @ og)

    res = minimize(f, np.zeros(phi.shape[1]), jac=True, method="L-BFGS-B")
    return phi @ res.x, float(np.linalg.norm(res.jac))


def val_ll(r, c, rj):
    """Mean held-out BT log-likelihood of a reward vector."""
    return float(log_expit(r[c] - r[rj]).mean())


def select(fit_r, c, rj, rng):
    """λ by held-out BT likelihood (ties to larger λ), refit on all pairs."""
    idx = rng.permutation(len(c))
    n_val = max(1, round(VAL_FRAC * len(c)))
    va, tr = idx[:n_val], idx[n_val:]
    scores = [val_ll(fit_r(c[tr], rj[tr], lam)[0], c[va], rj[va]) for lam in LAMS]
    best = max(lam for lam, s in zip(LAMS, scores) if s >= max(scores) - 1e-7)
    return fit_r(c, rj, best)


def fit_cell(phi, r_star, logp_ref, chosen, rejected, beta, split_seed):
    """Both pipelines on one data set; returns J(π) of each and their final ‖∇‖."""

    def dpo_r(c, rj, lam):
        lp, gn = dpo_fit(logp_ref, c, rj, lam, beta)
        return beta * (lp - logp_ref), gn, lp

    def rm_r(c, rj, lam):
        r, gn = rm_fit(phi, c, rj, lam)
        return r, gn, log_softmax(logp_ref + r / beta)

    out = {}
    for name, fit_r in (("dpo", dpo_r), ("rlhf", rm_r)):
        _, gn, lp = select(fit_r, chosen, rejected, np.random.default_rng(split_seed))
        p = np.exp(lp)
        out[f"{name}/J"] = float(p @ r_star - beta * p @ (lp - logp_ref))
        out[f"{name}/grad_norm"] = gn
    return out


def instance(k, n, seed, vocab=4, horizon=5):
    """Own draw: Gaussian features (N, k), r* = Φ w*/√k, uniform π_ref, n BT pairs."""
    rng = np.random.default_rng([seed, k, n])
    n_leaves = vocab**horizon
    phi = rng.standard_normal((n_leaves, k))
    r_star = phi @ rng.standard_normal(k) / np.sqrt(k)
    logp_ref = np.full(n_leaves, -np.log(n_leaves))
    a, b = rng.integers(n_leaves, size=(2, n))
    win = rng.random(n) < expit(r_star[a] - r_star[b])
    return phi, r_star, logp_ref, np.where(win, a, b), np.where(win, b, a), int(rng.integers(2**31))


def main() -> None:
    """Run the grid; print per-cell seconds and the total."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="k <= 128 and n <= 256 only")
    args = ap.parse_args()
    ks = KS[:-1] if args.small else KS
    ns = NS[:-1] if args.small else NS
    t_all = time.perf_counter()
    for k in ks:
        for n in ns:
            t0 = time.perf_counter()
            for seed in range(SEEDS):
                phi, r_star, logp_ref, c, rj, split = instance(k, n, seed)
                fit_cell(phi, r_star, logp_ref, c, rj, BETA, split)
            print(f"k={k:5d} n={n:5d}  {time.perf_counter() - t0:8.2f} s", flush=True)
    print(f"total {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
