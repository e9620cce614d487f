"""Helpers for tests that run vault code in real child processes, e.g. to kill one at a
named crash point (``SHREDVAULT_CRASH_AT``; see vault/faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shredvault.vault.faults import CRASH_EXIT_CODE

__all__ = ["CRASH_EXIT_CODE", "REPO", "run_python"]

REPO = Path(__file__).resolve().parents[1]


def run_python(
    code: str, *args: str, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` from the repository root; with ``crash_at`` the
    child exits abruptly (code 97) when it reaches that crash point."""
    env = {k: v for k, v in os.environ.items() if k != "SHREDVAULT_CRASH_AT"}
    if crash_at is not None:
        env["SHREDVAULT_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
