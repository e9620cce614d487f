"""OS file locks: the one module that takes them (the shred lock, docs/shredding.md).

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

import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from .errors import StorageError, VaultBusyError

__all__ = ["exclusive_lock"]

_POLL_S = 0.005


class _Primitives(NamedTuple):
    try_lock: Callable[[int], bool]  # True if taken now, False if another process holds it
    unlock: Callable[[int], None]


@contextmanager
def exclusive_lock(path: Path, *, timeout: float, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on the file at ``path`` (made 0600 if missing) for the block.

    Tries once without blocking, then polls until ``timeout`` seconds have passed. Raises
    VaultBusyError ("another process has been <holder> for longer than ...") when another
    process holds it that long, StorageError when the file cannot be opened or locked or
    this platform has no file locks. Released on leaving the block, or by the kernel when
    the process dies.
    """
    lock = _primitives()
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


def _attempt(lock: _Primitives, fd: int, path: Path) -> bool:
    try:
        return lock.try_lock(fd)
    except OSError as error:
        raise StorageError(f"cannot lock {path.name}: {error.strerror}") from None


if sys.platform == "win32":

    def _msvcrt_primitives() -> _Primitives:
        import msvcrt

        def try_lock(fd: int) -> bool:
            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks from the current position
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EDEADLK):
                    return False  # a region another handle holds
                raise
            return True

        def unlock(fd: int) -> None:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

        return _Primitives(try_lock, unlock)


def _primitives() -> _Primitives:
    """This platform's lock calls; StorageError if it has none. Imported here, not at
    module level, so that importing shredvault never needs them."""
    if sys.platform == "win32":
        return _msvcrt_primitives()
    try:
        import fcntl
    except ImportError:
        raise StorageError(
            "this Python has no file locks (neither fcntl nor msvcrt), which shredding "
            "and opening a vault need; verifying exports, receipts and certificates does not"
        ) from None

    def try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    return _Primitives(try_lock, unlock)
