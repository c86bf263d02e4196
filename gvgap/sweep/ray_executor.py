"""The Ray executor: chunks as Ray tasks on a local or remote cluster, bit-identical to the
local executors (:mod:`gvgap.sweep.executors`: the same :func:`execute_chunk`, the same
single-threaded workers).

Ray is an optional extra (``pip install 'gvgap[ray]'``) imported only when asked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from gvgap.errors import UserError
from gvgap.sweep.executors import (
    SINGLE_THREAD_ENV,
    STOP_POLL_S,
    Chunk,
    Record,
    execute_chunk,
    sigint_here_only,
)


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
    ray: Any,
    chunks: list[Chunk],
    window: int,
    stop: threading.Event | None = None,
    cancel: bool = False,
) -> Iterator[list[Record]]:
    """Run chunks as Ray tasks (1 CPU each), at most ``window`` in flight, yielding records.

    Task errors are re-raised as the original exception (a UserError stays a UserError).
    ``stop`` set (a shared session being closed) raises CancelledError within
    :data:`STOP_POLL_S`. On an early exit the tasks in flight are cancelled only with
    ``cancel`` (a cluster at ``--address``, which outlives this driver): a local session is
    shut down right after, which ends them, and ``ray.cancel`` there raced with the tasks'
    replies — Ray's core worker aborted ("Tried to complete task that was not pending") in 2
    of 6 Ctrl-Cs of a local sweep, leaving its agent processes behind.
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
        for ref in flight if cancel else ():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
