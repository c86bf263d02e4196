"""``gvgap reproduce``: verify + every experiment (+ robustness re-checks) + figures + report.

Phases: (1) ``gvgap verify``; (2) the *power pilot* of every experiment that declares one
(``PILOT``, on its own instance-seed block): ``plan_seeds(pilot)`` turns it into the seeds of
the confirmatory sweep and their power; (3) every confirmatory sweep at once — the main sweep
(``QUICK``/``SETTINGS`` with the planned seeds), the robustness re-checks (``ROBUSTNESS``) and
the headline re-measured on further seed blocks (``STABILITY_BLOCKS``); (4) verdicts,
figures, report.

The run directory gets ``verify.json``, ``sweeps/<id>/`` (one resumable sweep per experiment,
pilot, re-check and stability block), the consolidated ``results.parquet``, ``verdicts.json``
(docs/design.md §5: the verdict, its seeds and power, the paper's position, the re-checks and the
stability blocks), ``manifest.json``, ``figures/``, ``report.md`` and ``report.html``.
Re-running in the same directory resumes (the pilot is the same, so is the plan).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gvgap.atomic import atomic_write
from gvgap.errors import UserError
from gvgap.experiments.registry import EXPERIMENTS, get_experiment
from gvgap.sweep.executors import SharedPool, check_executor, resolve_workers, shared_pool
from gvgap.sweep.progress import SharedProgress, make_progress
from gvgap.sweep.ray_executor import SharedRay, import_ray, ray_session
from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import SweepSpec, load_spec, spec_from_data
from gvgap.sweep.store import RunStore
from gvgap.verify import format_table, run_checks

#: Instances per theorem check in ``--quick`` (the full run uses 200).
QUICK_VERIFY_INSTANCES = 50
FULL_VERIFY_INSTANCES = 200
#: Seeds of each robustness re-check in ``--quick`` (at most the QUICK seeds).
QUICK_ROBUST_SEEDS = 4
#: One verdict at a time in this process (the Ray path decides in the sweep threads).
_VERDICT_LOCK = threading.Lock()
#: Fields of a re-check's verdict kept in the experiment's ``robustness`` list.
ROBUST_FIELDS = ("verdict", "effect", "ci_low", "ci_high")


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
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write(path, text)


def base_data(eid: str, quick: bool) -> dict[str, Any]:
    """The experiment's QUICK (``--quick``) or SETTINGS sweep as data."""
    module = EXPERIMENTS[eid]
    return dict(module.QUICK if quick and hasattr(module, "QUICK") else module.SETTINGS)


def robust_spec(
    eid: str, override: dict[str, Any], quick: bool, index: int, seeds: int | None = None
) -> SweepSpec:
    """The experiment's QUICK/SETTINGS sweep with ``override`` fixed (those fields leave the
    grid), on the main sweep's seed block; ``seeds`` (the power plan's) or fewer seeds in
    quick mode."""
    module = EXPERIMENTS[eid]
    base = base_data(eid, quick)
    grid = {k: v for k, v in base.get("grid", {}).items() if k not in override}
    n = base.get("seeds", 1)
    if seeds is None:
        seeds = getattr(module, "ROBUST_SEEDS", min(n, QUICK_ROBUST_SEEDS)) if quick else n
    data = {"seeds": seeds, "fixed": {**base.get("fixed", {}), **override}, "grid": grid}
    if base.get("seed_start"):
        data["seed_start"] = base["seed_start"]
    return spec_from_data(eid, data, f"{eid}:ROBUSTNESS[{index}]")


def main_spec(eid: str, quick: bool, seeds: int | None) -> SweepSpec:
    """The main sweep (QUICK/SETTINGS), with the planned ``seeds`` when given."""
    if seeds is None:
        return load_spec(eid, quick=quick)
    data = {**base_data(eid, quick), "seeds": seeds}
    return spec_from_data(eid, data, f"{eid}:{'QUICK' if quick else 'SETTINGS'}")


