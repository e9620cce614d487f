"""The shred lock (docs/shredding.md): an exclusive OS file lock with a timeout, through
the one module that calls the OS (``keys/locks.py``).

A lock here is exclusive and advisory, on a file beside the keystore, and held through an
open file descriptor, so the kernel drops it when the holding process dies, however it
dies: a lock found free was never taken or its holder is gone. That is what lets
roll-forward tell a crashed shred from one still running in another process.

POSIX: ``fcntl.flock`` on the whole file. Windows: ``msvcrt.locking`` on its first byte
(Windows also drops it when the process ends, "depending on available system resources",
so a wait may run a little past a holder's death). Anywhere else importing still works, so
the offline verifiers run, and taking a lock raises StorageError before any file is made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..keys.locks import LockCalls, lock_calls
from .errors import StorageError, VaultBusyError

__all__ = ["exclusive_lock"]

_POLL_S = 0.005


@contextmanager
def exclusive_lock(path: Path, *, timeout: float, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on the file at ``path`` (made 0600 if missing) for the block.

    Tries once without blocking, then polls until ``timeout`` seconds have passed. Raises
    VaultBusyError ("another process has been <holder> for longer than ...") when another
    process holds it that long, StorageError when the file cannot be opened or locked or
    this platform has no file locks. Released on leaving the block, or by the kernel when
    the process dies.
    """
    lock = _calls()
    try:
        # os.open's descriptors are not inherited by child processes (PEP 446).
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise StorageError(f"cannot open the lock file {path.name}: {error.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while not _attempt(lock, fd, path):
            if time.monotonic() >= deadline:
                raise VaultBusyError(
                    f"another process has been {holder} for longer than {timeout:g}s; "
                    "nothing was changed"
                )
            time.sleep(_POLL_S)
        try:
            yield
        finally:
            # Explicitly, not only by closing: a process forked meanwhile shares the
            # descriptor and would otherwise keep the lock after we are done.
            lock.unlock(fd)
    finally:
        os.close(fd)


def _attempt(lock: LockCalls, fd: int, path: Path) -> bool:
    try:
        return lock.try_lock(fd)
    except OSError as error:
        raise StorageError(f"cannot lock {path.name}: {error.strerror}") from None


def _calls() -> LockCalls:
    """This platform's lock calls (keys/locks.py); StorageError if it has none."""
    calls = lock_calls()
    if calls is None:
        raise StorageError(
            "this Python has no file locks (neither fcntl nor msvcrt), which shredding "
            "and opening a vault need; verifying exports, receipts and certificates does not"
        )
    return calls
