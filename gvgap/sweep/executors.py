"""Executors: run chunks of runs in-process, in a local process pool, or on Ray.

Every executor calls the same :func:`execute_chunk` on the same chunks, and a run's result
depends only on its :class:`~gvgap.sweep.spec.RunSpec` (seeds derived in
:meth:`RunSpec.rngs`), so all executors give bit-identical results. Worker processes run
single-threaded BLAS / OpenMP (:data:`SINGLE_THREAD_ENV`): one worker per CPU, and no
reduction order that depends on a thread count.

Ray is an optional extra (``pip install 'gvgap[ray]'``) imported only when asked for.
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

from gvgap.errors import UserError, check_choice, check_int
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


def import_ray() -> Any:
    """The ``ray`` module, or UserError telling how to install the extra."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'gvgap[ray]'") from None
    return ray


#: Seconds to wait for a TCP connection to a Ray head given by --address.
CONNECT_TIMEOUT_S = 5.0


#: The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server
#: (Ray's GCS, or the Ray Client server behind ray://) answers with its own SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a Ray ``host:port`` (or ``ray://host:port``) that does not accept a TCP
    connection within ``timeout`` seconds, or that accepts one but does not speak gRPC (its
    reply to the HTTP/2 preface is not a SETTINGS frame: an HTTP/1 server, a database, ...;
    ``ray.init`` would otherwise retry for minutes, printing RpcErrors, issue 19). ``auto``
    and other forms are left to Ray, and so are clusters with TLS (``RAY_USE_TLS``).

    Raises:
        UserError: naming --address, the reason and the timeout.
    """
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            sock.sendall(_H2_PREFACE)
            reply = sock.recv(9)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"--address {address}: no Ray cluster reachable there ({reason}, {timeout:g} s timeout)"
        ) from None
    if len(reply) < 4 or reply[3] != _H2_SETTINGS:
        raise UserError(
            f"--address {address}: something answers there, but not a Ray cluster (no gRPC)"
        )


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
        torch = sys.modules.get("torch")
        if torch is not None:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, before)
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


class SharedRay:
    """One Ray session shared by many concurrent sweeps (``gvgap reproduce --executor ray``):
    the executor contract of :func:`open_executor`, and :meth:`close` to stop every sweep
    still running on it."""

    def __init__(self, ray: Any, window: int) -> None:
        self.ray, self.window = ray, window
        self._stop = threading.Event()

    def execute(self, chunks: Iterable[Chunk]) -> Iterator[list[Record]]:
        """Chunks → record lists, at most ``window`` tasks in flight per sweep."""
        return run_on_ray(self.ray, list(chunks), self.window, self._stop)

    def close(self, cancel: bool = False) -> None:
        """``cancel``: make every sweep on this session raise CancelledError and cancel its
        tasks (the session itself is stopped by :func:`ray_session`)."""
        if cancel:
            self._stop.set()


@contextlib.contextmanager
def ray_session(workers: int, address: str | None) -> Iterator[Any]:
    """Connect to ``address`` or start a local Ray with ``workers`` CPUs; reuse a running one."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs = {"runtime_env": {"env_vars": SINGLE_THREAD_ENV}, "log_to_driver": False}
        kwargs["logging_level"] = "WARNING"
        try:
            if address:  # a driver only: nothing starts here, and Ctrl-C stays live
                ray.init(address=address, **kwargs)
            else:
                with sigint_here_only():  # Ray's daemons and workers leave Ctrl-C to this
                    ray.init(num_cpus=workers, include_dashboard=False, **kwargs)  # process
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
            msg = " ".join(str(exc).split())[:300]
            raise UserError(f"--address {address or '(local)'}: cannot start Ray: {msg}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_on_ray(
    ray: Any, chunks: list[Chunk], window: int, stop: threading.Event | None = None
) -> Iterator[list[Record]]:
    """Run chunks as Ray tasks (1 CPU each), at most ``window`` in flight, yielding records.

    Task errors are re-raised as the original exception (a UserError stays a UserError).
    ``stop`` set (a shared session being closed) raises CancelledError within
    :data:`STOP_POLL_S` and cancels the tasks in flight.
    """
    task = ray.remote(num_cpus=1)(execute_chunk)
    todo = list(reversed(chunks))
    flight: list[Any] = []
    try:
        while todo or flight:
            while todo and len(flight) < window:
                flight.append(task.remote(todo.pop()))
            timeout = None if stop is None else STOP_POLL_S
            done, flight = ray.wait(flight, num_returns=1, timeout=timeout)
            if stop is not None and stop.is_set():
                raise CancelledError("the shared Ray session was closed")
            if not done:
                continue
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else exc) from None
    finally:
        for ref in flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


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
            yield lambda chunks: run_on_ray(ray, list(chunks), 2 * window)
    elif workers == 1:
        yield run_in_process
    else:
        yield lambda chunks: run_in_pool(list(chunks), workers)