def stability_spec(eid: str, quick: bool, block: int, seeds: int | None) -> SweepSpec:
    """The headline cell of ``eid`` (``HEADLINE`` fixed) on the seed block ``block``."""
    module = EXPERIMENTS[eid]
    base = base_data(eid, quick)
    head = dict(module.HEADLINE)
    grid = {k: v for k, v in base.get("grid", {}).items() if k not in head}
    data = {
        "seeds": seeds or base.get("seeds", 1),
        "seed_start": block,
        "fixed": {**base.get("fixed", {}), **head},
        "grid": grid,
    }
    return spec_from_data(eid, data, f"{eid}:STABILITY[{block}]")


def pilot_spec(eid: str, quick: bool = False) -> SweepSpec | None:
    """The power pilot of ``eid`` (its ``PILOT`` sweep; with ``quick``, its ``QUICK_PILOT``
    where it declares one: a pilot of the QUICK design), or None."""
    module = EXPERIMENTS[eid]
    name = "QUICK_PILOT" if quick and hasattr(module, "QUICK_PILOT") else "PILOT"
    pilot = getattr(module, name, None)
    return None if pilot is None else spec_from_data(eid, pilot, f"{eid}:{name}")


@dataclass(frozen=True)
class SweepJob:
    """One sweep of ``gvgap reproduce``: an experiment's main sweep (``index`` None), its
    robustness re-check ``index`` (``override`` fixed) or a stability block (``block``), into
    its own directory."""

    eid: str
    spec: SweepSpec
    out: Path
    index: int | None = None
    override: dict[str, Any] | None = None
    block: int | None = None

    @property
    def main(self) -> bool:
        """Whether this is the experiment's main sweep."""
        return self.index is None and self.block is None


def sweep_jobs(
    eid: str, out: Path, quick: bool, plan: dict[str, Any] | None = None
) -> list[SweepJob]:
    """The main sweep of ``eid``, one sweep per ``ROBUSTNESS`` override and one per
    ``STABILITY_BLOCKS`` block, with the seeds of ``plan`` (the power plan) when given."""
    module = EXPERIMENTS[eid]
    seeds = None if plan is None else plan.get("seeds")
    robust = None if plan is None else plan.get("robust_seeds", seeds)
    jobs = [SweepJob(eid, main_spec(eid, quick, seeds), out / "sweeps" / eid)]
    for i, override in enumerate(getattr(module, "ROBUSTNESS", [])):
        spec = robust_spec(eid, override, quick, i, robust)
        jobs.append(SweepJob(eid, spec, out / "sweeps" / f"{eid}-robust{i}", i, dict(override)))
    for block in getattr(module, "STABILITY_BLOCKS", ()):
        spec = stability_spec(eid, quick, block, seeds)
        jobs.append(SweepJob(eid, spec, out / "sweeps" / f"{eid}-block{block}", block=block))
    return jobs


def verdict_record(eid: str, df: pd.DataFrame, stability: bool = False) -> dict[str, Any]:
    """``EXPERIMENTS[eid].verdict(df)`` as JSON, or for a stability block the headline effect
    (``headline_effect(df)``) (module-level: runs on a pool worker)."""
    if stability:
        return dict(EXPERIMENTS[eid].headline_effect(df))
    return EXPERIMENTS[eid].verdict(df).to_json()


def run_ordered(
    jobs: list[Callable[[], Any]],
    concurrent: int,
    on_result: Callable[[int, Any], None] | None = None,
    abort: Callable[[], None] | None = None,
) -> list[Any]:
    """Results of ``jobs`` in their order, ``concurrent`` of them at a time (threads: each job
    drives a sweep on a process pool or Ray). ``on_result(i, result)`` is called once per
    job as it finishes, one call at a time. On the first error (or Ctrl-C) jobs not started
    are dropped and ``abort()`` is called (e.g. cancel the pool's queued chunks, so that the
    running jobs fail fast instead of finishing their sweeps); the running jobs are waited
    for (nothing may still use the pool or Ray session when the caller closes it), then the
    error is raised."""
    lock = threading.Lock()

    def run(i: int) -> Any:
        result = jobs[i]()
        if on_result is not None:
            with lock:
                on_result(i, result)
        return result

    if concurrent <= 1 or len(jobs) <= 1:
        return [run(i) for i in range(len(jobs))]
    threads = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="gvgap-sweep")
    futures = [threads.submit(run, i) for i in range(len(jobs))]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)  # every job done, or one failed
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            raise failed.exception()
        results = [f.result() for f in futures]
    except BaseException:
        threads.shutdown(wait=False, cancel_futures=True)
        if abort is not None:
            abort()
        threads.shutdown(wait=True)
        raise
    threads.shutdown()
    return results


