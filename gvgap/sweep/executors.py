"""Executors: run chunks of runs in-process or in a local process pool (Ray:
:mod:`gvgap.sweep.ray_executor`; the choice: :func:`gvgap.sweep.runner.open_executor`).

Every executor calls the same :func:`execute_chunk` on the same chunks, and a run's result
depends only on its :class:`~gvgap.sweep.spec.RunSpec` (seeds derived in
:meth:`RunSpec.rngs`), so all executors give bit-identical results. Worker processes run
single-threaded BLAS / OpenMP (:data:`SINGLE_THREAD_ENV`): one worker per CPU, and no
reduction order that depends on a thread count.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from gvgap.errors import check_choice, check_int
from gvgap.sweep.spec import RunSpec

EXECUTORS = ("local", "ray")
#: Environment of worker processes.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

Chunk = list[RunSpec]
Record = dict[str, Any]


# ---------------------------------------------------------------- the work of one chunk


def _config(cls: type, values: dict[str, Any]) -> Any:
    from gvgap.experiments.base import config_fields, make_config

    """Rebuild a Config from its JSON record (lists back to tuples where the default is one)."""
    fields = config_fields(cls)
    tuples = {k for k, f in fields.items() if isinstance(f.default, tuple)}
    return make_config(cls, {k: tuple(v) if k in tuples else v for k, v in values.items()})


def _record(run: RunSpec, metrics: dict[str, Any], elapsed: float) -> Record:
    values = {}
    for key, val in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"{run.experiment}: metric names must be str, got {key!r}")
        values[key] = float(val)
    return {"run_id": run.run_id, **run.key(), "metrics": values, "elapsed_s": elapsed}


def execute_chunk(runs: Chunk) -> list[Record]:
    """Run a chunk of runs of one experiment and return one record per run.

    Uses the module's ``run_batch`` for chunks of two or more runs when it has one (its
    contract: bit-identical to calling ``run`` on each), else ``run`` one by one.

    Returns:
        records ``{run_id, experiment, config, seed, instance_seed, metrics, elapsed_s}``.
    """
    if not runs:
        return []
    module = importlib.import_module(f"gvgap.experiments.{runs[0].experiment}")
    cfgs = [_config(module.Config, r.config) for r in runs]
    rngs = [r.rngs() for r in runs]
    if len(runs) > 1 and hasattr(module, "run_batch"):
        start = time.perf_counter()
        out = module.run_batch(cfgs, rngs=[a for a, _ in rngs], instance_rngs=[b for _, b in rngs])
        each = (time.perf_counter() - start) / len(runs)
        return [_record(r, m, each) for r, m in zip(runs, out, strict=True)]
    records = []
    for run, cfg, (rng, inst) in zip(runs, cfgs, rngs):
        start = time.perf_counter()
        metrics = module.run(cfg, rng=rng, instance_rng=inst)
        records.append(_record(run, metrics, time.perf_counter() - start))
    return records


# ---------------------------------------------------------------- arguments


def check_executor(kind: str) -> str:
    """``kind`` if it is a known executor, else UserError naming --executor."""
    return check_choice("--executor", kind, EXECUTORS)


def resolve_workers(workers: int | None) -> int:
    """Worker count: ``None`` → ``os.cpu_count()``; refuses anything below 1 (--workers)."""
    if workers is None:
        return os.cpu_count() or 1
    return check_int("--workers", workers, 1)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily set environment variables (inherited by processes started meanwhile)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Limit BLAS (threadpoolctl, when installed) and torch to one thread in this process."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
        if "torch" in sys.modules:  # never import torch just to limit it
            from gvgap.nn.device import torch_threads

            stack.enter_context(torch_threads(1))
        yield


@contextlib.contextmanager
def sigint_here_only() -> Iterator[None]:
    """Block SIGINT in this thread while it starts child processes (pool workers, the
    forkserver, Ray's daemons). Children inherit the signal mask (fork, exec and forkserver
    alike), so a terminal Ctrl-C, which goes to the whole process group, reaches only this
    process: it stops the children itself (:func:`terminate_pool`, ``ray.shutdown``) instead
    of every child printing its own KeyboardInterrupt traceback mid-start-up (issue 19). A
    SIGINT that arrives meanwhile is delivered here when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


#: Seconds to wait for a pool's manager thread to take note of its ended workers.
TERMINATE_JOIN_S = 5.0


def terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a process pool now: end its workers (they write nothing; the runs they held are
    not stored and run again on resume), then drop its queued tasks.

    Order matters (CPython 3.11): the pool's manager thread marks every unfinished future
    broken once a worker dies, and raises InvalidStateError (a traceback on stderr) for a
    future already cancelled. So cancelled futures are taken out of its work table first,
    the workers ended, and the manager thread (which then exits) waited for before the
    remaining tasks are cancelled.
    """
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
    items = getattr(pool, "_pending_work_items", None)
    if items is not None:
        for key, item in list(items.items()):
            if item.future.cancelled():
                items.pop(key, None)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    manager = getattr(pool, "_executor_manager_thread", None)
    if procs and manager is not None and manager is not threading.current_thread():
        manager.join(timeout=TERMINATE_JOIN_S)
    pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- executors


def run_in_process(chunks: Iterable[Chunk]) -> Iterator[list[Record]]:
    """Run chunks one after another in this process, single-threaded like a pool worker,
    yielding each chunk's records."""
    with _single_threaded():
        for chunk in chunks:
            yield execute_chunk(chunk)


#: Seconds between a pool worker's checks that the sweep process is still alive.
PARENT_POLL_S = 0.5
#: Seconds between a sweep's checks that its shared pool is still open.
STOP_POLL_S = 0.5


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed, not yet reaped driver)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to another user's process
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): trust os.kill
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _init_worker(driver: int) -> None:
    """Pool-worker initializer: one BLAS thread, and exit as soon as ``driver`` is gone.

    The thread limit backs up :data:`SINGLE_THREAD_ENV` (threadpoolctl, when installed). A
    SIGKILLed driver cannot stop its workers, and ProcessPoolExecutor workers would otherwise
    finish their queued chunks for nobody and then block forever.
    """
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    if os.name != "posix":
        return

    def watch() -> None:
        while _alive(driver):
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="gvgap-driver-watch", daemon=True).start()


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "gvgap.sweep.executors"])
    return ctx


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose workers start (forkserver, else spawn) single-threaded and exit when this
    process dies."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_mp_context(),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


def _submit_all(pool: ProcessPoolExecutor, chunks: Iterable[Chunk]) -> set[Future]:
    with sigint_here_only():  # submitting starts the workers (and the forkserver)
        return {pool.submit(execute_chunk, c) for c in chunks}


def _as_finished(
    pending: set[Future], stop: threading.Event | None = None
) -> Iterator[list[Record]]:
    """Yield each chunk's records as it finishes; on an error or an early stop, the chunks
    still queued are cancelled (other users of a shared pool keep theirs). ``stop`` set (a
    shared pool closed under this sweep) raises CancelledError within :data:`STOP_POLL_S`:
    ``wait`` alone never returns for futures cancelled by the pool's shutdown."""
    try:
        while pending:
            timeout = None if stop is None else STOP_POLL_S
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if stop is not None and stop.is_set():
                raise CancelledError("the shared process pool was closed")
            for fut in done:
                yield fut.result()
    finally:
        for fut in pending:
            fut.cancel()


def run_in_pool(chunks: list[Chunk], workers: int) -> Iterator[list[Record]]:
    """Run chunks on a local process pool of their own, yielding records as chunks finish."""
    pool = _process_pool(workers)
    try:
        with _environ(SINGLE_THREAD_ENV):  # the workers start at the first submissions
            pending = _submit_all(pool, chunks)
        yield from _as_finished(pending)
    except BaseException:
        terminate_pool(pool)  # Ctrl-C or an error: the workers ignore SIGINT, end them
        raise
    pool.shutdown(wait=True)


class SharedPool:
    """One local process pool shared by many concurrent sweeps and jobs (``gvgap
    reproduce``: every sweep of every experiment, their verdicts and the figures).

    Its workers take tasks first come, first served, so no CPU idles while any sweep has
    chunks left (a pool per sweep idles at each sweep's tail). Thread-safe: sweeps run in
    threads of the caller. Results do not depend on the sharing: a run's record depends only
    on its RunSpec.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._stop = threading.Event()
        self._pool = _process_pool(workers)
        with _environ(SINGLE_THREAD_ENV), sigint_here_only():  # start the forkserver and a
            first = self._pool.submit(os.getpid)  # worker in this env now: sweeps submit
        first.result()  # later, from many threads (their workers fork from the forkserver)

    def execute(self, chunks: Iterable[Chunk]) -> Iterator[list[Record]]:
        """The executor contract of :func:`open_executor`: chunks → record lists."""
        return _as_finished(_submit_all(self._pool, chunks), self._stop)

    def submit(self, fn: Any, *args: Any) -> Future:
        """Run ``fn(*args)`` (a picklable, module-level function) on a worker."""
        with sigint_here_only():
            return self._pool.submit(fn, *args)

    def close(self, cancel: bool = False) -> None:
        """Shut the workers down (``cancel``: drop queued tasks first, and make every sweep
        still draining this pool raise CancelledError instead of waiting)."""
        if cancel:  # running chunks cannot be cancelled: end their workers, then the sweeps
            terminate_pool(self._pool)
            self._stop.set()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


@contextlib.contextmanager
def shared_pool(workers: int) -> Iterator[SharedPool]:
    """A :class:`SharedPool` of ``workers`` processes for the ``with`` block."""
    pool = SharedPool(workers)
    try:
        yield pool
    except BaseException:
        pool.close(cancel=True)
        raise
    pool.close()
