"""Helpers for tests that run vault code in real child processes, e.g. to kill one at a
named crash point (``SHREDVAULT_CRASH_AT``) or hold one there while the test acts
(``SHREDVAULT_PAUSE_AT``; see keys/faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shredvault.vault.faults import CRASH_EXIT_CODE

__all__ = ["CRASH_EXIT_CODE", "REPO", "PausedChild", "paused_python", "run_python"]

REPO = Path(__file__).resolve().parents[1]
_FAULT_VARIABLES = ("SHREDVAULT_CRASH_AT", "SHREDVAULT_PAUSE_AT", "SHREDVAULT_PAUSE_DIR")


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FAULT_VARIABLES}
    env.update(extra)
    return env


def run_python(
    code: str, *args: str, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` from the repository root; with ``crash_at`` the
    child exits abruptly (code 97) when it reaches that crash point."""
    env = _child_env() if crash_at is None else _child_env(SHREDVAULT_CRASH_AT=crash_at)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class PausedChild:
    """A child process waiting at a crash point; :meth:`release` lets it go on."""

    process: subprocess.Popen[str]
    pause_dir: Path

    def release(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Let the child continue and wait for it to end."""
        (self.pause_dir / "go").touch()
        out, err = self.process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)


@contextmanager
def paused_python(
    code: str, *args: str, pause_at: str, pause_dir: Path, timeout: float = 60
) -> Iterator[PausedChild]:
    """Start ``python -c code args...`` and yield once it waits at crash point
    ``pause_at``; on leaving, the child is released and reaped (killed if it hangs)."""
    pause_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=_child_env(SHREDVAULT_PAUSE_AT=pause_at, SHREDVAULT_PAUSE_DIR=str(pause_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (pause_dir / "reached").exists():
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(
                    f"the child ended (exit {process.returncode}) before {pause_at}: {err}{out}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not reach {pause_at} in {timeout:g}s")
            time.sleep(0.01)
        yield PausedChild(process, pause_dir)
    finally:
        (pause_dir / "go").touch()
        if process.poll() is None:
            try:
                process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