def missing_requirement(eid: str) -> str | None:
    """Why experiment ``eid`` cannot run in this environment (an extra it needs is not
    installed), or None. A module declares ``REQUIRES_TORCH = True`` when it needs torch."""
    import importlib.util

    if getattr(EXPERIMENTS[eid], "REQUIRES_TORCH", False) and not importlib.util.find_spec("torch"):
        return "torch is not installed (pip install 'gvgap[torch]')"
    return None


def run_sweep_job(
    job: SweepJob,
    executor: str,
    workers: int,
    pool: SharedPool | SharedRay | None,
    progress: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One sweep and its verdict record (the verdict on a worker of a local shared pool)."""
    df = run_sweep(
        job.spec, job.out, executor=executor, workers=workers, pool=pool, progress=progress
    )
    stab = job.block is not None
    if isinstance(pool, SharedPool):
        return df, pool.submit(verdict_record, job.eid, df, stab).result()
    with _VERDICT_LOCK:  # Ray: sweep threads decide in this process; warnings filters and
        return df, verdict_record(job.eid, df, stab)  # the bootstrap are not thread-safe


def consistent_with_paper(verdict: str, expects: str | None) -> str:
    """``yes`` when the verdict on the hypothesis is the one the paper reached, ``no`` when it
    is the other decided verdict, ``undecided`` when inconclusive (or the paper takes none)."""
    if expects is None or verdict == "inconclusive":
        return "undecided"
    return "yes" if verdict == expects else "no"


def experiment_record(
    main: dict[str, Any],
    rechecks: list[tuple[dict[str, Any], dict[str, Any], int]],
    *,
    eid: str | None = None,
    plan: dict[str, Any] | None = None,
    seeds: int | None = None,
    stability: list[tuple[int, dict[str, Any]]] = (),
) -> dict[str, Any]:
    """The verdict record of an experiment (docs/design.md §5): its main sweep's verdict, the
    paper's
    position and whether the verdict agrees with it, the seeds behind it and their power
    (from the pilot's plan), ``robustness`` (each re-check's override, verdict, effect, seeds
    and power), ``robust`` (every re-check agrees; None if none) and ``stability`` (the
    headline effect on each further seed block)."""
    module = EXPERIMENTS.get(eid) if eid else None
    power = None if plan is None else plan.get("power")
    robust_power = None if plan is None else plan.get("robust_power", power)
    checks = [
        {
            "override": override,
            **{k: rec[k] for k in ROBUST_FIELDS},
            "seeds": n,
            "power": robust_power,
        }
        for override, rec, n in rechecks
    ]
    robust = all(c["verdict"] == main["verdict"] for c in checks) if checks else None
    expects = getattr(module, "PAPER_EXPECTS", None)
    out = {
        **main,
        "paper_position": getattr(module, "PAPER_POSITION", ""),
        "consistent_with_paper": consistent_with_paper(main["verdict"], expects),
        "seeds": seeds,
        "power": power,
        "plan": plan,
        "robust": robust,
        "robustness": checks,
    }
    if stability:
        out["stability"] = [{"seed_start": b, **rec} for b, rec in stability]
    return out


def run_pilots(
    eids: list[str],
    out: Path,
    executor: str,
    workers: int,
    pool: SharedPool | SharedRay | None,
    quick: bool = False,
) -> dict[str, dict[str, Any]]:
    """The power pilot of every experiment that declares one (all at once), and the seed plan
    each gives (``plan_seeds(pilot)``), printed one line each."""
    jobs = [(eid, spec) for eid in eids if (spec := pilot_spec(eid, quick)) is not None]
    if not jobs:
        return {}
    total = sum(len(spec.runs()) for _, spec in jobs)
    progress = SharedProgress(make_progress(total, 0, "pilot"))

    def one(eid: str, spec: SweepSpec) -> pd.DataFrame:
        return run_sweep(
            spec,
            out / "sweeps" / f"{eid}-pilot",
            executor=executor,
            workers=workers,
            pool=pool,
            progress=progress,
        )

    frames = run_ordered(
        [lambda e=e, s=s: one(e, s) for e, s in jobs],
        len(jobs) if pool is not None else 1,
        abort=None if pool is None else lambda: pool.close(cancel=True),
    )
    progress.close()
    plans = {}
    for (eid, spec), df in zip(jobs, frames):
        plans[eid] = EXPERIMENTS[eid].plan_seeds(df) | {"pilot_seeds": spec.seeds}
        plan = plans[eid]
        print(
            f"== {eid}: power pilot ({spec.seeds} seeds from {spec.seed_start}): "
            f"{plan['seeds']} seeds, power {plan['power']:.2f}",
            flush=True,
        )
    return plans


def run_experiments(
    eids: list[str],
    out: Path,
    quick: bool,
    executor: str,
    workers: int,
    pool: SharedPool | SharedRay | None,
    plans: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[pd.DataFrame], dict[str, dict[str, Any]]]:
    """Every sweep of every experiment at once (one after another with one local worker),
    each verdict line printed as its experiment completes; results in registry order."""
    plans = plans or {}
    jobs = [job for eid in eids for job in sweep_jobs(eid, out, quick, plans.get(eid))]
    left = {eid: sum(j.eid == eid for j in jobs) for eid in eids}
    done: dict[int, tuple[pd.DataFrame, dict[str, Any]]] = {}
    total = sum(len(j.spec.runs()) for j in jobs)
    progress = SharedProgress(make_progress(total, 0, "reproduce"))
    verdicts: dict[str, dict[str, Any]] = {}

    def finished(i: int, result: tuple[pd.DataFrame, dict[str, Any]]) -> None:
        done[i] = result
        eid = jobs[i].eid
        left[eid] -= 1
        if left[eid] == 0:
            v = verdicts[eid] = _assemble(eid, jobs, done, plans)
            print(
                f"== {eid}: verdict {v['verdict']}  effect {v['effect']:.4g} "
                f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}]  robust: {v['robust']}",
                flush=True,
            )

    concurrent = len(jobs) if pool is not None else 1
    run_ordered(
        [lambda j=j: run_sweep_job(j, executor, workers, pool, progress) for j in jobs],
        concurrent,
        finished,
        abort=None if pool is None else lambda: pool.close(cancel=True),
    )
    progress.close()
    frames = [done[i][0] for i, j in enumerate(jobs) if j.main]
    return frames, {eid: verdicts[eid] for eid in eids}


def _assemble(
    eid: str, jobs: list[SweepJob], done: dict[int, Any], plans: dict[str, Any]
) -> dict[str, Any]:
    mine = [i for i, j in enumerate(jobs) if j.eid == eid]
    main_i = next(i for i in mine if jobs[i].main)
    rechecks = [
        (jobs[i].override, done[i][1], jobs[i].spec.seeds)
        for i in mine
        if jobs[i].index is not None
    ]
    stab = [(jobs[main_i].spec.seed_start, _headline(eid, done[main_i][0]))]
    stab += [(jobs[i].block, done[i][1]) for i in mine if jobs[i].block is not None]
    return experiment_record(
        done[main_i][1],
        rechecks,
        eid=eid,
        plan=plans.get(eid),
        seeds=jobs[main_i].spec.seeds,
        stability=stab if len(stab) > 1 else (),
    )


def _headline(eid: str, df: pd.DataFrame) -> dict[str, Any]:
    fn = getattr(EXPERIMENTS[eid], "headline_effect", None)
    return dict(fn(df)) if fn is not None else {}


@contextlib.contextmanager
def backend(executor: str, workers: int) -> Iterator[SharedPool | SharedRay | None]:
    """What every sweep of the job shares: one local process pool (``workers`` > 1), one Ray
    session (started once: ~5 s), or nothing (one worker: everything in this process)."""
    if executor == "ray":
        with ray_session(workers, None) as ray:
            yield SharedRay(ray, 2 * workers)
    elif workers > 1:
        with shared_pool(workers) as pool:
            yield pool
    else:
        yield None


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    executor: str = "local",
    workers: int | None = None,
    experiments: list[str] | None = None,
) -> int:
    """Run the main job; exit code 0 iff every theorem check passed.

    Every sweep (main and re-checks, all experiments) runs at once on one shared process
    pool (or Ray session); verdicts and figures run on the same pool.

    Args:
        out: run directory (created; re-running resumes).
        quick: the QUICK sweeps, fewer seeds per re-check and fewer verify instances.
        executor: ``local`` or ``ray``.
        workers: processes / Ray CPUs (default: every CPU).
        experiments: a subset of the registry, in registry order (default: all).
    """
    out = Path(out)
    if experiments is None:
        selected = list(EXPERIMENTS)
    else:
        for eid in experiments:
            get_experiment(eid)  # UserError (with a did-you-mean) on an unknown id
        selected = [e for e in EXPERIMENTS if e in set(experiments)]
    n_workers = resolve_workers(workers)
    check_executor(executor)
    if executor == "ray":
        import_ray()  # UserError when the extra is missing, before anything is written
    skipped = {eid: why for eid in selected if (why := missing_requirement(eid))}
    runnable = [eid for eid in selected if eid not in skipped]
    if not runnable:
        raise UserError(
            "experiments: none can run here: "
            + "; ".join(f"{eid}: {why}" for eid, why in skipped.items())
        )
    for eid in runnable:  # every sweep directory may take its spec (reads only)
        if (spec := pilot_spec(eid, quick)) is not None:
            RunStore(out / "sweeps" / f"{eid}-pilot").check(spec)
        planned = getattr(EXPERIMENTS[eid], "PILOT", None) is not None
        for job in sweep_jobs(eid, out, quick):
            # with a pilot the seeds are not known yet: everything but the spec itself is
            # checked now (a file in the way, another experiment's runs), the spec once planned
            RunStore(job.out).check(job.spec, append=planned)
    _writable_dir(out)
    t0 = time.perf_counter()
    n_inst = QUICK_VERIFY_INSTANCES if quick else FULL_VERIFY_INSTANCES
    print(f"== gvgap verify ({n_inst} instances per check)", flush=True)
    records = run_checks(n_inst, seed=0, workers=workers)
    print(format_table(records), flush=True)
    _write_json(out / "verify.json", records)
    for eid, why in skipped.items():
        print(f"== {eid}: NOT RUN, {why}; no verdict recorded", flush=True)
    print(f"== {len(runnable)} experiments at once on {n_workers} workers ({executor})", flush=True)
    with backend(executor, n_workers) as pool:
        plans = run_pilots(runnable, out, executor, n_workers, pool, quick)
        for eid, plan in plans.items():  # the planned sweeps may take their directories
            for job in sweep_jobs(eid, out, quick, plan):
                RunStore(job.out).check(job.spec)
        frames, verdicts = run_experiments(runnable, out, quick, executor, n_workers, pool, plans)
        results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        atomic_write(out / "results.parquet", lambda tmp: results.to_parquet(tmp, index=False))
        _write_json(out / "verdicts.json", verdicts)
        _write_json(
            out / "manifest.json",
            _manifest(quick, time.perf_counter() - t0) | {"not_run": skipped, "plans": plans},
        )
        from gvgap.report import write_plots, write_report

        print("== figures", flush=True)
        write_plots(out, pool=pool if isinstance(pool, SharedPool) else None)
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
            "PILOT": getattr(m, "PILOT", None),
            "STABILITY_BLOCKS": getattr(m, "STABILITY_BLOCKS", None),
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
