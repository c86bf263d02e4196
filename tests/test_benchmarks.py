"""The benchmark scripts still run against the current API (issue 8: their ratios are a
deliverable; a script broken by a Config change went unnoticed once).

Each runs at its smallest setting in a fresh interpreter; the checks are on what the script
computes, never on its timings: both codes of ``bench_vs_naive`` reach the same J (the
convex optimum, up to the naive script's loose L-BFGS tolerance), the soft-VI kernels agree
with the library, and 1 vs 2 workers give identical tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    """stdout of ``python benchmarks/<args>`` from the repository root (exit code 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_bench_vs_naive_both_codes_reach_the_same_objective() -> None:
    # n = 256: at n = 32 the 8 validation pairs can let a 1e-5 fit difference flip the
    # selected λ (|ΔJ| up to 0.14 measured), which says nothing about the fits
    out = run_script("benchmarks/bench_vs_naive.py", "--ks", "2,128", "--ns", "256", "--seeds", "1")
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s*\d+\s+\d+\s", ln)]
    assert len(rows) == 2, out
    for row in rows:
        gv_grad, dj = float(row[5]), float(row[7])
        assert gv_grad <= 1e-9  # gvgap certifies its fits
        # same convex problems; the naive L-BFGS-B stops at ‖∇‖ ~ 1e-5, hence |ΔJ| ≲ 1e-3
        assert dj < 1e-2, row
    assert "TOTAL CPU gvgap" in out and "TOTAL CPU of measuring the gap" in out


def test_bench_ladder_prints_every_tree_and_the_slope() -> None:
    out = run_script("benchmarks/bench_ladder.py", "--max-h", "6", "--reps", "1")
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s*\d+\s+\d", ln)]
    assert [int(r[0]) for r in rows] == [81, 243, 729]
    for r in rows:  # cold ≥ warm: the measurement is work the cached run skips
        assert float(r[1]) >= 0 and float(r[4]) >= 0
    assert "log-log slope" in out


def test_bench_softvi_kernels_agree_with_the_library() -> None:
    out = run_script("benchmarks/bench_softvi.py", "--repeat", "1")
    rows = [ln for ln in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+1048576", ln)]
    assert len(rows) == 3, out
    for ln in rows:
        max_delta = float(ln.split("|")[6])
        assert max_delta < 1e-12, ln
    # the issue-8 table: the fused kernel against the numpy path (n/a without numba)
    fused = [ln for ln in out.splitlines() if re.match(r"\s*\d+\s+\d+ \|", ln)]
    assert len(fused) == 3, out
    for ln in fused:
        max_delta = ln.split("|")[5].strip()
        assert max_delta == "n/a" or float(max_delta) < 1e-12, ln


def test_bench_fit_certifies_every_fit() -> None:
    out = run_script("benchmarks/bench_fit.py", "--quick", "--repeat", "1")
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s*(dpo|rm)\s+\d", ln)]
    assert len(rows) >= 8, out
    assert all(row[-1] == "True" and float(row[5]) <= 1e-9 for row in rows), out


def test_bench_workers_tables_identical() -> None:
    out = run_script("benchmarks/bench_workers.py", "--workers", "2", "--experiments", "c1_gibbs")
    assert "results identical across worker counts: True" in out, out


def test_bench_reproduce_one_vs_two_workers_identical() -> None:
    out = run_script("benchmarks/bench_reproduce.py", "--workers", "2", "--experiments", "c1_gibbs")
    assert "results.parquet and verdicts.json identical: True" in out, out
    assert re.search(r"^\s+2\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), out
