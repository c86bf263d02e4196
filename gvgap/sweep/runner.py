"""Run one setting (``gvgap run``) or a whole sweep (``gvgap sweep``), resumably.

A sweep: validate the arguments, check the output directory, skip the runs already stored
there, group the rest into chunks, run the chunks on an executor, store each run as soon as
its chunk returns, then rebuild ``results.parquet``. See :mod:`gvgap.sweep.store` for the
atomicity and resume guarantees and :mod:`gvgap.sweep.spec` for run ids and seeds.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gvgap.errors import UserError, check_int
from gvgap.experiments.base import make_config
from gvgap.experiments.registry import get_experiment
from gvgap.sweep.executors import (
    Chunk,
    SharedPool,
    check_executor,
    execute_chunk,
    resolve_workers,
    run_in_pool,
    run_in_process,
)
from gvgap.sweep.progress import SharedProgress, make_progress
from gvgap.sweep.ray_executor import SharedRay, check_address, import_ray, ray_session, run_on_ray
from gvgap.sweep.spec import RunSpec, SweepSpec, canonical_json, config_record
from gvgap.sweep.store import RunStore, os_reason

if TYPE_CHECKING:
    import pandas as pd

#: Chunks per worker the automatic chunk size aims for (load balance vs. per-task overhead).
CHUNKS_PER_WORKER = 4
#: Largest automatic chunk when an experiment does not set ``BATCH_SIZE``.
DEFAULT_BATCH_SIZE = 32
#: Longest file-name component and path (bytes) accepted for --out (POSIX NAME_MAX/PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096
#: Invalid run files reported one per line before the rest are only counted.
MAX_PROBLEM_LINES = 10


def run_single(
    exp_id: str,
    overrides: dict[str, Any],
    seed: int = 0,
    instance_seed: int | None = None,
    echo: Any = None,
) -> dict[str, float]:
    """One setting of one experiment, in this process (``gvgap run``).

    The result equals the row a sweep stores for the same config and seeds.

    Args:
        exp_id: experiment id.
        overrides: Config field → value (strings from ``--set k=v`` are coerced by type).
        seed: data / learner seed (>= 0).
        instance_seed: problem-instance seed; defaults to ``seed``.
        echo: a text stream that gets one line with the full config and seeds used.

    Raises:
        UserError: unknown experiment or field, bad value, negative seed.
    """
    module = get_experiment(exp_id)
    seed = check_int("--seed", seed, 0)
    inst = seed if instance_seed is None else check_int("--instance-seed", instance_seed, 0)
    config = config_record(make_config(module.Config, overrides))
    if echo is not None:
        key = RunSpec(exp_id, config, seed, inst).key()
        print(f"gvgap: run {canonical_json(key)}", file=echo, flush=True)
    return execute_chunk([RunSpec(exp_id, config, seed, inst)])[0]["metrics"]


def auto_chunk_size(module: Any, n_pending: int, workers: int) -> int:
    """Runs per task: 1 unless the experiment has ``run_batch``; then enough to cut per-task
    overhead while leaving :data:`CHUNKS_PER_WORKER` chunks per worker, at most its
    ``BATCH_SIZE``."""
    if not hasattr(module, "run_batch"):
        return 1
    cap = int(getattr(module, "BATCH_SIZE", DEFAULT_BATCH_SIZE))
    return max(1, min(cap, math.ceil(n_pending / (CHUNKS_PER_WORKER * workers))))


def by_instance(runs: list[RunSpec], module: Any) -> list[RunSpec]:
    """``runs`` with those of one instance adjacent, for an experiment that declares
    ``RUN_FIELDS`` (Config fields that leave the instance unchanged): a stable sort on the
    other fields and the instance seed, so a chunk holds the runs that share an instance and
    the experiment measures it once (results are per run and do not depend on the order)."""
    fields = getattr(module, "RUN_FIELDS", None)
    if not fields:
        return runs

    def key(run: RunSpec) -> str:
        rest = {k: v for k, v in run.config.items() if k not in fields}
        return canonical_json([rest, run.instance_seed])

    order: dict[str, int] = {}
    for run in runs:
        order.setdefault(key(run), len(order))
    return sorted(runs, key=lambda r: order[key(r)])


def make_chunks(runs: list[RunSpec], size: int) -> list[Chunk]:
    """Consecutive runs (grid order, seeds innermost) in chunks of ``size``."""
    return [runs[i : i + size] for i in range(0, len(runs), size)]


def _check_args(executor: str, workers: int | None, chunk_size: int | None) -> int:
    """Validate executor / workers / chunk size before anything is touched; the worker count."""
    check_executor(executor)
    n = resolve_workers(workers)
    if executor == "ray":
        import_ray()
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)
    return n


def _check_out(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path whose every component fits the file system's name limit; an
    empty one (which Path reads as the current directory) is refused."""
    if not os.fspath(out_dir).strip():
        raise UserError("--out: empty path; give a directory name")
    path = Path(out_dir)
    for part in path.parts:
        if len(part.encode()) > NAME_MAX:
            raise UserError(
                f"--out: a path component is {len(part.encode())} bytes long (> {NAME_MAX}, "
                f"the file-system limit): {part[:40]}..."
            )
    if len(str(path.resolve()).encode()) > PATH_MAX - 64:
        raise UserError(f"--out: path too long (> {PATH_MAX - 64} bytes)")
    return path


