"""reproduce: robustness re-checks run concurrently when workers allow (issue 8)."""

from __future__ import annotations

import threading

import pytest

from gvgap.reproduce import robust_workers, run_ordered


def test_robust_workers_split_only_with_two_workers_per_sweep_to_spare():
    """16 workers, 4 re-checks: 4 sweeps at once with 4 workers each; 2 workers (the 2-core
    default) or Ray: one after another with every worker, as before."""
    assert robust_workers("local", 16, 4) == (4, 4)
    assert robust_workers("local", 8, 4) == (2, 4)
    assert robust_workers("local", 7, 4) == (7, 1)
    assert robust_workers("local", 2, 4) == (2, 1)
    assert robust_workers("ray", 16, 4) == (16, 1)
    assert robust_workers("local", 16, 1) == (16, 1)


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

    from gvgap import reproduce as R

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert "torch" in R.missing_requirement("h6_neural")
    assert R.missing_requirement("h6_gap") is None


def test_verdict_files_are_strict_json(tmp_path) -> None:
    import json

    from gvgap import reproduce as R

    path = tmp_path / "v.json"
    R._write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads(path.read_text(), parse_constant=lambda c: 1 / 0) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 2},
    }
