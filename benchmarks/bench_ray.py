"""Ray with 2 workers vs 1 on the same sweep (target: >= 1.7x), measured in one run.

The sweep: c1_gibbs on trees of 4 x 4^6 leaves with 100 random policies per run (each run
~0.2 s, so scheduling overhead is small against the work; arrays of 128 KB stay in cache, so
two workers do not fight over memory bandwidth), one run per task. Each Ray cluster is
started and its workers warmed (imports) before the clock starts and stopped after it stops,
so the ratio compares execution, not cluster start-up (printed separately). Results of both
are checked to be identical.

Usage: .venv/bin/python benchmarks/bench_ray.py [--seeds 32] [--horizon 6] [--policies 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray

from gvgap.sweep.executors import SINGLE_THREAD_ENV
from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import spec_from_data

TARGET = 1.7


def _warm_up() -> None:
    """Import what a sweep task needs in a worker; hold it so each lands on its own worker."""
    import gvgap.experiments.c1_gibbs
    import gvgap.sweep.executors  # noqa: F401

    time.sleep(1.0)


def timed(spec, workers: int, out: Path) -> tuple[float, float, pd.DataFrame]:
    """(start-up s, sweep s, results) on a fresh local cluster of ``workers`` CPUs.

    Start-up includes one warm-up task per worker (imports), so both clocks start warm.
    """
    start = time.perf_counter()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        runtime_env={"env_vars": SINGLE_THREAD_ENV},
    )
    ray.get([ray.remote(num_cpus=1)(_warm_up).remote() for _ in range(workers)])
    boot = time.perf_counter() - start
    try:
        start = time.perf_counter()
        df = run_sweep(spec, out, executor="ray", workers=workers, chunk_size=1, progress=False)
        return boot, time.perf_counter() - start, df
    finally:
        ray.shutdown()


def mean_run_s(out: Path) -> float:
    """Mean compute time per run as measured inside the workers (from the run records)."""
    return statistics.mean(json.loads(p.read_text())["elapsed_s"] for p in out.glob("runs/*.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--horizon", type=int, default=6)
    p.add_argument("--policies", type=int, default=100)
    args = p.parse_args()
    data = {
        "seeds": args.seeds,
        "fixed": {"vocab": 4, "horizon": args.horizon, "n_prompts": 4, "n_policies": args.policies},
        "grid": {"ref": ["uniform", "random"]},
    }
    spec = spec_from_data("c1_gibbs", data, "bench_ray")
    n = len(spec.runs())
    with tempfile.TemporaryDirectory() as tmp:
        boot1, t1, df1 = timed(spec, 1, Path(tmp) / "w1")
        boot2, t2, df2 = timed(spec, 2, Path(tmp) / "w2")
        run1, run2 = mean_run_s(Path(tmp) / "w1"), mean_run_s(Path(tmp) / "w2")
    pd.testing.assert_frame_equal(df1, df2, check_exact=True)
    print(f"c1_gibbs V=4 H={args.horizon} m=4 {args.policies} policies/run, {n} runs, 1 per task")
    print(f"1 worker : {t1:6.2f} s  ({run1:.3f} s/run in the worker; start-up {boot1:.1f} s)")
    print(f"2 workers: {t2:6.2f} s  ({run2:.3f} s/run in a worker; start-up {boot2:.1f} s)")
    ratio = t1 / t2
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"speed-up 2 vs 1 workers: {ratio:.2f}x (target >= {TARGET}x: {verdict})")
    print("results identical: yes")


if __name__ == "__main__":
    main()
