"""Progress for long operations: totals, rate and time left, on stderr only.

The library reports progress per customer (shreds, DEK rotations) or per batch (KEK
re-wraps, backups, compaction), and says how much there is when it knows
(``total(n)``, :meth:`Meter.expect`). On a terminal the meter draws a bar (count,
percentage, time left, rate) once the work has run for a second; anywhere else (a log
file, a pipe, a CI job) it writes a plain line at most every ``interval`` seconds and
one at the end: ``rotating DEKs: 5,000/20,000 customers (25%), 1,234 customers/s,
about 12 s left``. Nothing goes to stdout, so ``--json`` output stays one document.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TextIO

import click

__all__ = ["Meter", "Phases", "duration_text"]


def _unsized() -> Iterator[str]:
    """An iterator with no length, so that click draws a bar of unknown total."""
    yield from ()


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 04 min``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class Meter:
    """A ``progress(n)`` callback: counts items and, after ``delay`` seconds, shows the
    count, the total when known (``expected`` or :meth:`expect`), the rate and the time
    left on stderr: a bar on a terminal, else a line every ``interval`` seconds and one
    at the end. ``clock`` and ``stream`` are injectable for tests. Use as a context
    manager."""

    def __init__(
        self,
        label: str,
        *,
        unit: str,
        expected: int | None = None,
        delay: float = 1.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
    ) -> None:
        self._label = label
        self._unit = unit
        self._expected = expected or None
        self._delay = delay
        self._interval = interval
        self._clock = clock
        self._stream = stream
        self._start = clock()
        self._end: float | None = None
        self.done = 0
        self._bar: Any = None
        self._last_line: float | None = None

    @property
    def expected(self) -> int | None:
        """The total, when known."""
        return self._expected

    def expect(self, total: int) -> None:
        """Set the total (the library calls it once it has counted the work)."""
        self._expected = total or None
        if self._bar is not None and self._expected is not None:
            self._bar.length = self._expected

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started (until it was closed)."""
        return (self._end if self._end is not None else self._clock()) - self._start

    @property
    def rate(self) -> float | None:
        """Items per second so far; None before any time has passed."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """The time left at the rate so far, when the total is known."""
        rate = self.rate
        if self._expected is None or not rate:
            return None
        return max(0, self._expected - self.done) / rate

    def rate_text(self) -> str:
        """``8,312 DEKs/s`` (or ``-`` before there is a rate)."""
        rate = self.rate
        return "-" if rate is None else f"{rate:,.0f} {self._unit}/s"

    def summary(self) -> str:
        """``12,000 DEKs in 1.4 s (8,312 DEKs/s)``."""
        return f"{self.done:,} {self._unit} in {self.elapsed:.1f} s ({self.rate_text()})"

    def line(self) -> str:
        """The plain progress line: count, total, percentage, rate, time left."""
        if self._expected is None:
            count = f"{self.done:,} {self._unit}"
        else:
            share = min(100, 100 * self.done // max(1, self._expected))
            count = f"{self.done:,}/{self._expected:,} {self._unit} ({share}%)"
        left = self.seconds_left
        eta = "" if left is None else f", about {duration_text(left)} left"
        return f"{self._label}: {count}, {self.rate_text()}{eta}"

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _on_terminal(self) -> bool:
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _due(self) -> bool:
        """Whether to show progress yet: the work has run for ``delay`` seconds."""
        return self.elapsed >= self._delay

    def __call__(self, count: int) -> None:
        self.done += count
        if not self._due():
            return
        if not self._on_terminal():
            now = self._clock()
            if self._last_line is None or now - self._last_line >= self._interval:
                self._last_line = now
                click.echo(self.line(), file=self._out())
            return
        if self._bar is None:
            self._bar = click.progressbar(
                _unsized() if self._expected is None else None,
                length=self._expected,
                label=self._label,
                show_pos=True,
                show_percent=self._expected is not None,
                show_eta=True,
                item_show_func=lambda item: item,
                file=self._out(),
            )
            self._bar.__enter__()
            self._bar.update(self.done, current_item=self.rate_text())
        else:
            self._bar.update(count, current_item=self.rate_text())

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end = self._clock()
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif self._last_line is not None:  # lines were written: the last says how it ended
            click.echo(f"{self._label}: {self.summary()}", file=self._out())


class Phases:
    """A ``progress(phase, count, total)`` callback for work in named phases (a restore:
    verifying the archive, then replaying shreds): one :class:`Meter` per phase, with
    its total, opened when the phase first reports and closed when the next begins.
    ``units`` names each phase's unit and label. Use as a context manager."""

    def __init__(
        self,
        units: dict[str, tuple[str, str]],
        *,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._units = units
        self._delay = delay
        self._clock = clock
        self._phase: str | None = None
        self._meter: Meter | None = None
        #: per phase: (items done, total), for a summary
        self.done: dict[str, tuple[int, int]] = {}

    def __call__(self, phase: str, count: int, total: int) -> None:
        if phase != self._phase:
            self._close()
            label, unit = self._units.get(phase, (phase, "items"))
            self._phase = phase
            self._meter = Meter(
                label, unit=unit, expected=total, delay=self._delay, clock=self._clock
            )
            self._meter.__enter__()
        assert self._meter is not None
        self._meter(count)
        self.done[phase] = (self._meter.done, total)

    def _close(self) -> None:
        if self._meter is not None:
            self._meter.__exit__(None, None, None)
            self._meter = None

    def __enter__(self) -> Phases:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()