@contextlib.contextmanager
def open_executor(kind: str, workers: int, address: str | None = None) -> Iterator[Any]:
    """A function ``chunks -> iterator of record lists`` for the chosen executor.

    ``local`` with one worker runs in this process; ``ray`` starts (and afterwards stops) a
    local cluster of ``workers`` CPUs, or connects to ``address``.
    """
    if kind == "ray":
        with ray_session(workers, address) as ray:
            window = workers
            if address:
                window = max(1, int(ray.cluster_resources().get("CPU", workers)))
            yield lambda chunks: run_on_ray(ray, list(chunks), 2 * window, cancel=bool(address))
    elif workers == 1:
        yield run_in_process
    else:
        yield lambda chunks: run_in_pool(list(chunks), workers)


def warn(message: str) -> None:
    """One ``gvgap: <message>`` line on stderr."""
    print(f"gvgap: {message}", file=sys.stderr, flush=True)


def _report_problems(problems: dict[str, str], planned: set[str]) -> None:
    """One line per invalid run file (at most :data:`MAX_PROBLEM_LINES`, then a count)."""
    items = sorted(problems.items())
    for run_id, why in items[:MAX_PROBLEM_LINES]:
        action = "re-running it" if run_id in planned else "ignoring it (not a run of this sweep)"
        warn(f"runs/{run_id}.json: {why}; {action}")
    if len(items) > MAX_PROBLEM_LINES:
        warn(f"... and {len(items) - MAX_PROBLEM_LINES} more invalid run files")


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    *,
    chunk_size: int | None = None,
    progress: bool | Any | None = None,
    append: bool = False,
    pool: SharedPool | SharedRay | None = None,
) -> pd.DataFrame:
    """Run every run of ``spec`` not yet stored in ``out_dir``; return the tidy results.

    Every argument and the directory are checked before anything is written (the spec's
    configs were validated when it was loaded): a refused sweep changes nothing on disk.

    Args:
        spec: a validated sweep (:func:`gvgap.sweep.spec.load_spec`).
        out_dir: the sweep directory (created; resumed when it holds this spec).
        executor: ``"local"`` (process pool; one worker runs in this process) or ``"ray"``.
        workers: processes / Ray CPUs; default ``os.cpu_count()``.
        address: Ray cluster address; default starts a local cluster of ``workers`` CPUs.
        chunk_size: runs per task; default :func:`auto_chunk_size`.
        progress: progress on stderr: a tqdm bar on a terminal, else plain lines with an ETA
            (:class:`gvgap.sweep.progress.PlainProgress`); ``False`` for none; or a
            :class:`gvgap.sweep.progress.SharedProgress` shared with other sweeps, which this
            sweep only advances.
        append: allow a spec different from the one(s) already run in ``out_dir``; the
            manifest then records every spec.
        pool: run the chunks on this shared executor (a :class:`SharedPool`, or a
            :class:`~gvgap.sweep.ray_executor.SharedRay` with ``executor="ray"``) instead of one
            of this sweep's own (concurrent sweeps in threads; ``workers`` then only sizes the
            chunks).

    Returns:
        the table written to ``out_dir/results.parquet`` (every finished run in the directory).

    Raises:
        UserError: bad executor / workers, unwritable or foreign ``out_dir``, a different spec
            without ``append``, Ray missing or unreachable, a full disk (the directory stays
            resumable), or a UserError raised by a run.

    Note:
        The local pool starts workers with ``forkserver`` (``spawn`` where that is missing),
        so a script calling this with ``workers > 1`` needs the usual
        ``if __name__ == "__main__":`` guard.
    """
    n_workers = _check_args(executor, workers, chunk_size)
    if address and executor != "ray":
        raise UserError("--address applies only to --executor ray")
    store = RunStore(_check_out(out_dir))
    store.check(spec, append=append)
    runs = spec.runs()
    module = get_experiment(spec.experiment)
    if executor == "ray" and address:
        check_address(address)
    footprint = store.footprint()
    store.prepare()
    try:
        return _run_locked(
            spec, store, runs, module, executor, n_workers, address, chunk_size, progress, pool
        )
    except BaseException:  # refused later (Ray would not start), interrupted, failed:
        store.discard_if_unused(footprint)  # what this sweep added, when it stored no run
        raise


