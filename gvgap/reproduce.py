"""``gvgap reproduce``: verify + every experiment (+ robustness re-checks) + figures + report.

The run directory gets ``verify.json``, ``sweeps/<id>/`` (one resumable sweep per experiment
and per robustness setting), the consolidated ``results.parquet``, ``verdicts.json``
(DESIGN §5, plus ``robust`` and the per-setting robustness verdicts), ``manifest.json``,
``figures/``, ``report.md`` and ``report.html``. Re-running in the same directory resumes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from gvgap.errors import UserError
from gvgap.experiments.registry import EXPERIMENTS
from gvgap.sweep.executors import ray_session, resolve_workers
from gvgap.sweep.progress import StageETA
from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import SweepSpec, load_spec, spec_from_data
from gvgap.verify import format_table, run_checks

#: Instances per theorem check in ``--quick`` (the full run uses 200).
QUICK_VERIFY_INSTANCES = 50
FULL_VERIFY_INSTANCES = 200
#: Seeds of each robustness re-check in ``--quick`` (at most the QUICK seeds).
QUICK_ROBUST_SEEDS = 4


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create directory {str(out)!r}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out: directory {str(out)!r} is not writable")


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so the file is strict JSON (a
    bare ``NaN`` is not JSON); containers are copied, other values kept."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    tmp.write_text(text)
    os.replace(tmp, path)


def robust_spec(eid: str, override: dict[str, Any], quick: bool, index: int) -> SweepSpec:
    """The experiment's QUICK/SETTINGS sweep with ``override`` fixed (those fields leave the
    grid); fewer seeds in quick mode."""
    module = EXPERIMENTS[eid]
    base = module.QUICK if quick and hasattr(module, "QUICK") else module.SETTINGS
    grid = {k: v for k, v in base.get("grid", {}).items() if k not in override}
    seeds = base.get("seeds", 1)
    data = {
        "seeds": getattr(module, "ROBUST_SEEDS", min(seeds, QUICK_ROBUST_SEEDS))
        if quick
        else seeds,
        "fixed": {**base.get("fixed", {}), **override},
        "grid": grid,
    }
    return spec_from_data(eid, data, f"{eid}:ROBUSTNESS[{index}]")


def planned_runs(eid: str, quick: bool) -> int:
    """Runs of an experiment's main sweep plus its robustness sweeps (the ETA's weight)."""
    module = EXPERIMENTS[eid]
    n = len(load_spec(eid, quick=quick).runs())
    for i, override in enumerate(getattr(module, "ROBUSTNESS", [])):
        n += len(robust_spec(eid, override, quick, i).runs())
    return n


def robust_workers(executor: str, workers: int | None, n_sweeps: int) -> tuple[int | None, int]:
    """(workers per robustness sweep, how many run at once). The re-checks of one experiment
    are independent sweeps into separate directories, so with the local executor and at
    least two workers per sweep to spare they run concurrently, splitting the workers; each
    sweep's results do not depend on its worker count (the sweep runner guarantees
    byte-identical tables), so neither do the verdicts. Otherwise: one after another, each
    with every worker (Ray shares one session and schedules across sweeps itself)."""
    if executor != "local" or n_sweeps < 2:
        return workers, 1
    total = resolve_workers(workers)
    if total < 2 * n_sweeps:
        return workers, 1
    return total // n_sweeps, n_sweeps


def run_ordered(jobs: list[Callable[[], Any]], concurrent: int) -> list[Any]:
    """Results of ``jobs`` in their order, ``concurrent`` of them at a time (threads: each job
    drives its own process pool)."""
    if concurrent <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


def missing_requirement(eid: str) -> str | None:
    """Why experiment ``eid`` cannot run in this environment (an extra it needs is not
    installed), or None. A module declares ``REQUIRES_TORCH = True`` when it needs torch."""
    import importlib.util

    if getattr(EXPERIMENTS[eid], "REQUIRES_TORCH", False) and not importlib.util.find_spec("torch"):
        return "torch is not installed (pip install 'gvgap[torch]')"
    return None


def run_experiment(
    eid: str, out: Path, quick: bool, executor: str, workers: int | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Main sweep + robustness sweeps of one experiment; returns its results and verdict."""
    module = EXPERIMENTS[eid]
    df = run_sweep(
        load_spec(eid, quick=quick), out / "sweeps" / eid, executor=executor, workers=workers
    )
    record = module.verdict(df).to_json()
    overrides = list(getattr(module, "ROBUSTNESS", []))
    share, concurrent = robust_workers(executor, workers, len(overrides))

    def recheck(i: int) -> dict[str, Any]:
        rdf = run_sweep(
            robust_spec(eid, overrides[i], quick, i),
            out / "sweeps" / f"{eid}-robust{i}",
            executor=executor,
            workers=share,
        )
        rv = module.verdict(rdf)
        return {
            "override": overrides[i],
            "verdict": rv.verdict,
            "effect": rv.effect,
            "ci_low": rv.ci_low,
            "ci_high": rv.ci_high,
        }

    checks = run_ordered([lambda i=i: recheck(i) for i in range(len(overrides))], concurrent)
    record["robust"] = all(c["verdict"] == record["verdict"] for c in checks) if checks else None
    record["robustness"] = checks
    return df, record


