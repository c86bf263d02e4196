"""The cost of measuring the gap against the cost of the run it describes, from 10² to 10⁵
leaves (issue 15, item 10).

Run: ``python benchmarks/bench_ladder.py [--max-h 10] [--reps 2] [--generator dense]``.

Per tree V = 3, H = 4 … max-h (81 … 59,049 leaves), one h6_gap run (``generator`` dense,
k = 3, n = 256, λ selected on the short grid, protocol ``gift_tabular``: tabular DPO against
the oracle RM, the classes of the naive script) is timed three ways, CPU seconds in this
process, best of ``--reps``:

* ``cold``: :func:`h6_gap.run` with an empty instance cache — the instance is drawn, the
  ladder measured (exact containment of every rung, certified residual bounds, exact ANOVA
  spans, the regret constants and bias floors of the two classes used), the pipelines fitted
  and every metric computed;
* ``warm``: the same run again with the instance cached (fits + metrics only);
* ``env``: drawing the instance alone (soft value iteration, the family's descriptor).

``measure = cold − warm − env`` is what the gap costs; ``base = warm + env`` is what the run
costs without it. Prints per tree: leaves, cold, warm, env, measure, measure/base, then the
log–log slope of cold against leaves from 10² leaves on. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gvgap.experiments import common, h6_protocols
from gvgap.experiments import h6_gap as H


def cpu(fn, reps: int) -> float:
    """Best CPU time of ``reps`` calls of ``fn``."""
    best = np.inf
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def measure(horizon: int, generator: str, reps: int) -> dict[str, float]:
    """The three timings of one tree (module docstring)."""
    cfg = H.Config(
        generator=generator,
        vocab=3,
        horizon=horizon,
        n_pairs=256,
        lam_grid="short",
        protocol="gift_tabular",
    )

    def run():
        return H.run(cfg, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))

    def cold():
        h6_protocols.clear_cache()
        run()

    out = {"leaves": 3**horizon, "cold": cpu(cold, reps)}
    run()  # fill the cache
    out["warm"] = cpu(run, reps)
    out["env"] = cpu(lambda: common.build_env(cfg, np.random.default_rng(1)), reps)
    out["measure"] = max(out["cold"] - out["warm"] - out["env"], 0.0)
    return out


def main() -> None:
    """Time every tree and print the table and the slope."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-h", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--generator", default="dense")
    args = ap.parse_args()
    print(f"{'leaves':>7} {'cold':>8} {'warm':>8} {'env':>8} {'measure':>8} {'meas/base':>9}")
    rows = []
    for h in range(4, args.max_h + 1):
        r = measure(h, args.generator, args.reps)
        rows.append(r)
        base = r["warm"] + r["env"]
        print(
            f"{r['leaves']:7d} {r['cold']:8.3f} {r['warm']:8.3f} {r['env']:8.3f} "
            f"{r['measure']:8.3f} {r['measure'] / base:9.2f}",
            flush=True,
        )
    big = [r for r in rows if r["leaves"] >= 100]
    if len(big) >= 2:
        x = np.log([r["leaves"] for r in big])
        y = np.log([r["cold"] for r in big])
        slope = np.polyfit(x, y, 1)[0]
        print(f"log-log slope of the cold run's CPU against leaves (>= 10^2): {slope:.2f}")


if __name__ == "__main__":
    main()
