"""A progress meter for operations that report every 10,000 items (verification,
export, the row check): the same :class:`~cli.meter.Meter`, with the estimated total."""

from __future__ import annotations

from .meter import Meter

__all__ = ["LazyProgress"]


class LazyProgress(Meter):
    """A ``progress(n)`` callback for the library's long operations: appears after a
    second, or once ``threshold`` items are done short of ``expected`` (an estimate of
    the total), as a bar on a terminal or lines elsewhere, with the time left. Use as a
    context manager."""

    def __init__(
        self,
        label: str,
        expected: int | None,
        *,
        threshold: int = 10_000,
        unit: str = "entries",
    ) -> None:
        super().__init__(label, unit=unit, expected=expected)
        self._threshold = threshold

    def _due(self) -> bool:
        if super()._due():
            return True
        return self._threshold <= self.done < (self.expected or 0)
