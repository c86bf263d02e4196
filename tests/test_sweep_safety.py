"""Issue 8: sweep directories that cannot be poisoned, limits checked before anything is
written, and the discoverability of the CLI (show, --version, run's config echo, progress
lines with an ETA, a closed stdout pipe).

Every test here is fast (c1_gibbs runs of a few ms); refusals through the real CLI with a
byte-identical directory check live in tests/test_cli_inputs.py.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import re
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

from gvgap.cli import main
from gvgap.errors import UserError
from gvgap.experiments import base, h6_gap
from gvgap.experiments.registry import EXPERIMENTS
from gvgap.sweep import executors, ray_executor, runner, store
from gvgap.sweep.progress import (
    PlainProgress,
    SharedProgress,
    format_seconds,
    make_progress,
)
from gvgap.sweep.show import describe_fields, format_show, parse_attributes
from gvgap.sweep.spec import spec_from_data

#: h6_gap's SMOKE config (a fast run of another experiment).
SMOKE_H6 = dataclasses.asdict(h6_gap.SMOKE)


def small(seeds: int = 2) -> object:
    data = {"seeds": seeds, "fixed": {"n_policies": 2}, "grid": {"vocab": [2, 3]}}
    return spec_from_data("c1_gibbs", data, "test")


def sweep(out: Path, seeds: int = 2, **kw) -> pd.DataFrame:
    return runner.run_sweep(small(seeds), out, workers=1, progress=False, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The results of an uninterrupted sweep of :func:`small` (what every resume must equal)."""
    return sweep(tmp_path_factory.mktemp("ref") / "ref")


# ---------------------------------------------------------------- run-file integrity


def test_run_files_carry_a_checksum(tmp_path: Path) -> None:
    sweep(tmp_path)
    for path in (tmp_path / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        body = {k: v for k, v in rec.items() if k != "sha256"}
        assert rec["sha256"] == store.digest(body)
        assert store.record_problem(rec, path.stem) is None


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r["metrics"].update({"gibbs_error": 0.5}), "sha256"),
        (lambda r: r.update(experiment="h6_gap"), "run id"),
        (lambda r: r["config"].update(vocab=9), "run id"),
        (lambda r: r.update(seed=7), "run id"),
        (lambda r: r.update(instance_seed=2**70), "instance_seed"),
        # issue 19: deleting the hash must not let the edited value through
        (lambda r: (r["metrics"].update({"gibbs_error": 0.5}), r.pop("sha256")), "no sha256"),
    ],
    ids=["metric", "experiment", "config", "seed", "instance_seed_2_70", "metric_hash_deleted"],
)
def test_edited_run_file_is_rerun_with_one_line(
    tmp_path: Path, reference: pd.DataFrame, capsys: pytest.CaptureFixture, edit, needle: str
) -> None:
    sweep(tmp_path)
    capsys.readouterr()
    path = sorted((tmp_path / "runs").glob("*.json"))[0]
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))
    again = sweep(tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"runs/{path.stem}.json" in err and needle in err, err
    assert "re-running it" in err
    pd.testing.assert_frame_equal(again, reference, check_exact=True)
    assert store.record_problem(json.loads(path.read_text()), path.stem) is None


@pytest.mark.parametrize(
    "payload", [b'{"run_id": "trunc', b"\xff\xfe\x00garbage", b"[1, 2]", b'{"metrics": 1}']
)
def test_corrupt_run_file_via_cli_is_one_line(tmp_path: Path, payload: bytes) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[sweep]\nexperiment = "c1_gibbs"\nseeds = 2\n[fixed]\nn_policies = 2\n')
    out = tmp_path / "out"
    assert cli(["sweep", str(toml), "--out", str(out), "--workers", "1"])[0] == 0
    ref = pd.read_parquet(out / "results.parquet")
    victim = sorted((out / "runs").glob("*.json"))[1]
    victim.write_bytes(payload)
    code, _, err = cli(["sweep", str(toml), "--out", str(out), "--workers", "1"])
    assert code == 0 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if victim.stem in ln]
    assert len(lines) == 1 and "re-running it" in lines[0], err
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), ref)


def test_foreign_run_file_is_reported_not_dropped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep(tmp_path)
    stray = tmp_path / "runs" / "0123456789abcdef.json"
    stray.write_text('{"run_id": "0123456789abcdef"}')
    capsys.readouterr()
    sweep(tmp_path)
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "not a run of this sweep" in err
    # a genuine run file of another experiment is reported too, not dropped silently
    other = tmp_path.parent / "other"
    runner.run_sweep(
        spec_from_data("h6_gap", {"fixed": dict(SMOKE_H6)}, "t"), other, workers=1, progress=False
    )
    foreign = next((other / "runs").glob("*.json"))
    (tmp_path / "runs" / foreign.name).write_bytes(foreign.read_bytes())
    sweep(tmp_path)
    err = capsys.readouterr().err
    assert f"runs/{foreign.stem}.json: a run of h6_gap, not c1_gibbs; ignoring it" in err, err