def reproduce(
    out: str | Path, *, quick: bool = False, executor: str = "local", workers: int | None = None
) -> int:
    """Run the main job; exit code 0 iff every theorem check passed."""
    out = Path(out)
    _writable_dir(out)
    t0 = time.perf_counter()
    n_inst = QUICK_VERIFY_INSTANCES if quick else FULL_VERIFY_INSTANCES
    print(f"== gvgap verify ({n_inst} instances per check)", flush=True)
    records = run_checks(n_inst, seed=0, workers=workers)
    print(format_table(records), flush=True)
    _write_json(out / "verify.json", records)
    frames, verdicts = [], {}
    # One Ray session for every sweep (run_sweep reuses a running one; starting costs ~5 s).
    session = (
        ray_session(resolve_workers(workers), None)
        if executor == "ray"
        else contextlib.nullcontext()
    )
    skipped = {eid: why for eid in EXPERIMENTS if (why := missing_requirement(eid))}
    for eid, why in skipped.items():
        print(f"== {eid}: NOT RUN, {why}; no verdict recorded", flush=True)
    runnable = [eid for eid in EXPERIMENTS if eid not in skipped]
    eta = StageETA({eid: planned_runs(eid, quick) for eid in runnable})  # overall ETA
    with session:
        for eid in runnable:
            eta.start(eid)
            print(f"== {eid}", flush=True)
            df, verdicts[eid] = run_experiment(eid, out, quick, executor, workers)
            frames.append(df)
            v = verdicts[eid]
            print(
                f"   verdict: {v['verdict']}  effect {v['effect']:.4g} "
                f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}]  robust: {v['robust']}",
                flush=True,
            )
    eta.finish()
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    tmp = out / "results.parquet.tmp"
    results.to_parquet(tmp, index=False)
    os.replace(tmp, out / "results.parquet")
    _write_json(out / "verdicts.json", verdicts)
    _write_json(
        out / "manifest.json", _manifest(quick, time.perf_counter() - t0) | {"not_run": skipped}
    )
    from gvgap.report import write_plots, write_report

    write_plots(out)
    for path in write_report(out):
        print(path)
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0 if all(r["passed"] for r in records) else 1


def _manifest(quick: bool, seconds: float) -> dict[str, Any]:
    from gvgap import __version__
    from gvgap.provenance import git_sha

    settings = {
        eid: {
            "QUICK": getattr(m, "QUICK", None),
            "SETTINGS": getattr(m, "SETTINGS", None),
            "ROBUSTNESS": getattr(m, "ROBUSTNESS", None),
        }
        for eid, m in EXPERIMENTS.items()
    }
    return {
        "gvgap_version": __version__,
        "git_sha": git_sha(),
        "quick": quick,
        "seconds": round(seconds, 1),
        "experiments": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
