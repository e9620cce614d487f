"""OS file locks: the one module that calls them (``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows).

A lock is exclusive and advisory, held through an open file descriptor, so the kernel
drops it when the holding process dies, however it dies. The platform's calls are
imported when a lock is first asked for, never at import time: where a Python has
neither, importing shredvault and the offline verifiers still work, and
:func:`lock_calls` says so by returning None.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["LockCalls", "lock_calls"]

_POLL_S = 0.005


class LockCalls(NamedTuple):
    """This platform's lock calls on an open descriptor."""

    #: take the lock now if free: True when taken, False when another process holds it
    try_lock: Callable[[int], bool]
    #: take the lock, waiting while another process holds it
    wait_lock: Callable[[int], None]
    #: release it (explicitly: a process forked meanwhile shares the descriptor)
    unlock: Callable[[int], None]


def lock_calls() -> LockCalls | None:
    """This platform's lock calls, or None where it has none."""
    if sys.platform == "win32":
        return _msvcrt_calls()
    try:
        import fcntl
    except ImportError:
        return None

    def try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def wait_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    return LockCalls(try_lock, wait_lock, unlock)


def _msvcrt_calls() -> LockCalls:
    import msvcrt

    def try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks from the current position
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EDEADLK):
                return False  # a region another handle holds
            raise
        return True

    def wait_lock(fd: int) -> None:
        while not try_lock(fd):
            time.sleep(_POLL_S)

    def unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]

    return LockCalls(try_lock, wait_lock, unlock)
