"""A progress meter for operations that report every 10,000 items (verification,
export, the row check): the same :class:`~cli.meter.Meter`, with the estimated total."""

from __future__ import annotations

from .meter import Meter

__all__ = ["LazyProgress"]


class LazyProgress(Meter):
    """A ``progress(n)`` callback for the library's long operations: appears after a
    second (a bar on a terminal, lines elsewhere) with ``expected``, an estimate of the
    total, and the time left. Use as a context manager."""

    def __init__(self, label: str, expected: int | None, *, unit: str = "entries") -> None:
        super().__init__(label, unit=unit, expected=expected)
