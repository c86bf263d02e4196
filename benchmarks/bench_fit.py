"""Fit time of tabular DPO and tabular RM (BT) vs tree size and number of pairs.

Run: ``.venv/bin/python benchmarks/bench_fit.py [--repeat K] [--quick]``.

Problem: one prompt, V = 2, H ∈ {3, 5, 7, 9, 10} (8…1024 leaves), Dirichlet π_ref, Gaussian r*,
BT-labelled pairs from π_ref, λ = 0.1 (so the optimum is unique), fitted to the default
gtol. Prints a table (best-of-K wall seconds, final ‖∇‖, converged flag) and the log-log
growth slopes of time vs leaves (at the largest pair count) and vs pairs (at the largest
tree). Nothing is asserted. Note the optimiser's regimes (``learners/optim.py``): up to
``NEWTON_MAX_PARAMS`` parameters L-BFGS is followed by Newton steps on a finite-difference
Hessian (n gradient calls per step); above it, L-BFGS alone, which stops when f no longer
decreases in float64 (‖∇‖ ≈ 1e-8 here), so ``conv`` can be False there.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gvgap import learners
from gvgap.data import sample_pairs
from gvgap.envs.tree_env import make_env
from gvgap.policies import TabularPolicy
from gvgap.rewards import TabularReward

HORIZONS = (3, 5, 7, 9, 10)
PAIRS = (100, 1000, 10000)
LAM = 0.1


def _problem(horizon: int, n_pairs: int, seed: int = 0):
    """(env, prefs) for one V = 2 tree of the given horizon."""
    rng = np.random.default_rng([seed, horizon])
    env = make_env(
        vocab=2, horizon=horizon, r_star=rng.standard_normal(2**horizon), ref="random", rng=rng
    )
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, n_pairs, rng)
    return env, prefs


def _time(fn, repeat: int):
    """Best-of-``repeat`` wall time (s) and the last result."""
    best, res = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def _slope(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    """Run the grid and print the table and slopes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best-of-K timing (default 3)")
    ap.add_argument("--quick", action="store_true", help="H ≤ 7 and ≤ 1000 pairs")
    args = ap.parse_args()
    horizons = HORIZONS[:-1] if args.quick else HORIZONS
    pairs = PAIRS[:-1] if args.quick else PAIRS
    times: dict[tuple[str, int, int], float] = {}
    print(f"best of {args.repeat} (wall s); tabular classes, V = 2, λ = {LAM}")
    cols = f"{'fit':>4} {'leaves':>6} {'params':>6} {'pairs':>6} {'time s':>9} {'|grad|':>8}"
    print(f"{cols} {'iters':>5} conv")
    for horizon in horizons:
        for n_pairs in pairs:
            env, prefs = _problem(horizon, n_pairs)
            pol = TabularPolicy(1, 2, horizon, init=env.logpi_ref)
            rc = TabularReward(1, env.n_leaves)
            fits = {
                "dpo": (
                    pol.n_params,
                    lambda env=env, prefs=prefs, pol=pol: learners.dpo(pol, env, prefs, lam=LAM),
                ),
                "rm": (
                    rc.n_params,
                    lambda env=env, prefs=prefs, rc=rc: learners.fit_reward(
                        rc, prefs, env.logp_ref.shape, lam=LAM
                    ),
                ),
            }
            for name, (n_params, fn) in fits.items():
                t, res = _time(fn, args.repeat)
                times[name, env.n_leaves, n_pairs] = t
                print(
                    f"{name:>4} {env.n_leaves:>6} {n_params:>6} {n_pairs:>6} {t:>9.4f} "
                    f"{res.grad_norm:>8.1e} {res.extra['n_iter']:>5} {res.converged}"
                )
    leaves = [2**h for h in horizons]
    print("\nlog-log slopes (time ∝ size^slope)")
    for name in ("dpo", "rm"):
        s_leaves = _slope(leaves, [times[name, n, pairs[-1]] for n in leaves])
        s_pairs = _slope(pairs, [times[name, leaves[-1], k] for k in pairs])
        print(
            f"{name:>4}: vs leaves (pairs={pairs[-1]}) {s_leaves:+.2f}   "
            f"vs pairs (leaves={leaves[-1]}) {s_pairs:+.2f}"
        )


if __name__ == "__main__":
    main()