def _run_locked(
    spec: SweepSpec,
    store: RunStore,
    runs: list[RunSpec],
    module: Any,
    executor: str,
    n_workers: int,
    address: str | None,
    chunk_size: int | None,
    progress: bool | Any | None,
    pool: SharedPool | SharedRay | None,
) -> pd.DataFrame:
    """The body of :func:`run_sweep` once the directory exists: under its lock, skip the
    stored runs, execute the rest, store each as it returns, consolidate."""
    with store.lock():
        records, problems = store.scan()
        planned = {r.run_id for r in runs}
        for rec in records:
            if rec["experiment"] != spec.experiment:
                problems[rec["run_id"]] = f"a run of {rec['experiment']}, not {spec.experiment}"
        _report_problems(problems, planned)
        done = {r["run_id"] for r in records}
        pending = [r for r in runs if r.run_id not in done]
        if isinstance(progress, SharedProgress):
            progress.resumed(len(runs) - len(pending))
        if progress is not False and len(pending) < len(runs):
            warn(
                f"{spec.experiment}: resuming in {store.root}: {len(runs) - len(pending)} of "
                f"{len(runs)} runs already stored, {len(pending)} to run"
            )
        size = chunk_size or auto_chunk_size(module, len(pending), n_workers)
        chunks = make_chunks(by_instance(pending, module), size)
        n_workers = min(n_workers, max(1, len(chunks)))
        try:
            if chunks:
                executing = (
                    contextlib.nullcontext(pool.execute)
                    if pool is not None
                    else open_executor(executor, n_workers, address)
                )
                with executing as execute:
                    store.write_manifest(spec, runs)
                    bar = make_progress(
                        len(runs), len(runs) - len(pending), spec.experiment, progress
                    )
                    _execute(execute, chunks, store, bar)
            else:
                store.write_manifest(spec, runs)
            return store.consolidate(spec.experiment)
        except BrokenProcessPool:
            raise UserError(
                f"a worker process died (killed, or out of memory); the finished runs in "
                f"{store.root} are kept: run the same command again to resume"
            ) from None
        except OSError as exc:
            raise UserError(
                f"--out {store.root}: cannot write ({os_reason(exc)}); finished runs are kept: "
                "free space and run the same command again to resume"
            ) from None


def _execute(execute: Any, chunks: list[Chunk], store: RunStore, bar: Any) -> None:
    """Store each run as its chunk returns, advancing the progress display."""
    with bar:
        for records in execute(chunks):
            for record in records:
                store.write_run(record)
            bar.update(len(records))
