"""Sweep specs, run ids, seeds, the result store, resume, and the c1_gibbs experiment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from gvgap.errors import UserError
from gvgap.experiments import c1_gibbs
from gvgap.sweep import runner, spec
from gvgap.sweep.spec import RunSpec, load_spec, spec_from_data
from gvgap.sweep.store import RunStore, split_metric, tidy_frame

matplotlib.use("Agg")

GRID = {"vocab": [2, 3], "horizon": [1, 3]}


def small(seeds: int = 2, instance_seed: int | None = None, **grid: list) -> spec.SweepSpec:
    data = {"seeds": seeds, "fixed": {"n_policies": 2}, "grid": grid or GRID}
    if instance_seed is not None:
        data["instance_seed"] = instance_seed
    return spec_from_data("c1_gibbs", data, "test")


def sweep(s: spec.SweepSpec, out: Path, **kw) -> pd.DataFrame:
    return runner.run_sweep(s, out, workers=1, progress=False, **kw)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- specs


def test_toml_grid_is_cartesian_in_order(tmp_path: Path) -> None:
    f = write_toml(
        tmp_path / "s.toml",
        '[sweep]\nexperiment = "c1_gibbs"\nseeds = 3\n[fixed]\nbeta = 2\n'
        '[grid]\nhorizon = [2, 1]\nref = ["uniform", "random"]\n',
    )
    s = load_spec(str(f))
    assert [(c["horizon"], c["ref"]) for c in s.configs] == [
        (2, "uniform"),
        (2, "random"),
        (1, "uniform"),
        (1, "random"),
    ]
    assert all(c["beta"] == 2.0 and isinstance(c["beta"], float) for c in s.configs)
    runs = s.runs()
    assert len(runs) == 12 and len({r.run_id for r in runs}) == 12
    assert [r.seed for r in runs[:3]] == [0, 1, 2]
    assert all(r.instance_seed == r.seed for r in runs)


def test_instance_seed_and_seeds_override() -> None:
    s = load_spec("c1_gibbs", seeds=2, quick=True)
    assert s.seeds == 2 and s.source == "c1_gibbs:QUICK"
    fixed = small(seeds=3, instance_seed=7)
    assert {r.instance_seed for r in fixed.runs()} == {7}


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"grid": {"vocabb": [2]}}, "vocabb"),
        ({"fixed": {"beta": "big"}}, "beta"),
        ({"grid": {"vocab": []}}, "vocab"),
        ({"grid": {"vocab": 3}}, "vocab"),
        ({"grid": {"vocab": [2, 2.0]}}, "vocab"),
        ({"fixed": {"vocab": 2}, "grid": {"vocab": [3]}}, "vocab"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": True}, "seeds"),
        ({"instance_seed": -1}, "instance_seed"),
        ({"fixed": {"horizon": 0}}, "horizon"),
        ({"grids": {"vocab": [2]}}, "grids"),
    ],
)
def test_bad_spec_data_names_the_field(data: dict, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        spec_from_data("c1_gibbs", data, "t")


# ---------------------------------------------------------------- ids and seeds


def test_run_id_is_pinned_and_sensitive() -> None:
    cfg = {"vocab": 3, "beta": 0.5, "ref": "random"}
    run = RunSpec("c1_gibbs", cfg, 0, 0)
    # a fixed function of the canonical JSON: changing it invalidates every stored sweep
    assert run.run_id == "939704e3cb367863"
    assert run.run_id == RunSpec("c1_gibbs", dict(reversed(cfg.items())), 0, 0).run_id
    others = [
        RunSpec("c1_gibbs", cfg, 1, 0),
        RunSpec("c1_gibbs", cfg, 0, 1),
        RunSpec("c1_gibbs", {**cfg, "beta": 0.25}, 0, 0),
        RunSpec("other", cfg, 0, 0),
    ]
    assert len({run.run_id, *(o.run_id for o in others)}) == 5


def test_rng_streams() -> None:
    cfg = spec.config_record(c1_gibbs.Config())
    a = RunSpec("c1_gibbs", cfg, 0, 5).rngs()
    b = RunSpec("c1_gibbs", {**cfg, "beta": 2.0}, 0, 5).rngs()
    c = RunSpec("c1_gibbs", cfg, 0, 5).rngs()
    draw = [[g.random() for g in pair] for pair in (a, b, c)]
    assert draw[0] == draw[2]  # same run, same streams
    assert draw[0][0] != draw[1][0]  # run stream depends on the config
    assert draw[0][1] == draw[1][1]  # instance stream only on instance_seed
    assert draw[0][0] != draw[0][1]


# ---------------------------------------------------------------- store


def test_split_metric_and_tidy_frame() -> None:
    assert split_metric("dpo/J") == ("dpo", "J")
    assert split_metric("a/b/c") == ("a", "b/c")
    assert split_metric("J") == ("", "J")
    recs = [
        {
            "run_id": rid,
            "experiment": "e",
            "config": {"b": b, "a": 1},
            "seed": seed,
            "instance_seed": seed,
            "metrics": {"x/J": 1.0, "K": 2},
        }
        for rid, b, seed in (("r2", 2.0, 1), ("r1", 2.0, 0), ("r0", 1.0, 5))
    ]
    df = tidy_frame(recs, ["b", "a"])
    cols = ["run_id", "experiment", "b", "a", "seed", "instance_seed", "pipeline", "metric"]
    assert list(df.columns) == [*cols, "value"]
    assert list(df["run_id"]) == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert list(df["pipeline"][:2]) == ["", "x"]
    assert df["value"].dtype == np.float64


def test_sweep_writes_tidy_results_and_manifest(tmp_path: Path) -> None:
    s = small()
    df = sweep(s, tmp_path)
    assert df.equals(pd.read_parquet(tmp_path / "results.parquet"))
    assert len(df) == 4 * 2 * 3 and set(df["pipeline"]) == {""}
    assert set(df["metric"]) == set(c1_gibbs.ERROR_METRICS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["experiment"] == "c1_gibbs" and manifest["n_runs"] == 8
    assert manifest["gvgap_version"] and manifest["specs"][0]["spec"]["grid"] == GRID
    assert set(manifest["runs"]) == set(df["run_id"])
    assert len(list((tmp_path / "runs").glob("*.json"))) == 8


def test_resume_skips_finished_runs_and_unions(tmp_path: Path) -> None:
    sweep(small(seeds=1), tmp_path / "a")
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "runs").glob("*.json")}
    with pytest.raises(UserError, match=r"different sweep of c1_gibbs.*--append"):
        sweep(small(seeds=3), tmp_path / "a")
    resumed = sweep(small(seeds=3), tmp_path / "a", append=True)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    fresh = sweep(small(seeds=3), tmp_path / "b")
    pd.testing.assert_frame_equal(resumed, fresh, check_exact=True)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert len(manifest["specs"]) == 2 and manifest["n_runs"] == 12


def test_damaged_run_files_are_rerun(tmp_path: Path) -> None:
    ref = sweep(small(), tmp_path)
    files = sorted((tmp_path / "runs").glob("*.json"))
    files[0].write_text('{"run_id": "trunc')
    files[1].unlink()
    (tmp_path / "runs" / ".x.json.1234.tmp").write_text("partial")
    again = sweep(small(), tmp_path)
    pd.testing.assert_frame_equal(again, ref, check_exact=True)
    assert not list((tmp_path / "runs").glob(".*.tmp"))


def test_refuses_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"experiment": "h6_gap"}))
    with pytest.raises(UserError, match=r"--out .*h6_gap"):
        sweep(small(), tmp_path / "other")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "results.parquet").write_bytes(b"x")
    with pytest.raises(UserError, match="no manifest"):
        sweep(small(), tmp_path / "bare")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--out"):
        sweep(small(), tmp_path / "file" / "sub")


def test_lock_refuses_a_concurrent_sweep(tmp_path: Path) -> None:
    st = RunStore(tmp_path)
    st.check(small())
    with st.lock(), pytest.raises(UserError, match="another sweep"), RunStore(tmp_path).lock():
        pass
    with RunStore(tmp_path).lock():  # released
        pass


def test_bad_arguments_touch_nothing(tmp_path: Path) -> None:
    for kw in ({"workers": 0}, {"executor": "dask"}, {"chunk_size": 0}):
        with pytest.raises(UserError):
            runner.run_sweep(small(), tmp_path / "new", progress=False, **kw)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- batching, run_single


def test_batched_equals_one_at_a_time(tmp_path: Path) -> None:
    s = small(seeds=5, instance_seed=3, vocab=[2, 3], ref=["uniform", "random"])
    one = sweep(s, tmp_path / "one", chunk_size=1)
    batched = sweep(s, tmp_path / "batch", chunk_size=7)
    pd.testing.assert_frame_equal(one, batched, check_exact=True)
    mod = c1_gibbs
    assert runner.auto_chunk_size(mod, 1000, 2) == mod.BATCH_SIZE
    assert runner.auto_chunk_size(mod, 16, 2) == 2
    assert runner.auto_chunk_size(object(), 1000, 2) == 1


def test_run_single_matches_the_sweep_row(tmp_path: Path) -> None:
    df = sweep(small(seeds=2), tmp_path)
    got = runner.run_single("c1_gibbs", {"vocab": "3", "horizon": "3", "n_policies": "2"}, seed=1)
    row = df[(df.vocab == 3) & (df.horizon == 3) & (df.seed == 1)]
    assert got == dict(zip(row["metric"], row["value"]))
    with pytest.raises(UserError, match="seed"):
        runner.run_single("c1_gibbs", {}, seed=-1)


def test_workers_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from gvgap.sweep.executors import resolve_workers

    assert resolve_workers(None) == (os.cpu_count() or 1)
    assert resolve_workers(3) == 3


# ---------------------------------------------------------------- c1_gibbs


def test_c1_smoke_and_verdict(tmp_path: Path) -> None:
    rng, inst = np.random.default_rng(0), np.random.default_rng(1)
    out = c1_gibbs.run(c1_gibbs.SMOKE, rng=rng, instance_rng=inst)
    assert set(out) == set(c1_gibbs.ERROR_METRICS)
    assert max(out.values()) < c1_gibbs.TOLERANCE
    df = sweep(small(), tmp_path)
    assert c1_gibbs.verdict(df).verdict == "supported"
    bad = df.copy()
    bad.loc[0, "value"] = 1e-3
    v = c1_gibbs.verdict(bad)
    assert v.verdict == "against" and v.effect == 1e-3
    assert c1_gibbs.verdict(df.iloc[:0]).verdict == "inconclusive"
    ax = c1_gibbs.plot(df)
    assert ax.get_yscale() == "log"


def test_c1_detects_a_wrong_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a wrong log Z (off by 1e-6) must show up as a Gibbs error."""
    from gvgap import theory

    real = theory.log_partition_leaf
    monkeypatch.setattr(theory, "log_partition_leaf", lambda *a: real(*a) + 1e-6)
    cfg = c1_gibbs.SMOKE
    out = c1_gibbs.run(cfg, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(0))
    assert out["gibbs_error"] > 1e-7 and out["softvi_error"] > 1e-7
