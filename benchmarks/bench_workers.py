"""The main job's sweeps at 1 worker vs N workers, measured in one run (issue 8: target a
speed-up ≥ 0.6·N on N cores).

Runs the quick sweeps of the chosen experiments (default: every experiment that needs no
torch) into fresh temporary directories, once with 1 worker and once with N, checks the two
results tables are identical, and prints wall times, the speed-up and the efficiency
speed-up / N.

    .venv/bin/python benchmarks/bench_workers.py            # N = os.cpu_count()
    .venv/bin/python benchmarks/bench_workers.py --workers 4 --experiments h6_gap h2_regularisation
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from gvgap.experiments.registry import EXPERIMENTS
from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import load_spec


def sweep_all(eids: list[str], root: Path, workers: int) -> tuple[float, pd.DataFrame]:
    """Wall seconds and the concatenated results of the quick sweeps of ``eids``."""
    t0 = time.perf_counter()
    frames = [
        run_sweep(load_spec(eid, quick=True), root / eid, workers=workers, progress=False)
        for eid in eids
    ]
    return time.perf_counter() - t0, pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    default = [e for e, m in EXPERIMENTS.items() if not getattr(m, "REQUIRES_TORCH", False)]
    ap.add_argument("--experiments", nargs="+", default=default)
    args = ap.parse_args()
    n = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        t1, df1 = sweep_all(args.experiments, Path(tmp) / "w1", 1)
        tn, dfn = sweep_all(args.experiments, Path(tmp) / f"w{n}", n)
    same = (
        df1.sort_values(list(df1.columns))
        .reset_index(drop=True)
        .equals(dfn.sort_values(list(dfn.columns)).reset_index(drop=True))
    )
    runs = df1["run_id"].nunique()
    print(f"quick sweeps of {', '.join(args.experiments)}: {runs} runs")
    print(f"1 worker: {t1:.1f} s   {n} workers: {tn:.1f} s   (cores: {os.cpu_count()})")
    print(f"speed-up {t1 / tn:.2f}x   efficiency {t1 / tn / n:.2f} (target >= 0.6)")
    print(f"results identical across worker counts: {same}")


if __name__ == "__main__":
    main()
