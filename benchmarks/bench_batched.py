"""Batched vs one-at-a-time execution of the same c1_gibbs sweep (same machine, one run).

Two sweeps, each run with ``chunk_size=1`` (one run per task, ``run``) and with the runner's
automatic chunks (``run_batch``):

- ``shared instance``: a fixed ``instance_seed``, so ``run_batch`` builds each instance and
  its exact solutions once per chunk instead of once per run;
- ``own instance``: ``instance_seed = seed``, so the only saving is per-task overhead.

Prints wall times and the speed-up ratios, and checks that the result tables are identical.

Usage: .venv/bin/python benchmarks/bench_batched.py [--workers 2] [--seeds 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import spec_from_data


def sweep_data(seeds: int, instance_seed: int | None) -> dict:
    data = {
        "seeds": seeds,
        "fixed": {"vocab": 3, "horizon": 6, "n_prompts": 4, "n_policies": 1},
        "grid": {"ref": ["uniform", "random"], "beta": [0.5, 2.0]},
    }
    if instance_seed is not None:
        data["instance_seed"] = instance_seed
    return data


def timed(
    data: dict, workers: int, chunk_size: int | None, root: Path
) -> tuple[float, pd.DataFrame]:
    spec = spec_from_data("c1_gibbs", data, "bench_batched")
    out = root / f"{id(data)}-{workers}-{chunk_size}"
    start = time.perf_counter()
    df = run_sweep(spec, out, workers=workers, chunk_size=chunk_size, progress=False)
    return time.perf_counter() - start, df


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=128)
    args = p.parse_args()
    print(f"c1_gibbs, V=3 H=6 m=4, {4 * args.seeds} runs per sweep")
    print(f"{'sweep':<16}{'workers':>8}{'one-at-a-time s':>17}{'batched s':>11}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, inst in (("shared instance", 0), ("own instance", None)):
            data = sweep_data(args.seeds, inst)
            for workers in sorted({1, args.workers}):
                t_one, df_one = timed(data, workers, 1, Path(tmp))
                t_bat, df_bat = timed(data, workers, None, Path(tmp))
                pd.testing.assert_frame_equal(df_one, df_bat, check_exact=True)
                ratio = t_one / t_bat
                print(f"{label:<16}{workers:>8}{t_one:>17.2f}{t_bat:>11.2f}{ratio:>7.2f}x")
    print("results identical between batched and one-at-a-time: yes")


if __name__ == "__main__":
    main()
