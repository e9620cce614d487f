"""A progress bar on stderr that appears only once work turns out to be long."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

import click

__all__ = ["LazyProgress"]


class LazyProgress:
    """A ``progress(n)`` callback for the library's long operations.

    The library reports every 10,000 items and once at the end; a short run therefore
    reports once, and no bar is drawn. ``expected`` is an estimate of the total (a bar
    never passes 100%). Use as a context manager so the bar is closed.
    """

    def __init__(self, label: str, expected: int | None, *, threshold: int = 10_000) -> None:
        self._label = label
        self._expected = expected
        self._threshold = threshold
        self._done = 0
        self._bar: Any = None

    def __call__(self, count: int) -> None:
        self._done += count
        if self._bar is None:
            if self._done < self._threshold or self._done >= (self._expected or 0):
                return
            self._bar = click.progressbar(length=self._expected, label=self._label, file=sys.stderr)
            self._bar.__enter__()
            self._bar.update(self._done)
        else:
            self._bar.update(count)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
