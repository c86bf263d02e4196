"""`gvgap llm run` at 1 worker vs N workers, measured in one run (issue 16: the LLM path in
minutes on a CPU box).

Runs one sweep file (default: ``sims/llm_tiny.toml`` cut to ``--seeds`` seeds and
``--scale`` of its steps, so the benchmark takes a few minutes) into fresh temporary
directories, once with 1 worker and once with N, checks that the two results tables are
identical (every run computes on one thread, :func:`gvgap.nn.device.fixed_threads`), and
prints wall times, the speed-up and the efficiency speed-up / N.

    .venv/bin/python benchmarks/bench_llm_workers.py              # N = os.cpu_count()
    .venv/bin/python benchmarks/bench_llm_workers.py --seeds 2 --scale 1.0
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

from gvgap.sweep.llm_run import run_llm

STEP_FIELDS = ("sft_steps", "rm_steps", "dpo_steps", "online_steps")


def cut(text: str, seeds: int, scale: float) -> str:
    """The sweep file with ``seeds`` seeds and every step count × ``scale``."""
    text = re.sub(r"(?m)^seeds = \d+", f"seeds = {seeds}", text)
    pattern = rf"(?m)^({'|'.join(STEP_FIELDS)}) = (\d+)"
    return re.sub(pattern, lambda m: f"{m[1]} = {max(1, round(int(m[2]) * scale))}", text)


def timed(file: Path, out: Path, workers: int) -> tuple[float, pd.DataFrame]:
    """Wall seconds of the whole command (runs, then verdicts, figures and report: the last
    three are the same serial work for any ``workers``) and its results."""
    t0 = time.perf_counter()
    df = run_llm(str(file), out, progress=False, workers=workers)
    return time.perf_counter() - t0, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default="sims/llm_tiny.toml")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.25, help="step counts × this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "bench.toml"
        file.write_text(cut(Path(args.file).read_text(), args.seeds, args.scale))
        t1, one = timed(file, Path(tmp) / "w1", 1)
        tn, many = timed(file, Path(tmp) / f"w{args.workers}", args.workers)
    pd.testing.assert_frame_equal(one.drop(columns="run_id"), many.drop(columns="run_id"))
    speedup = t1 / tn
    runs = one["run_id"].nunique()
    print(f"{args.file}: {runs} runs ({args.seeds} seeds, steps x {args.scale})")
    print(
        f"1 worker {t1:.1f} s, {args.workers} workers {tn:.1f} s: speed-up {speedup:.2f}x, "
        f"efficiency {speedup / args.workers:.2f}; results identical"
    )


if __name__ == "__main__":
    main()
