"""``gvgap reproduce --quick`` at 1 vs N workers: the main job's speed-up and efficiency.

Run: ``python benchmarks/bench_reproduce.py [--workers N] [--experiments ID ...]``.

Each side is one fresh ``gvgap reproduce --quick`` in its own interpreter and directory
(imports, pool start-up, verify, every sweep and robustness re-check, verdicts, figures and
report all included), 1 worker first, then N. Prints both wall times, the speed-up t1 / tN,
the efficiency speed-up / N (issue 8's target: ≥ 0.6) and whether ``results.parquet`` and
``verdicts.json`` are identical between the two. Nothing is asserted. Measure on an idle
machine: another job on the cores makes the N-worker side look slower than it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def reproduce_once(out: Path, workers: int, experiments: list[str] | None) -> float:
    """Wall seconds of one ``gvgap reproduce --quick`` into ``out`` (its log beside it)."""
    cmd = [sys.executable, "-m", "gvgap.cli", "reproduce", "--quick", "--out", str(out)]
    cmd += ["--workers", str(workers)]
    if experiments:
        cmd += ["--experiments", *experiments]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"reproduce with {workers} worker(s) exited {rc}; see {out}.log")
    return seconds


def same_outputs(a: Path, b: Path) -> bool:
    """Identical results tables and verdict files."""
    try:
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / "results.parquet"), pd.read_parquet(b / "results.parquet")
        )
    except AssertionError:
        return False
    verdicts = [json.loads((d / "verdicts.json").read_text()) for d in (a, b)]
    return verdicts[0] == verdicts[1]


def main() -> None:
    """Run both sides and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--experiments", nargs="+", default=None, help="default: all")
    ap.add_argument("--keep", type=Path, default=None, help="keep both run directories here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        times = {w: reproduce_once(base / f"w{w}", w, args.experiments) for w in (1, args.workers)}
        identical = same_outputs(base / "w1", base / f"w{args.workers}")
    speedup = times[1] / times[args.workers]
    print(f"reproduce --quick, experiments: {' '.join(args.experiments or ['all'])}")
    print(f"{'workers':>8} {'wall s':>8} {'speed-up':>9} {'efficiency':>11}")
    print(f"{1:8d} {times[1]:8.1f} {'—':>9} {'—':>11}")
    eff = speedup / args.workers
    print(f"{args.workers:8d} {times[args.workers]:8.1f} {speedup:9.2f} {eff:11.2f}")
    print(f"results.parquet and verdicts.json identical: {identical}")


if __name__ == "__main__":
    main()
