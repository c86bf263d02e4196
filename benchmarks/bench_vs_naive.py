"""gvgap vs the naive per-cell scipy script (``naive_script.py``) on that script's grid.

Run: ``python benchmarks/bench_vs_naive.py [--small] [--seeds S] [--ks 2,8] [--ns 32,256]``.

Per cell (k, n) and seed: gvgap draws the instance and data with the experiments' shared
:func:`common.prepare` (family ``linear``, V = 4, H = 5, dictionary ``dense``, full λ grid) —
untimed, shared by both codes. Timed: (a) gvgap: ``fit_dpo`` (tabular DPO, λ selected) +
``fit_rlhf`` (linear RM, λ selected, exact soft RL) + J of both, which is what the naive script
outputs (gvgap's full metric rows — win rate, KLs — are timed apart and added in one line); (b)
the naive script's :func:`naive_script.fit_cell` on the same arrays and split seed. Both run in
this process with the same BLAS setting (gvgap's: 1 thread). gvgap fits to its own standard
(‖∇‖ ≤ 1e-9 absolute and 1e-10 relative, certified); the naive script stops at scipy L-BFGS-B's
defaults (its final ‖∇‖ is printed). Prints per-cell CPU seconds of each side, their ratio, the
worst gvgap ‖∇‖ and the largest |ΔJ| between the two codes, then the totals and the overall
ratio (CPU and wall). Also timed, once per instance (k, seed) as a sweep measures it — the
instance is shared by the three n: (c) the gap measured on the instance the way h6_gap does
(:class:`gvgap.ladder.Ladder`: exact containment of every rung, certified residual bounds,
ANOVA spans, the exact regret constants of the two classes fitted here, C of tabular Π and of
the linear RM, and the ladder's metrics); the totals are printed with it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gvgap import theory
from gvgap.experiments import common

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive_script


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(t0: tuple[float, float]) -> np.ndarray:
    c, w = _clock()
    return np.array([c - t0[0], w - t0[1]])


def measure_gap(k: int, seed: int) -> np.ndarray:
    """CPU/wall seconds of measuring the gap on the instance of (k, seed) (module docstring)."""
    from gvgap.ladder import Ladder

    cfg = common.ProblemConfig(family="linear", dictionary="dense", vocab=4, horizon=5, k=k)
    env = common.build_env(cfg, np.random.default_rng([1, seed]))
    t0 = _clock()
    lad = Ladder(env, oracle=env.features)
    lad.constant("policy", "tabular")
    lad.constant("reward", "oracle")
    lad.metrics()
    return _since(t0)


def run_cell(k: int, n: int, seed: int) -> dict:
    """One (k, n, seed): both codes on the same instance and data."""
    cfg = common.ProblemConfig(
        family="linear", dictionary="dense", vocab=4, horizon=5, k=k, n_pairs=n, lam_grid="full"
    )
    env, data, grid, split = common.prepare(
        cfg, np.random.default_rng(seed), np.random.default_rng([1, seed])
    )
    t0 = _clock()
    off = common.fit_dpo(env, data, grid, split)
    on = common.fit_rlhf(env, data, "linear", grid, split)
    j = {
        p: theory.objective_j(r.logp, env.r_star, env.logp_ref, env.beta, env.rho)
        for p, r in (("dpo", off), ("rlhf", on))
    }
    t_gv = _since(t0)
    t0 = _clock()
    rows = {**common.metric_row("dpo", env, off), **common.metric_row("rlhf", env, on)}
    t_metrics = _since(t0)
    t0 = _clock()
    nv = naive_script.fit_cell(
        env.features[0], env.r_star[0], env.logp_ref[0], data.chosen, data.rejected, env.beta, split
    )
    t_nv = _since(t0)
    return {
        "gvgap": t_gv,
        "naive": t_nv,
        "metrics": t_metrics,
        "gv_grad": max(rows["dpo/grad_norm"], rows["rlhf/grad_norm"]),
        "nv_grad": max(nv["dpo/grad_norm"], nv["rlhf/grad_norm"]),
        "dJ": max(abs(j[p] - nv[f"{p}/J"]) for p in ("dpo", "rlhf")),
    }


def main() -> None:
    """Run the grid and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="k <= 128, n <= 256")
    ap.add_argument("--seeds", type=int, default=naive_script.SEEDS)
    ap.add_argument("--ks", type=str, default=None, help="comma-separated k values")
    ap.add_argument("--ns", type=str, default=None, help="comma-separated n values")
    args = ap.parse_args()
    ks = naive_script.KS[:-1] if args.small else naive_script.KS
    ns = naive_script.NS[:-1] if args.small else naive_script.NS
    ks = tuple(int(v) for v in args.ks.split(",")) if args.ks else ks
    ns = tuple(int(v) for v in args.ns.split(",")) if args.ns else ns
    print(f"grid k={ks} n={ns} seeds={args.seeds}; CPU seconds summed over seeds")
    print(
        f"{'k':>5} {'n':>5} {'gvgap':>8} {'naive':>8} {'ratio':>7} {'gv |g|':>9} "
        f"{'naive |g|':>9} {'max|dJ|':>9}"
    )
    tot = {"gvgap": np.zeros(2), "naive": np.zeros(2), "metrics": np.zeros(2)}
    gap = np.zeros(2)
    for k in ks:
        for seed in range(args.seeds):
            gap += measure_gap(k, seed)
        for n in ns:
            cell = {"gvgap": np.zeros(2), "naive": np.zeros(2), "metrics": np.zeros(2)}
            gv_g = nv_g = dj = 0.0
            for seed in range(args.seeds):
                out = run_cell(k, n, seed)
                for side in cell:
                    cell[side] += out[side]
                gv_g, nv_g = max(gv_g, out["gv_grad"]), max(nv_g, out["nv_grad"])
                dj = max(dj, out["dJ"])
            for side in tot:
                tot[side] += cell[side]
            print(
                f"{k:5d} {n:5d} {cell['gvgap'][0]:8.2f} {cell['naive'][0]:8.2f} "
                f"{cell['naive'][0] / cell['gvgap'][0]:7.1f} {gv_g:9.1e} {nv_g:9.1e} {dj:9.1e}",
                flush=True,
            )
    print(
        f"TOTAL CPU gvgap {tot['gvgap'][0]:.1f} s, naive {tot['naive'][0]:.1f} s: "
        f"gvgap is {tot['naive'][0] / tot['gvgap'][0]:.1f}x faster"
    )
    full = tot["gvgap"][0] + tot["metrics"][0]
    print(
        f"TOTAL CPU gvgap incl. all metric rows (win rate, KLs) {full:.1f} s: "
        f"{tot['naive'][0] / full:.1f}x"
    )
    print(
        f"TOTAL CPU of measuring the gap, once per instance ({len(ks) * args.seeds} instances): "
        f"{gap[0]:.1f} s; gvgap fits + gap {tot['gvgap'][0] + gap[0]:.1f} s: "
        f"{tot['naive'][0] / (tot['gvgap'][0] + gap[0]):.1f}x; with the metric rows too "
        f"{full + gap[0]:.1f} s: {tot['naive'][0] / (full + gap[0]):.1f}x"
    )
    print(
        f"TOTAL wall gvgap {tot['gvgap'][1]:.1f} s, naive {tot['naive'][1]:.1f} s: "
        f"gvgap is {tot['naive'][1] / tot['gvgap'][1]:.1f}x faster"
    )


if __name__ == "__main__":
    main()
