"""Named crash points for crash-recovery tests.

``SHREDVAULT_CRASH_AT=<name>`` makes the process exit abruptly (``os._exit``, no
cleanup, no commit) when it reaches that point, exactly like a power cut or a kill
between two steps of a protocol. ``SHREDVAULT_PAUSE_AT=<name>`` with
``SHREDVAULT_PAUSE_DIR=<dir>`` instead stops there: the process creates ``<dir>/reached``
and waits (at most a minute) for ``<dir>/go``, so a test can act while a protocol is
half-way in a live process. Unset in normal use; reading env vars is cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["CRASH_EXIT_CODE", "crash_point"]

CRASH_EXIT_CODE = 97


def crash_point(name: str, detail: str | None = None) -> None:
    """Exit at once if the environment asks to crash at ``name``, or at
    ``name:detail`` when a point is reached for several things (the file writer's points
    take the file's name: ``files:before-publish:data.db``)."""
    names = (name,) if detail is None else (name, f"{name}:{detail}")
    if os.environ.get("SHREDVAULT_CRASH_AT") in names:
        os._exit(CRASH_EXIT_CODE)
    if os.environ.get("SHREDVAULT_PAUSE_AT") in names:
        where = Path(os.environ["SHREDVAULT_PAUSE_DIR"])
        (where / "reached").touch()
        deadline = time.monotonic() + 60
        while not (where / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
