"""Progress on stderr: a tqdm bar on a terminal, plain lines with an ETA otherwise.

``make reproduce > log`` or a batch job's log gets one line every :data:`LINE_INTERVAL_S`
seconds (and one at the end) instead of nothing::

    gvgap: h6_gap 12/40 runs (30%), 0:35 elapsed, ETA 1:21
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, TextIO

#: Seconds between two plain progress lines.
LINE_INTERVAL_S = 10.0


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a non-negative duration."""
    s = round(max(seconds, 0.0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def eta_seconds(done: int, total: int, start_done: int, elapsed: float) -> float | None:
    """Remaining time at the rate of this session, ``elapsed / (done − start_done)`` per item
    (None before the first item of this session finishes)."""
    new = done - start_done
    if new <= 0 or elapsed <= 0:
        return None
    return (total - done) * elapsed / new


class PlainProgress:
    """Plain progress lines with an ETA, at most one per ``interval`` seconds plus the last.

    Args:
        total: items in all.
        done: items already finished before this session (resumed runs).
        desc: what is counted (an experiment id).
        file: where lines go (stderr).
        interval: seconds between lines.
        clock: time source (tests pass a fake one).
        unit: what an item is, in the line (``runs``; the LLM path counts stage steps).
    """

    def __init__(
        self,
        total: int,
        done: int,
        desc: str,
        file: TextIO | None = None,
        interval: float = LINE_INTERVAL_S,
        clock: Any = time.monotonic,
        unit: str = "runs",
    ) -> None:
        self.total, self.n, self.start_n, self.desc, self.unit = total, done, done, desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.t0 = clock()
        self.last = self.t0

    def line(self, now: float | None = None) -> str:
        """The progress line at time ``now`` (default: the clock's time)."""
        elapsed = (self.clock() if now is None else now) - self.t0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = eta_seconds(self.n, self.total, self.start_n, elapsed)
        eta_s = "?" if eta is None else format_seconds(eta)
        return (
            f"gvgap: {self.desc} {self.n}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{format_seconds(elapsed)} elapsed, ETA {eta_s}"
        )

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished items; print a line if ``interval`` has passed."""
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            self._print(now)

    def _print(self, now: float | None = None) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not stop a sweep
            print(self.line(now), file=self.file, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.n > self.start_n:
            self._print()


class NoProgress:
    """Progress that shows nothing."""

    def update(self, n: int = 1) -> None:
        """Ignore ``n``."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class SharedProgress:
    """One display advanced by many concurrent sweeps (threads): ``update`` takes a lock,
    and leaving a sweep's ``with`` block does not close it; :meth:`close` does, once.

    Args:
        display: a tqdm bar or :class:`PlainProgress` (:func:`make_progress`).
    """

    def __init__(self, display: Any) -> None:
        self.display = display
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished items."""
        with self._lock:
            self.display.update(n)

    def resumed(self, n: int) -> None:
        """Count ``n`` runs found already stored: done, but not at this session's rate (the
        ETA's rate counts only what runs now)."""
        with self._lock:
            self.display.n += n
            for attr in ("start_n", "initial", "last_print_n"):  # PlainProgress / tqdm
                if hasattr(self.display, attr):
                    setattr(self.display, attr, getattr(self.display, attr) + n)

    def __enter__(self) -> SharedProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        """Print the last line (or close the bar)."""
        with self._lock:
            self.display.__exit__(None, None, None)


def make_progress(
    total: int, done: int, desc: str, show: bool | Any | None = None, unit: str = "run"
) -> Any:
    """A progress display for ``total`` items (``unit``) of which ``done`` are finished.

    ``show=None``: a tqdm bar when stderr is a terminal, else :class:`PlainProgress` lines;
    ``True``: the same choice, forced on; ``False``: nothing; a :class:`SharedProgress`:
    that display itself.
    """
    if isinstance(show, SharedProgress):
        return show
    if show is False:
        return NoProgress()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(
            total=total, initial=done, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5
        )
    return PlainProgress(total, done, desc, unit=f"{unit}s")
