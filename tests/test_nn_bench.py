"""benchmarks/bench_neural.py still runs against the current API, at its smallest setting
in a fresh interpreter; the checks are on what it computes (the capacity share is a
fraction of the run; float32 and float64 agree to float32 round-off on the same
parameters), never on its timings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_neural.py", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_bench_neural_run_and_dtype_at_the_smallest_setting():
    small = ("--vocab", "2", "--horizon", "3", "--width", "4")
    out = _run("--part", "run", *small)
    row = json.loads(out[out.index("{") :])
    assert 0.0 < row["capacity_share"] < 1.0 and row["leaves"] == 8
    assert row["offline/capacity_residual"] >= 0 and 0 <= row["online/capacity_residual"] <= 1
    out = _run("--part", "dtype", *small)
    same = json.loads(re.search(r"same parameters, float32 vs float64: (\{.*\})", out).group(1))
    assert float(same["policy_max_abs_diff"]) < 1e-5 and float(same["rm_max_abs_diff"]) < 1e-5
    assert "trained in float32" in out
