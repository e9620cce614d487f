"""The vault package's error tree (DESIGN §8). Messages never hold secrets or field values."""

from __future__ import annotations

import errno

__all__ = [
    "AccessDeniedError",
    "AuditChainError",
    "DecommissionHoldError",
    "HandoverConflictError",
    "LegalHoldError",
    "NotFoundError",
    "OutputExistsError",
    "PurposeError",
    "SchemaError",
    "ShreddedError",
    "StorageError",
    "UnlockError",
    "VaultBusyError",
    "VaultDecommissionedError",
    "VaultError",
    "VerificationError",
]


class VaultError(Exception):
    """Base of every error raised by ``vault``."""


class UnlockError(VaultError):
    """Wrong passphrase or keyfile, or a keystore header weakened below the KDF floor."""


class AccessDeniedError(VaultError):
    """The acting principal may not do this (role, purpose, field, expiry)."""


class SchemaError(VaultError, ValueError):
    """Undeclared kind or field, or a value of the wrong type or size: nothing was stored."""


class PurposeError(AccessDeniedError, SchemaError):
    """The purpose is not declared for this kind (minimal collection): access denied."""


class LegalHoldError(VaultError):
    """The customer is under legal hold and cannot be shredded until released."""


class NotFoundError(VaultError, LookupError):
    """No such customer or record."""


class ShreddedError(NotFoundError):
    """The customer was crypto-shredded: its records are gone for good."""


class VaultDecommissionedError(ShreddedError):
    """The vault is decommissioned (or a decommission is under way): it serves no data.
    Only finishing the decommission and auditing (verify, export) still work."""


class DecommissionHoldError(LegalHoldError):
    """Customers are under legal hold, so the vault is not decommissioned (nothing was
    destroyed) unless holds are explicitly overridden. ``held`` is how many."""

    def __init__(self, message: str, *, held: int) -> None:
        super().__init__(message)
        self.held = held


class VerificationError(VaultError):
    """A log, receipt, checkpoint or backup failed verification.

    ``reason`` is a short machine-readable word (``modified``, ``deleted``, ``inserted``,
    ``reordered``, ``forked``, ``truncated``, ``rolled back``, ``bad signature``,
    ``foreign vault``, ``malformed``); ``seq`` the first bad sequence number, if any.
    """

    def __init__(self, message: str, *, reason: str = "invalid", seq: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq


class AuditChainError(VerificationError):
    """The vault's own access log is broken or rolled back: the vault refuses to serve."""


class HandoverConflictError(VaultError):
    """A handover package names customers the receiving vault already holds: nothing
    was imported."""


class VaultBusyError(VaultError):
    """Another writer held the vault longer than the timeout; nothing was changed."""


class StorageError(VaultError):
    """The data store or keystore failed (missing, unwritable, mismatched, too new)."""


class OutputExistsError(StorageError, FileExistsError):
    """A file to write (receipt, certificate, report, archive, package, key file)
    already exists, or another process is writing it, and overwriting was not asked
    for: nothing was written and the existing file is untouched. ``path`` is the file.
    Also a ``FileExistsError``, so code catching ``OSError`` keeps working."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.errno = errno.EEXIST
        self.path = path
