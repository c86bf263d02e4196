"""Sweep reliability: SIGKILL + resume equals an uninterrupted run; every executor agrees."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import load_spec

#: ~40 runs of ~30-60 ms: slow enough to kill mid-way, fast enough for the test budget.
KILL_SWEEP = """
[sweep]
experiment = "c1_gibbs"
seeds = 10
[fixed]
vocab = 4
horizon = 7
n_prompts = 4
n_policies = 2
[grid]
ref = ["uniform", "random"]
beta = [0.5, 2.0]
"""
SMALL_SWEEP = """
[sweep]
experiment = "c1_gibbs"
seeds = 3
instance_seed = 11
[grid]
vocab = [2, 3]
horizon = [2, 4]
ref = ["uniform", "random"]
"""


def _cli(*args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gvgap.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _live_in_group(pgid: int) -> list[int]:
    """Pids of the non-zombie processes of a process group (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _kill_mid_sweep(toml: Path, out: Path, total: int) -> dict[Path, int]:
    """Start the sweep, SIGKILL the sweep process once some runs are stored, and check that
    its pool workers exit by themselves."""
    proc = _cli("sweep", str(toml), "--out", str(out), "--workers", "2", start_new_session=True)
    runs = out / "runs"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if runs.is_dir() and len(list(runs.glob("*.json"))) >= 3:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
        if Path("/proc/self/stat").exists():
            deadline = time.monotonic() + 20
            while _live_in_group(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _live_in_group(proc.pid), "orphaned pool workers kept running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    stored = {p: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert 0 < len(stored) < total
    assert not (out / "results.parquet").exists()
    return stored


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    toml = tmp_path / "kill.toml"
    toml.write_text(KILL_SWEEP)
    total = len(load_spec(str(toml)).runs())
    killed = tmp_path / "killed"
    stored = _kill_mid_sweep(toml, killed, total)

    proc = _cli("sweep", str(toml), "--out", str(killed), "--workers", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # the runs finished before the kill were kept, not recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in stored.items())
    assert len(list((killed / "runs").glob("*.json"))) == total
    assert not list(killed.rglob(".*.tmp"))

    clean = tmp_path / "clean"
    run_sweep(load_spec(str(toml)), clean, workers=1, progress=False)
    resumed = pd.read_parquet(killed / "results.parquet")
    expected = pd.read_parquet(clean / "results.parquet")
    key = ["run_id", "metric"]
    pd.testing.assert_frame_equal(
        resumed.sort_values(key, ignore_index=True),
        expected.sort_values(key, ignore_index=True),
        check_exact=True,
    )
    assert (killed / "results.parquet").read_bytes() == (clean / "results.parquet").read_bytes()


def test_local_pool_equals_in_process(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(SMALL_SWEEP)
    spec = load_spec(str(toml))
    one = run_sweep(spec, tmp_path / "one", workers=1, progress=False, chunk_size=1)
    pool = run_sweep(spec, tmp_path / "pool", workers=2, progress=False)
    pd.testing.assert_frame_equal(one, pool, check_exact=True)


@pytest.mark.ray
def test_ray_equals_local(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    toml = tmp_path / "s.toml"
    toml.write_text(SMALL_SWEEP)
    spec = load_spec(str(toml))
    local = run_sweep(spec, tmp_path / "local", workers=1, progress=False)
    remote = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert not ray.is_initialized()  # the runner stops the cluster it started
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    assert (tmp_path / "local" / "results.parquet").read_bytes() == (
        tmp_path / "ray" / "results.parquet"
    ).read_bytes()
