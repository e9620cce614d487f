"""A progress bar with a rate, for work measured in time rather than in items.

The library reports progress per customer (shreds, DEK rotations) or per batch (KEK
re-wraps, compaction). A bar that waits for a count (:class:`cli.progress.LazyProgress`)
never appears for a hundred slow steps; this one appears once the work has run for a
second, whatever the count, and shows how fast it goes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import click

__all__ = ["Meter", "Phases"]


def _unsized() -> Iterator[str]:
    """An iterator with no length, so that click draws a bar of unknown total."""
    yield from ()


class Meter:
    """A ``progress(n)`` callback: counts items, and after ``delay`` seconds draws a bar
    on stderr with the count, the rate and, when ``expected`` is known, the percentage
    and time left. ``clock`` is injectable for tests. Use as a context manager."""

    def __init__(
        self,
        label: str,
        *,
        unit: str,
        expected: int | None = None,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._unit = unit
        self._expected = expected or None
        self._delay = delay
        self._clock = clock
        self._start = clock()
        self._end: float | None = None
        self.done = 0
        self._bar: Any = None

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started (until it was closed)."""
        return (self._end if self._end is not None else self._clock()) - self._start

    @property
    def rate(self) -> float | None:
        """Items per second so far; None before any time has passed."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else None

    def rate_text(self) -> str:
        """``8,312 DEKs/s`` (or ``-`` before there is a rate)."""
        rate = self.rate
        return "-" if rate is None else f"{rate:,.0f} {self._unit}/s"

    def summary(self) -> str:
        """``12,000 DEKs in 1.4 s (8,312 DEKs/s)``."""
        return f"{self.done:,} {self._unit} in {self.elapsed:.1f} s ({self.rate_text()})"

    def __call__(self, count: int) -> None:
        self.done += count
        if self._bar is None:
            if self.elapsed < self._delay:
                return
            self._bar = click.progressbar(
                _unsized() if self._expected is None else None,
                length=self._expected,
                label=self._label,
                show_pos=True,
                show_percent=self._expected is not None,
                item_show_func=lambda item: item,
                file=sys.stderr,
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
