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
#: Ctrl-C at a fixed time needs a sweep still running 1 s after start on any machine: 40 runs
#: of 4^9 leaves (~10 s on two cores; KILL_SWEEP's 40 runs of 4^7 leaves end within 1 s on a
#: fast one).
CTRL_C_SWEEP = KILL_SWEEP.replace("horizon = 7", "horizon = 9")
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


def _assert_group_ends(pgid: int, seconds: float, why: str) -> None:
    """Wait up to ``seconds`` for every process of the group to exit."""
    deadline = time.monotonic() + seconds
    while _live_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _live_in_group(pgid), why


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
            _assert_group_ends(proc.pid, 20, "orphaned pool workers kept running")
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


# ---------------------------------------------------------------- Ctrl-C (issue 19)

#: The one line of an interrupted command (gvgap/__init__.py).
INTERRUPTED = "gvgap: interrupted (run the same command again to resume)"


def _interrupt(proc: subprocess.Popen, runs: Path | None, after: float | None) -> str:
    """SIGINT to the command's whole process group (what Ctrl-C in a terminal does): ``after``
    seconds from its start, or (None) once 3 runs are stored in a ``runs/`` under ``runs``.
    Returns its stderr once it has exited, and checks that no process of its group is left."""
    start = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < 120:
            if after is not None and time.monotonic() - start >= after:
                break
            if after is None and sum(p.parent.name == "runs" for p in runs.rglob("*.json")) >= 3:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the command ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        _assert_group_ends(proc.pid, 10, "a process of the command outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return err.decode()


def test_ctrl_c_while_importing_is_one_line() -> None:
    """Issue 19: a Ctrl-C 0.4 s after start landed in the imports and printed a traceback. As
    the ``gvgap`` command, a SIGINT before ``cli.main`` takes over ends the process with the
    one line and exit code 130 (deterministic: the signal is sent right after ``import gvgap``
    in a process whose argv[0] is the console script)."""
    code = (
        "import os, signal, sys, time; sys.argv[0] = '/usr/local/bin/gvgap'; import gvgap; "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(30); print('not interrupted')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr == INTERRUPTED + "\n" and proc.stdout == ""
    lib = subprocess.run(  # a library user keeps Python's KeyboardInterrupt
        [sys.executable, "-c", code.replace("sys.argv[0] = '/usr/local/bin/gvgap'; ", "")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lib.returncode != 130 and "KeyboardInterrupt" in lib.stderr


@pytest.mark.parametrize("after", [0.4, 1.0, None], ids=["0.4s", "1.0s", "mid_sweep"])
def test_ctrl_c_at_any_moment_is_one_line_exit_130_and_resumable(
    tmp_path: Path, after: float | None
) -> None:
    """Ctrl-C to the process group (every pool worker and the forkserver get it too) at the
    issue's 0.4 s, at 1 s, and once runs are being stored: one line, exit 130, no process left,
    and a directory the same command resumes (or none at all, if no run was stored)."""
    toml = tmp_path / "kill.toml"
    toml.write_text(KILL_SWEEP if after is None else CTRL_C_SWEEP)
    out = tmp_path / "out"
    proc = _cli("sweep", str(toml), "--out", str(out), "--workers", "2", start_new_session=True)
    err = _interrupt(proc, out / "runs", after)
    lines = err.splitlines()  # progress lines (a slow machine prints them) precede the one line
    assert proc.returncode == 130 and lines[-1] == INTERRUPTED, (proc.returncode, err)
    assert "Traceback" not in err and sum("interrupted" in ln for ln in lines) == 1, err
    assert not list(tmp_path.rglob(".*.tmp"))
    if out.exists():
        assert any((out / "runs").glob("*.json")), "an unused directory is removed"
        again = _cli("sweep", str(toml), "--out", str(out), "--workers", "2")
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert len(list((out / "runs").glob("*.json"))) == len(load_spec(str(toml)).runs())


@pytest.mark.ray
def test_ctrl_c_on_ray_is_one_line_and_leaves_no_process(tmp_path: Path) -> None:
    """Issue 19: under Ray 4 of 14 Ctrl-Cs ended badly (SIGSEGV, a C++ check failure, an
    ignored Ctrl-C, orphaned Ray daemons). Ray's processes now start with SIGINT blocked, so
    only the driver sees it and stops them with ``ray.shutdown``."""
    pytest.importorskip("ray")
    toml = tmp_path / "kill.toml"
    toml.write_text(KILL_SWEEP)
    out = tmp_path / "out"
    proc = _cli(
        "sweep", str(toml), "--out", str(out), "--executor", "ray", "--workers", "2",
        start_new_session=True,
    )  # fmt: skip
    err = _interrupt(proc, out / "runs", None)
    lines = err.splitlines()
    assert proc.returncode == 130 and lines[-1] == INTERRUPTED, err
    assert "Traceback" not in err and sum("interrupted" in ln for ln in lines) == 1, err


def test_ctrl_c_during_reproduce_is_one_line(tmp_path: Path) -> None:
    """``gvgap reproduce`` shares one pool between verify's checks, every sweep, the verdicts
    and the figures; a Ctrl-C once its sweeps store runs ends them all: one line, exit 130,
    no process left (the pool's workers are ended before the sweeps are told to stop, so
    the pool's own thread reports nothing)."""
    out = tmp_path / "r"
    proc = _cli(
        "reproduce", "--quick", "--experiments", "h6_gap", "--workers", "2", "--out", str(out),
        start_new_session=True,
    )  # fmt: skip
    err = _interrupt(proc, out / "sweeps", None)
    lines = err.splitlines()  # progress lines (every 10 s when not a terminal), then the one
    assert proc.returncode == 130 and lines[-1] == INTERRUPTED, (proc.returncode, err)
    assert "Traceback" not in err and "Exception" not in err
    assert all(ln.startswith("gvgap: reproduce ") for ln in lines[:-1]), err
