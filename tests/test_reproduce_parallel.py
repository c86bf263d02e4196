"""reproduce: every sweep at once on one shared pool; verdicts and figures on it too (issue 8)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from gvgap.reproduce import (
    _write_json,
    experiment_record,
    missing_requirement,
    reproduce,
    run_ordered,
)


def test_run_ordered_runs_jobs_at_once_and_keeps_their_order():
    """Three jobs that each wait for all three at a barrier can only finish if they run
    concurrently; results come back in job order."""
    barrier = threading.Barrier(3, timeout=10)

    def job(i):
        barrier.wait()
        return i * i

    assert run_ordered([lambda i=i: job(i) for i in range(3)], 3) == [0, 1, 4]


def test_run_ordered_sequential_and_errors():
    """concurrent = 1 runs in order in this thread; a failing job raises its error."""
    seen = []
    assert run_ordered([lambda i=i: seen.append(i) or i for i in range(3)], 1) == [0, 1, 2]
    assert seen == [0, 1, 2]

    def boom():
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"):
        run_ordered([lambda: 1, boom], 2)


def test_experiment_needing_torch_is_reported_not_run_without_it(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert "torch" in missing_requirement("h6_neural")
    assert missing_requirement("h6_gap") is None


def test_verdict_files_are_strict_json(tmp_path) -> None:
    import json

    path = tmp_path / "v.json"
    _write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads(path.read_text(), parse_constant=lambda c: 1 / 0) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 2},
    }


def test_run_ordered_reports_each_result_once_as_it_finishes():
    seen = []
    out = run_ordered([lambda i=i: i + 10 for i in range(5)], 3, lambda i, r: seen.append((i, r)))
    assert out == [10, 11, 12, 13, 14]
    assert sorted(seen) == [(i, i + 10) for i in range(5)]


def test_experiment_record_robust_iff_every_recheck_agrees():
    main = {"verdict": "against", "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n_runs": 20}
    agree = {"verdict": "against", "effect": 0.8, "ci_low": 0.1, "ci_high": 1.2, "n_runs": 6}
    other = {**agree, "verdict": "inconclusive"}
    plan = {"seeds": 20, "power": 0.85, "robust_power": 0.81}
    rec = experiment_record(
        main,
        [({"beta": 0.1}, agree, 6), ({"beta": 3.0}, agree, 6)],
        eid="h6_gap",
        plan=plan,
        seeds=20,
    )
    assert rec["robust"] is True and rec["n_runs"] == 20
    assert rec["robustness"][0] == {
        "override": {"beta": 0.1},
        **{k: agree[k] for k in agree if k != "n_runs"},
        "seeds": 6,
        "power": 0.81,
    }
    # h6 expects "supported" (the paper's position): "against" disagrees with the paper
    assert rec["consistent_with_paper"] == "no" and rec["paper_position"]
    assert rec["seeds"] == 20 and rec["power"] == 0.85
    assert experiment_record(main, [({}, agree, 6), ({}, other, 6)])["robust"] is False
    assert experiment_record(main, [])["robust"] is None
    assert experiment_record(main, [])["consistent_with_paper"] == "undecided"  # no module


def test_reproduce_same_tables_and_verdicts_with_one_and_two_workers(tmp_path, capsys):
    """The main job on two experiments (one with six re-checks): sweeps, re-checks, verdicts
    and figures on one shared pool of 2 workers give the same results.parquet and
    verdicts.json as everything in this process."""
    eids = ["c1_gibbs", "h1_on_policy_signal"]
    for w in (1, 2):
        assert reproduce(tmp_path / f"w{w}", quick=True, workers=w, experiments=eids) == 0
    one, two = (pd.read_parquet(tmp_path / f"w{w}" / "results.parquet") for w in (1, 2))
    pd.testing.assert_frame_equal(one, two)
    assert set(one["experiment"]) == set(eids)
    v1, v2 = (json.loads((tmp_path / f"w{w}" / "verdicts.json").read_text()) for w in (1, 2))
    assert v1 == v2 and list(v1) == eids
    assert len(v1["h1_on_policy_signal"]["robustness"]) == 6
    figs = json.loads((tmp_path / "w2" / "figures" / "index.json").read_text())["experiments"]
    assert set(figs) == set(eids) and all("files" in f for f in figs["h1_on_policy_signal"])
    log = capsys.readouterr().out
    assert "== h1_on_policy_signal: verdict" in log and "2 workers" in log


def test_run_ordered_first_error_aborts_the_running_jobs():
    """A job failing while an earlier one still runs: the error is raised at once and
    ``abort`` is called, which here is what lets the running job finish (reproduce cancels
    the shared pool's queued chunks); without it the run would wait for every sweep."""
    release = threading.Event()

    def running():
        assert release.wait(60), "abort was not called"
        return "stopped"

    def boom():
        raise RuntimeError("sweep failed")

    with pytest.raises(RuntimeError, match="sweep failed"):
        run_ordered([running, boom], 2, abort=release.set)
    assert release.is_set()


def test_reproduce_refuses_bad_arguments_before_writing(tmp_path):
    from gvgap.errors import UserError

    out = tmp_path / "never"
    with pytest.raises(UserError, match="workers"):
        reproduce(out, quick=True, workers=0)
    with pytest.raises(UserError, match="did you mean 'h6_gap'"):
        reproduce(out, quick=True, experiments=["h6gap"])
    assert not out.exists()


def test_reproduce_checks_every_sweep_directory_before_writing(tmp_path):
    """A re-check's directory that cannot take its sweep (here a plain file) is refused
    before verify runs: nothing is written."""
    from gvgap.errors import UserError

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "h1_on_policy_signal-robust5").write_text("not a directory")
    with pytest.raises(UserError, match="robust5: exists and is not a directory"):
        reproduce(tmp_path, quick=True, workers=2, experiments=["h1_on_policy_signal"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps"]


def test_shared_pool_cancel_ends_a_running_task():
    """close(cancel=True) ends the worker of a chunk that is already running (cancelling
    its future cannot), so an aborted reproduce does not wait for long chunks."""
    import os
    import time

    from gvgap.sweep.executors import SharedPool

    pool = SharedPool(1)
    pid = pool.submit(os.getpid).result()
    pool.submit(time.sleep, 120)
    time.sleep(0.5)  # the sleep is running in that worker
    pool.close(cancel=True)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the running worker was not ended")


def test_reproduce_plans_seeds_from_the_pilot_and_records_them(tmp_path, monkeypatch):
    """h6_gap through the whole main job on a small design: the power pilot runs first on its
    own seed block, its plan sets the confirmatory sweep's seeds (on the confirmatory block),
    the headline is re-measured on the stability blocks, and the verdict record carries the
    seeds, the power, the paper's position and the stability effects."""
    import json

    from gvgap.experiments import h6_design as D
    from gvgap.experiments import h6_gap

    cells = ["sum_mod_2x4", "additive_full_2x4"]
    monkeypatch.setattr(
        h6_gap,
        "PILOT",
        {**D.PILOT, "seeds": 4, "grid": {**D.PILOT["grid"], "cell": ["dense_2x4", *cells]}},
    )
    monkeypatch.setattr(
        h6_gap,
        "QUICK",
        {
            **D.QUICK,
            "grid": {"cell": cells, "n_pairs": [16, 1024], "protocol": ["learned", "gift"]},
        },
    )
    monkeypatch.setattr(h6_gap, "HEADLINE", {**D.HEADLINE, "cell": "sum_mod_2x4"})
    monkeypatch.setattr(h6_gap, "STABILITY_BLOCKS", (D.STABILITY_BLOCKS[0],))
    out = tmp_path / "r"
    reproduce(out, quick=True, workers=1, experiments=["h6_gap"])
    rec = json.loads((out / "verdicts.json").read_text())["h6_gap"]
    plan = rec["plan"]
    assert rec["seeds"] == plan["seeds"] >= D.SEED_BOUNDS[0] and rec["power"] == plan["power"]
    assert set(plan["parts"]) == {"P1", "control", "P2"}
    assert rec["paper_position"] and rec["consistent_with_paper"] in ("yes", "no", "undecided")
    pilot = pd.read_parquet(out / "sweeps" / "h6_gap-pilot" / "results.parquet")
    main = pd.read_parquet(out / "sweeps" / "h6_gap" / "results.parquet")
    assert pilot["seed"].min() == D.PILOT_BLOCK and main["seed"].min() == D.CONFIRM_BLOCK
    assert main["seed"].nunique() == rec["seeds"]
    assert [s["seed_start"] for s in rec["stability"]] == [D.CONFIRM_BLOCK, D.STABILITY_BLOCKS[0]]
    assert all(np.isfinite(s["effect"]) for s in rec["stability"])