# ---------------------------------------------------------------- one spec per directory


def test_different_spec_needs_append_and_manifest_records_both(tmp_path: Path) -> None:
    sweep(tmp_path, seeds=1)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=r"different sweep.*--append"):
        sweep(tmp_path, seeds=3)
    assert snapshot(tmp_path) == before
    df = sweep(tmp_path, seeds=3, append=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["spec"]["seeds"] for s in manifest["specs"]] == [1, 3]
    assert df["run_id"].nunique() == 6 == manifest["n_runs"]
    sweep(tmp_path, seeds=3)  # a spec already recorded resumes without --append


# ---------------------------------------------------------------- interrupted starts


def test_directory_without_manifest_from_interrupted_start_resumes(
    tmp_path: Path, reference: pd.DataFrame
) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".x.json.1234.tmp").write_text("partial")
    pd.testing.assert_frame_equal(sweep(tmp_path), reference, check_exact=True)


def test_valid_runs_without_manifest_are_adopted(tmp_path: Path, reference) -> None:
    sweep(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "results.parquet").unlink()
    pd.testing.assert_frame_equal(sweep(tmp_path), reference, check_exact=True)


def test_ctrl_c_during_startup_leaves_a_resumable_directory(
    tmp_path: Path, reference: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as during ray.init

    monkeypatch.setattr(runner, "open_executor", interrupted)
    toml = tmp_path / "s.toml"
    toml.write_text('[sweep]\nexperiment = "c1_gibbs"\n')
    code, _, err = cli(["sweep", str(toml), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert code == 130 and err.count("\n") == 1 and "resume" in err
    monkeypatch.undo()
    with pytest.raises(UserError, match="no manifest"):  # still refuses foreign results
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / "results.parquet").write_bytes(b"x")
        sweep(tmp_path / "f")
    assert cli(["sweep", str(toml), "--out", str(tmp_path / "o"), "--workers", "1"])[0] == 0


def test_disk_full_is_one_line_and_resumable(
    tmp_path: Path, reference: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.atomic_write
    calls = {"runs": 0}

    def full_after_two(path: Path, data: bytes) -> None:
        if path.parent.name == "runs" and not path.name.startswith("."):
            calls["runs"] += 1
            if calls["runs"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(store, "atomic_write", full_after_two)
    with pytest.raises(UserError, match=r"No space left on device.*resume"):
        sweep(tmp_path)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    monkeypatch.undo()
    pd.testing.assert_frame_equal(sweep(tmp_path), reference, check_exact=True)
    assert not list(tmp_path.rglob("*.tmp"))


def test_address_that_is_not_a_ray_cluster_is_one_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Issue 19: a port that accepts TCP but is no Ray cluster (here an HTTP server) made
    ray.init print RpcErrors for minutes and left ``.lock`` and ``runs/``. Its reply to the
    HTTP/2 preface is not a SETTINGS frame: refused on one line before anything is written."""
    import http.server
    import socketserver

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Quiet) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        toml = tmp_path / "s.toml"
        toml.write_text('[sweep]\nexperiment = "c1_gibbs"\n')
        argv = ["sweep", str(toml), "--out", str(tmp_path / "o"), "--executor", "ray"]
        code, _, err = cli([*argv, "--address", f"127.0.0.1:{port}"])
        server.shutdown()
    assert code == 2 and err.count("\n") == 1 and "not a Ray cluster" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_executor_that_fails_to_start_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """A refusal after the directory was prepared (``ray.init`` fails: a UserError from
    ray_session) or a Ctrl-C before the first run: the sweep removes the lock, ``runs/`` and
    manifest it added, and the directories it created; a directory that existed keeps only
    what it held (issue 19)."""

    def cannot_start(*args, **kwargs):
        raise UserError("--address 10.0.0.1:6379: cannot start Ray: timed out")

    out = tmp_path / "a" / "b"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(runner, "open_executor", cannot_start)
    with pytest.raises(UserError, match="cannot start Ray"):
        sweep(out)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert list(tmp_path.iterdir()) == []


def test_unreachable_ray_address_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match=r"--address 127\.0\.0\.1:1: no Ray cluster"):
        ray_executor.check_address("127.0.0.1:1", timeout=2.0)
    assert time.monotonic() - start < 5.0


# ---------------------------------------------------------------- limits


def test_memory_estimate_refuses_what_lbfgs_cannot_fit() -> None:
    # V = 2, H = 23: 2^23 leaves, P = 2^24 − 1 + m node parameters; L-BFGS alone keeps
    # 2·30 history vectors = 60·8·P bytes = 7.5 GiB, over the 8 GiB budget with the rest.
    cfg = dataclasses.replace(h6_gap.SMOKE, tree="", vocab=2, horizon=23)
    assert base.estimate_memory(cfg) > 60 * 8 * 2**24
    with pytest.raises(UserError, match="GiB"):
        base.check_resources(cfg)
    base.check_resources(h6_gap.SMOKE)  # the default-sized problems pass
    for module in EXPERIMENTS.values():
        for grid_value in [module.SMOKE]:
            assert base.estimate_memory(grid_value) < base.memory_limit()


def test_limits_refuse_without_building_big_integers() -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match="tree too large"):
        base.make_config(h6_gap.Config, {"vocab": 3, "horizon": 10**15})
    with pytest.raises(UserError, match="2\\*\\*53"):
        base.make_config(h6_gap.Config, {"horizon": 1e18})
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("beta", base.BETA_RANGE)
def test_beta_range_edges_give_numbers(beta: float) -> None:
    """Both ends of the allowed β range give finite metrics (h6's SMOKE problem, the
    experiment that divided by zero at β = 0.01); just outside, a refusal."""
    import math

    from gvgap.sweep.executors import execute_chunk
    from gvgap.sweep.spec import RunSpec, config_record

    cfg = dataclasses.replace(h6_gap.SMOKE, beta=beta)
    metrics = execute_chunk([RunSpec("h6_gap", config_record(cfg), 0, 0)])[0]["metrics"]
    # a regret constant is NaN by definition for a class that misses its target (the learned
    # protocol may pick one at n = 20); every other metric is a finite number
    nan_ok = {"offline/C": "offline/contains", "online/C": "online/contains"}
    for key, value in metrics.items():
        side = nan_ok.get(key) or ("offline/contains" if key.startswith("delta_C") else None)
        if side is not None and math.isnan(value):
            missing = metrics[side] == 0.0 or metrics["online/contains"] == 0.0
            assert missing, key
        else:
            assert math.isfinite(value), key
    for outside in (beta * 0.9, beta * 1.1):
        if not base.BETA_RANGE[0] <= outside <= base.BETA_RANGE[1]:
            with pytest.raises(UserError, match=r"beta must be in \[0\.001, 1000\]"):
                base.make_config(h6_gap.Config, {"beta": outside})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan")])
def test_lam_nan_and_inf_are_refused_negative_still_selects(value) -> None:
    with pytest.raises(UserError, match="'lam' must be a finite number"):
        base.make_config(h6_gap.Config, {"lam": value})
    assert base.make_config(h6_gap.Config, {"lam": "-1"}).lam == -1.0


# ---------------------------------------------------------------- discoverability


def test_show_lists_every_field_with_type_default_allowed_meaning() -> None:
    for eid, module in EXPERIMENTS.items():
        rows = describe_fields(module)
        names = [f.name for f in dataclasses.fields(module.Config)]
        assert [r["name"] for r in rows] == names
        assert all(r["meaning"] != "(undocumented)" for r in rows), eid
        text = format_show(eid, module)
        assert all(name in text for name in names)
    rows = {r["name"]: r for r in describe_fields(h6_gap)}
    assert rows["beta"]["allowed"] == "[0.001, 1000]"
    allowed = "auto, oracle (linear), dictionary, window<J>, tabular, local"
    assert rows["rm_class"]["allowed"] == allowed
    assert rows["per_prompt_weights"] == {
        **rows["per_prompt_weights"],
        "type": "bool",
        "default": "false",
    }
    code, out, _ = cli(["show", "h6_gap"])
    assert code == 0 and "online_policy_class" in out


def test_parse_attributes_joins_continuation_lines() -> None:
    doc = """Summary.

    Attributes:
        a: first line
            continued.
        b: second.

    Note:
        not an attribute: x.
    """
    assert parse_attributes(doc) == {"a": "first line continued.", "b": "second."}


def test_version_and_run_echo() -> None:
    code, out, _ = cli(["--version"])
    assert code == 0 and out.startswith("gvgap ")
    code, out, err = cli(["run", "c1_gibbs", "--set", "vocab=2", "--set", "n_policies=1"])
    assert code == 0 and "gibbs_error" in json.loads(out)  # stdout stays JSON
    assert err.count("\n") == 1 and '"vocab":2' in err and '"n_policies":1' in err


def test_closed_stdout_pipe_exits_quietly() -> None:
    cmd = [sys.executable, "-m", "gvgap.cli", "run", "c1_gibbs", "--set", "vocab=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader went away before gvgap wrote (like `| head`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert err.count("\n") == 1 and err.startswith("gvgap: run "), err  # only the config echo


def test_default_install_is_the_numpy_core() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert names == {
        "numpy",
        "scipy",
        "pandas",
        "pyarrow",
        "matplotlib",
        "seaborn",
        "tqdm",
        "threadpoolctl",
    }
    extras = project["optional-dependencies"]
    assert {"torch", "ray", "hf", "dev"} <= set(extras)
    assert any(d.startswith("torch>=2.3") for d in extras["hf"])
    # the main job's modules import neither torch nor Ray
    code = (
        "import sys, gvgap.cli, gvgap.reproduce, gvgap.sweep.runner, gvgap.verify; "
        "print(sorted({'torch', 'ray', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.stdout.strip() == "[]", out.stderr


def test_plain_progress_lines_have_an_eta() -> None:
    clock = iter([0.0, 5.0, 12.0, 30.0, 31.0]).__next__
    buf = io.StringIO()
    with PlainProgress(10, 0, "c1_gibbs", file=buf, interval=10.0, clock=clock) as bar:
        bar.update(1)  # t = 5: under the interval, no line
        bar.update(1)  # t = 12: 2 runs in 12 s → 6 s/run, 8 left → ETA 48 s
        bar.update(1)  # t = 30: 3 runs in 30 s → 10 s/run, 7 left → ETA 70 s = 1:10
    lines = buf.getvalue().splitlines()
    assert lines[0] == "gvgap: c1_gibbs 2/10 runs (20%), 0:12 elapsed, ETA 0:48"
    assert lines[1] == "gvgap: c1_gibbs 3/10 runs (30%), 0:30 elapsed, ETA 1:10"
    assert lines[2].startswith("gvgap: c1_gibbs 3/10 runs (30%), 0:31 elapsed")
    assert format_seconds(3725) == "1:02:05"
    assert isinstance(make_progress(5, 0, "x", None), PlainProgress)  # stderr is not a tty


def test_shared_progress_counts_every_sweep_once_and_closes_once() -> None:
    """Four threads × 25 updates on one display: all 100 counted, and a sweep leaving its
    ``with`` block does not print the final line; only close() does, once (reproduce runs 44
    sweeps at once). The lock itself is not what this can catch: under the GIL these few
    increments rarely race."""
    clock = iter([0.0] + [1.0] * 200).__next__
    buf = io.StringIO()
    shared = SharedProgress(PlainProgress(100, 0, "reproduce", file=buf, clock=clock))

    def sweep() -> None:
        with make_progress(100, 0, "x", shared) as bar:
            for _ in range(25):
                bar.update(1)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.display.n == 100 and buf.getvalue() == ""
    shared.close()
    assert buf.getvalue().splitlines() == [
        "gvgap: reproduce 100/100 runs (100%), 0:01 elapsed, ETA 0:00"
    ]


def test_closed_shared_pool_unblocks_a_draining_sweep() -> None:
    """A sweep waiting on chunks of a shared pool that is closed under it (reproduce after a
    Ctrl-C or a failing sweep) raises CancelledError instead of waiting forever: a future
    cancelled by the pool's shutdown never wakes ``concurrent.futures.wait``."""
    from concurrent.futures import CancelledError, Future

    stop = threading.Event()
    never = Future()  # a chunk that will not finish
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(CancelledError):
        list(executors._as_finished({never}, stop))
    assert never.cancelled()  # the drained sweep cancels what it still waited for


def test_shared_progress_counts_resumed_runs_outside_the_rate() -> None:
    """Resumed runs count as done but not toward this session's rate: 60 of 100 stored,
    10 run in 10 s → 1 s per run, 30 left → ETA 0:30 (not 7:51 as when they were missing)."""
    clock = iter([0.0, 10.0, 10.0]).__next__
    buf = io.StringIO()
    shared = SharedProgress(PlainProgress(100, 0, "reproduce", file=buf, clock=clock, interval=5))
    shared.resumed(60)
    shared.update(10)
    assert buf.getvalue().splitlines() == [
        "gvgap: reproduce 70/100 runs (70%), 0:10 elapsed, ETA 0:30"
    ]


def test_shared_progress_resumed_runs_leave_the_tqdm_rate_alone() -> None:
    """On a terminal (tqdm): 600 resumed runs then 1 new one must not read as 600 runs in
    this session's first interval (which showed ETA 0:00 and thousands of runs/s)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, file=io.StringIO(), mininterval=0, miniters=1)
    shared = SharedProgress(bar)
    shared.resumed(600)
    time.sleep(0.01)
    shared.update(1)
    d = bar.format_dict
    assert d["n"] == 601 and d["n"] - d["initial"] == 1  # the session's own runs
    # rate × elapsed ≈ the runs counted in this session's rate: 1, not 601
    assert d["rate"] * d["elapsed"] < 10, d
    shared.close()
