"""Named crash points for crash-recovery tests: the helper lives in ``keys/faults.py``
(a leaf, so the file writer in ``keys`` can have crash points too); the vault's modules
import it from here."""

from __future__ import annotations

from ..keys.faults import CRASH_EXIT_CODE, crash_point

__all__ = ["CRASH_EXIT_CODE", "crash_point"]
