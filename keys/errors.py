"""The keys package's error tree (DESIGN §8). Messages never contain key material."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

__all__ = [
    "DecryptionError",
    "DiskFaultError",
    "InvalidKeyError",
    "KeysError",
    "KeystoreError",
    "OutputExistsError",
    "UnsupportedFormatError",
    "WeakParametersError",
    "WrongKeyError",
    "disk_fault",
    "disk_fault_message",
]


class KeysError(Exception):
    """Base of every error raised by ``keys``."""


class InvalidKeyError(KeysError, ValueError):
    """A key, keyfile or key parameter is malformed or unusable."""


class WrongKeyError(InvalidKeyError):
    """The passphrase or keyfile does not match the keystore's key-check value."""


class WeakParametersError(InvalidKeyError):
    """KDF parameters below the floor (or above the ceiling): refused, since a weakened
    header is an attack and an inflated one would exhaust the machine at unlock."""


class DecryptionError(KeysError):
    """Authenticated decryption failed: wrong key, wrong context, or altered bytes."""


class UnsupportedFormatError(DecryptionError):
    """The envelope names a format or algorithm this version does not know."""


class KeystoreError(KeysError):
    """The keystore file is missing, locked, corrupt, or from another vault."""


class OutputExistsError(KeysError, FileExistsError):
    """The file to write already exists (or is being written by another process) and
    overwriting was not asked for: nothing was written, the existing file is untouched.
    ``path`` is the file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.errno = errno.EEXIST
        self.path = path


class DiskFaultError(KeystoreError):
    """The disk under a file being written is full (``fault == "full"``) or read-only
    (``fault == "read-only"``): the write was refused or rolled back, nothing of it
    was kept (docs/files.md, "Full and read-only disks")."""

    def __init__(self, message: str, *, fault: str) -> None:
        super().__init__(message)
        self.fault = fault


_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_fault(error: BaseException | None, where: str | os.PathLike[str] | None) -> str | None:
    """``"full"`` or ``"read-only"`` when ``error`` (or an error it was raised from or
    while handling) is the machine's disk refusing a write, else None. The one place
    these are recognised: ``ENOSPC``/``EDQUOT``/``EROFS``, SQLite's ``SQLITE_FULL`` and
    ``SQLITE_READONLY``; SQLite's I/O errors (which is what a full disk gives while it
    sizes its WAL index) count when the file system holding ``where`` is full or
    mounted read-only right now."""
    seen = 0
    while error is not None and seen < 8:
        seen += 1
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return "full"
        if isinstance(error, OSError) and error.errno == errno.EROFS:
            return "read-only"
        if isinstance(error, sqlite3.Error):
            name = str(getattr(error, "sqlite_errorname", ""))
            if name.startswith("SQLITE_FULL"):
                return "full"
            if name in ("SQLITE_READONLY", "SQLITE_READONLY_CANTINIT", "SQLITE_READONLY_CANTLOCK"):
                return "read-only"
            if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
                return _file_system_state(where)
        error = error.__cause__ or error.__context__
    return None


def _file_system_state(where: str | os.PathLike[str] | None) -> str | None:
    if where is None or not hasattr(os, "statvfs"):
        return None
    path = Path(where)
    try:
        info = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return None
    if info.f_flag & getattr(os, "ST_RDONLY", 1):
        return "read-only"
    # A few blocks left is full for SQLite, which sizes its files in 32 KiB steps.
    if info.f_bavail * info.f_frsize < 64 * 1024:
        return "full"
    return None


def disk_fault_message(fault: str) -> str:
    """The words for a fault from :func:`disk_fault`, for messages."""
    return "the disk is full" if fault == "full" else "the disk is read-only"
