"""Progress on stderr: a tqdm bar on a terminal, plain lines with an ETA otherwise.

``make reproduce > log`` or a batch job's log gets one line every :data:`LINE_INTERVAL_S`
seconds (and one at the end) instead of nothing::

    gvgap: h6_gap 12/40 runs (30%), 0:35 elapsed, ETA 1:21
"""

from __future__ import annotations

import contextlib
import sys
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
    """

    def __init__(
        self,
        total: int,
        done: int,
        desc: str,
        file: TextIO | None = None,
        interval: float = LINE_INTERVAL_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.total, self.n, self.start_n, self.desc = total, done, done, desc
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
            f"gvgap: {self.desc} {self.n}/{self.total} runs ({pct:.0f}%), "
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


def make_progress(total: int, done: int, desc: str, show: bool | None = None) -> Any:
    """A progress display for ``total`` items of which ``done`` are finished.

    ``show=None``: a tqdm bar when stderr is a terminal, else :class:`PlainProgress` lines;
    ``True``: the same choice, forced on; ``False``: nothing.
    """
    if show is False:
        return NoProgress()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(
            total=total, initial=done, desc=desc, unit="run", file=sys.stderr, mininterval=0.5
        )
    return PlainProgress(total, done, desc)


class StageETA:
    """Overall progress of a job made of weighted stages (``gvgap reproduce``: one stage per
    experiment, weighted by its planned runs), as one plain line per stage on stderr.

    The ETA assumes the remaining weight goes at the rate of the weight done so far::

        gvgap: reproduce: h3_optimisation (4/7), 41% of runs done, 1:02 elapsed, ETA 1:29

    Args:
        weights: stage name → weight (e.g. planned runs), in the order the stages run.
        label: the job's name in the lines.
        file: where lines go (stderr).
        clock: time source (tests pass a fake one).
    """

    def __init__(
        self,
        weights: dict[str, float],
        label: str = "reproduce",
        file: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.weights, self.label, self.clock = dict(weights), label, clock
        self.file = file if file is not None else sys.stderr
        self.total = float(sum(self.weights.values())) or 1.0
        self.done = 0.0
        self.current: str | None = None
        self.t0 = clock()

    def line(self, name: str) -> str:
        """The line printed when stage ``name`` starts."""
        elapsed = self.clock() - self.t0
        index = list(self.weights).index(name) + 1 if name in self.weights else 0
        eta = eta_seconds(self.done, self.total, 0.0, elapsed)
        eta_s = "?" if eta is None else format_seconds(eta)
        return (
            f"gvgap: {self.label}: {name} ({index}/{len(self.weights)}), "
            f"{100 * self.done / self.total:.0f}% of runs done, "
            f"{format_seconds(elapsed)} elapsed, ETA {eta_s}"
        )

    def start(self, name: str) -> None:
        """Close the running stage (its weight counts as done) and announce ``name``."""
        self._close()
        self.current = name
        with contextlib.suppress(OSError, ValueError):
            print(self.line(name), file=self.file, flush=True)

    def _close(self) -> None:
        if self.current is not None:
            self.done += self.weights.get(self.current, 0.0)
            self.current = None

    def finish(self) -> None:
        """Close the last stage and print the total time."""
        self._close()
        with contextlib.suppress(OSError, ValueError):
            print(
                f"gvgap: {self.label}: all stages done in {format_seconds(self.clock() - self.t0)}",
                file=self.file,
                flush=True,
            )
