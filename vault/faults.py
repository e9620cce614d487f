"""Named crash points for crash-recovery tests.

``SHREDVAULT_CRASH_AT=<name>`` makes the process exit abruptly (``os._exit``, no
cleanup, no commit) when it reaches that point, exactly like a power cut or a kill
between two steps of a protocol. Unset in normal use; reading one env var is cheap.
"""

from __future__ import annotations

import os

__all__ = ["crash_point"]

CRASH_EXIT_CODE = 97


def crash_point(name: str) -> None:
    """Exit at once if the environment asks to crash at ``name``."""
    if os.environ.get("SHREDVAULT_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
