"""Run one setting (``gvgap run``) or a whole sweep (``gvgap sweep``), resumably.

A sweep: validate the arguments, check the output directory, skip the runs already stored
there, group the rest into chunks, run the chunks on an executor, store each run as soon as
its chunk returns, then rebuild ``results.parquet``. See :mod:`gvgap.sweep.store` for the
atomicity and resume guarantees and :mod:`gvgap.sweep.spec` for run ids and seeds.
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from gvgap.errors import UserError
from gvgap.experiments.base import make_config
from gvgap.experiments.registry import get_experiment
from gvgap.sweep.executors import (
    Chunk,
    check_executor,
    execute_chunk,
    import_ray,
    open_executor,
    resolve_workers,
)
from gvgap.sweep.spec import RunSpec, SweepSpec, check_count, config_record
from gvgap.sweep.store import RunStore

if TYPE_CHECKING:
    import pandas as pd

#: Chunks per worker the automatic chunk size aims for (load balance vs. per-task overhead).
CHUNKS_PER_WORKER = 4
#: Largest automatic chunk when an experiment does not set ``BATCH_SIZE``.
DEFAULT_BATCH_SIZE = 32


def run_single(
    exp_id: str, overrides: dict[str, Any], seed: int = 0, instance_seed: int | None = None
) -> dict[str, float]:
    """One setting of one experiment, in this process (``gvgap run``).

    The result equals the row a sweep stores for the same config and seeds.

    Args:
        exp_id: experiment id.
        overrides: Config field → value (strings from ``--set k=v`` are coerced by type).
        seed: data / learner seed (>= 0).
        instance_seed: problem-instance seed; defaults to ``seed``.

    Raises:
        UserError: unknown experiment or field, bad value, negative seed.
    """
    module = get_experiment(exp_id)
    seed = check_count("--seed", seed, 0)
    inst = seed if instance_seed is None else check_count("--instance-seed", instance_seed, 0)
    config = config_record(make_config(module.Config, overrides))
    return execute_chunk([RunSpec(exp_id, config, seed, inst)])[0]["metrics"]


def auto_chunk_size(module: Any, n_pending: int, workers: int) -> int:
    """Runs per task: 1 unless the experiment has ``run_batch``; then enough to cut per-task
    overhead while leaving :data:`CHUNKS_PER_WORKER` chunks per worker, at most its
    ``BATCH_SIZE``."""
    if not hasattr(module, "run_batch"):
        return 1
    cap = int(getattr(module, "BATCH_SIZE", DEFAULT_BATCH_SIZE))
    return max(1, min(cap, math.ceil(n_pending / (CHUNKS_PER_WORKER * workers))))


def make_chunks(runs: list[RunSpec], size: int) -> list[Chunk]:
    """Consecutive runs (grid order, seeds innermost) in chunks of ``size``."""
    return [runs[i : i + size] for i in range(0, len(runs), size)]


def _progress(total: int, done: int, desc: str, show: bool | None) -> tqdm:
    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, initial=done, desc=desc, unit="run", file=sys.stderr, disable=not show)


def _check_args(executor: str, workers: int | None, chunk_size: int | None) -> int:
    """Validate executor / workers / chunk size before anything is touched; the worker count."""
    check_executor(executor)
    n = resolve_workers(workers)
    if executor == "ray":
        import_ray()
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise UserError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return n


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    *,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Run every run of ``spec`` not yet stored in ``out_dir``; return the tidy results.

    Args:
        spec: a validated sweep (:func:`gvgap.sweep.spec.load_spec`).
        out_dir: the sweep directory (created; resumed when it holds this experiment).
        executor: ``"local"`` (process pool; one worker runs in this process) or ``"ray"``.
        workers: processes / Ray CPUs; default ``os.cpu_count()``.
        address: Ray cluster address; default starts a local cluster of ``workers`` CPUs.
        chunk_size: runs per task; default :func:`auto_chunk_size`.
        progress: show a tqdm bar on stderr; default only when stderr is a terminal.

    Returns:
        the table written to ``out_dir/results.parquet`` (every finished run in the directory).

    Raises:
        UserError: bad executor / workers, unwritable or foreign ``out_dir``, Ray missing or
            unreachable, or a UserError raised by a run.

    Note:
        The local pool starts workers with ``forkserver`` (``spawn`` where that is missing),
        so a script calling this with ``workers > 1`` needs the usual
        ``if __name__ == "__main__":`` guard.
    """
    n_workers = _check_args(executor, workers, chunk_size)
    store = RunStore(out_dir)
    store.check(spec)
    with store.lock():
        runs = spec.runs()
        done = store.done_ids()
        pending = [r for r in runs if r.run_id not in done]
        module = get_experiment(spec.experiment)
        size = chunk_size or auto_chunk_size(module, len(pending), n_workers)
        chunks = make_chunks(pending, size)
        n_workers = min(n_workers, max(1, len(chunks)))
        if chunks:
            with open_executor(executor, n_workers, address) as execute:
                store.write_manifest(spec, runs)
                bar = _progress(len(runs), len(runs) - len(pending), spec.experiment, progress)
                _execute(execute, chunks, store, bar)
        else:
            store.write_manifest(spec, runs)
        return store.consolidate(spec.experiment)


def _execute(execute: Any, chunks: list[Chunk], store: RunStore, bar: tqdm) -> None:
    """Store each run as its chunk returns, advancing the progress bar."""
    with bar:
        for records in execute(chunks):
            for record in records:
                store.write_run(record)
            bar.update(len(records))
