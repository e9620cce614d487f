"""The vault package's error tree (DESIGN §8). Messages never hold secrets or field values."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from ..keys import (
    DecryptionError,
    InvalidKeyError,
    KeystoreError,
    UnsupportedFormatError,
    WeakParametersError,
    WrongKeyError,
    disk_fault,
    disk_fault_message,
)
from ..keys import DiskFaultError as KeysDiskFaultError
from ..keys import OutputExistsError as KeysOutputExistsError

__all__ = [
    "AccessDeniedError",
    "AuditChainError",
    "CiphertextTamperError",
    "DecommissionHoldError",
    "DiskFaultError",
    "DuplicateRefError",
    "HandoverConflictError",
    "LegalHoldError",
    "LogPendingError",
    "NoTrustedKeyError",
    "NotFoundError",
    "NotSearchableError",
    "NoticeWindowError",
    "OutputExistsError",
    "PurposeError",
    "RecordCiphertext",
    "RequestClosedError",
    "SchemaError",
    "ShreddedError",
    "StateConflictError",
    "StorageError",
    "TamperError",
    "UnlockError",
    "VaultBusyError",
    "VaultDecommissionedError",
    "VaultError",
    "VerificationError",
    "disk_fault_error",
    "disk_faults",
    "keys_errors",
    "record_ciphertext",
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


class DuplicateRefError(SchemaError):
    """The vault declares customer refs unique and another customer already has this
    ref (or, turning the rule on, several customers share one): nothing was written.
    Also raised by a lookup by ref that matches more than one customer."""


class NotSearchableError(SchemaError):
    """The field is not declared searchable for its kind (docs/search.md): nothing was
    searched or logged."""


class LegalHoldError(VaultError):
    """The customer is under legal hold and cannot be shredded until released."""


class NotFoundError(VaultError, LookupError):
    """No such customer or record."""


class ShreddedError(NotFoundError):
    """The customer was crypto-shredded: its records are gone for good."""


class StateConflictError(ShreddedError):
    """The data store says the customer is shredded, yet the keystore still holds its
    keys and no shred of it is confirmed: the stores disagree, so the customer is
    refused (never served) and the refusal logged; docs/shredding.md says what to do."""


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


class NoTrustedKeyError(VerificationError):
    """Nothing was verified against a key the caller trusts: no public key (or anchor)
    was given and trusting the file's own key was not asked for (CLI exit 7). Raised
    only when the file otherwise checks out; a broken file is a plain
    :class:`VerificationError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="no trusted key")


class AuditChainError(VerificationError):
    """The vault's own access log is broken or rolled back: the vault refuses to serve."""


class TamperError(AuditChainError):
    """A data-store row fails its authenticator, or is older than the log says it is
    (rolled back): it was written by someone without the vault's key. The vault refuses
    the object (``table``, ``row``) and serves nothing of it; ``reason`` is
    ``unauthenticated``, ``bad auth``, ``stale`` or ``malformed`` (docs/rows.md)."""

    def __init__(self, message: str, *, table: str, row: str, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.table = table
        self.row = row


class CiphertextTamperError(TamperError, DecryptionError):
    """A record whose row passes its checks holds a ciphertext that does not open as
    that record at its version: an older ciphertext written back, bytes moved from
    elsewhere, or damage. Also a ``DecryptionError``, as any failed decryption is."""


def record_ciphertext(record_id: str) -> RecordCiphertext:
    """Opening a record's ciphertext: a ``DecryptionError`` becomes
    :class:`CiphertextTamperError` naming the record (never its content)."""
    return RecordCiphertext(record_id)


class RecordCiphertext:
    """The context manager of :func:`record_ciphertext`: a class, not a generator, as
    it is entered once per record read (a generator's costs ~1 µs more each time)."""

    __slots__ = ("record_id",)

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if not isinstance(error, DecryptionError) or isinstance(error, UnsupportedFormatError):
            return  # an unknown format or algorithm byte says so, as it always has
        raise CiphertextTamperError(
            f"record {self.record_id} of sv_records holds a ciphertext that does not open as "
            "this record at its version (written back, moved or damaged): refused",
            table="sv_records",
            row=self.record_id,
            reason="bad ciphertext",
        ) from None


class HandoverConflictError(VaultError):
    """A handover package names customers the receiving vault already holds: nothing
    was imported."""


class VaultBusyError(VaultError):
    """Another writer held the vault longer than the timeout; nothing was changed."""


class StorageError(VaultError):
    """The data store or keystore failed (missing, unwritable, mismatched, too new)."""


class DiskFaultError(StorageError, OSError):
    """The disk under the data store, the keystore or a file being written is full
    (``fault == "full"``) or read-only (``fault == "read-only"``). The write failed
    closed: its transaction rolled back, its file never published, so records, keys and
    log entries are as before; what reads can be served without writing still are
    (docs/files.md). Exit 1, as every StorageError; also an ``OSError`` (``errno``
    ENOSPC or EROFS), so code catching the OS's errors keeps working."""

    def __init__(self, message: str, *, fault: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC if fault == "full" else errno.EROFS
        self.fault = fault


def disk_fault_error(
    error: BaseException, where: str | Path | None, doing: str
) -> DiskFaultError | None:
    """A :class:`DiskFaultError` when ``error`` is the disk refusing a write (the keys
    package's ``disk_fault`` decides), for code that catches driver or OS errors."""
    fault = disk_fault(error, where)
    if fault is None:
        return None
    return DiskFaultError(f"{doing}: {disk_fault_message(fault)}; nothing was written", fault=fault)


@contextlib.contextmanager
def disk_faults(where: str | Path | None, doing: str) -> Iterator[None]:
    """Turn a driver's or the OS's error in the block into a :class:`DiskFaultError`
    when it is the disk refusing a write (others pass through unchanged)."""
    try:
        yield
    except Exception as error:
        fault = disk_fault_error(error, where, doing)
        if fault is None:
            raise
        raise fault from None


class LogPendingError(StorageError):
    """A key change committed in the keystore, but its log entry could not be written
    yet: the change stands (e.g. only the new passphrase or keyfile opens the vault) and
    the entry, kept in the keystore, is written at the vault's next open."""


class OutputExistsError(StorageError, FileExistsError):
    """A file to write (receipt, certificate, report, archive, package, key file)
    already exists, or another process is writing it, and overwriting was not asked
    for: nothing was written and the existing file is untouched. ``path`` is the file.
    Also a ``FileExistsError``, so code catching ``OSError`` keeps working."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.errno = errno.EEXIST
        self.path = path


@contextlib.contextmanager
def keys_errors(
    doing: str | None = None, *, bad_key: type[VaultError] | None = UnlockError
) -> Iterator[None]:
    """Translate the keys package's errors into this tree: the one place it is done.

    ``doing`` prefixes storage failures ("KEK rotation stopped: ..."); ``bad_key`` is
    the error for an unusable key or secret (an unlock failure by default, a
    :class:`SchemaError` where a *new* secret is bad input; None lets the keys
    package's ``InvalidKeyError`` through, where it is documented). The writer's
    refusal to overwrite becomes :class:`OutputExistsError`, message and path kept.
    ``DecryptionError`` and ``UnsupportedFormatError`` pass through: they are part of
    the public tree as they are.
    """
    try:
        yield
    except KeysOutputExistsError as error:
        raise OutputExistsError(str(error), path=error.path) from None
    except KeysDiskFaultError as error:
        raise DiskFaultError(
            f"{doing}: {error}" if doing else str(error), fault=error.fault
        ) from None
    except (WrongKeyError, WeakParametersError) as error:
        raise UnlockError(str(error)) from None
    except InvalidKeyError as error:
        if bad_key is None:
            raise
        raise bad_key(str(error)) from None
    except KeystoreError as error:
        raise StorageError(f"{doing}: {error}" if doing else str(error)) from None
    except OSError as error:
        fault = disk_fault(error, None)
        if fault is None:
            raise
        what = f"{error.filename} was not written" if error.filename else "nothing was written"
        prefix = f"{doing}: " if doing else ""
        raise DiskFaultError(f"{prefix}{disk_fault_message(fault)}; {what}", fault=fault) from None


class RequestClosedError(VaultError):
    """The customer request is already closed (docs/requests.md): nothing was changed."""


class NoticeWindowError(VaultError):
    """A handover that requires the notice window refused customers (docs/requests.md):
    ``customers`` maps each refused customer id to why (``no_notice``,
    ``not_delivered``, ``objected``, ``window_open``). Nothing was written."""

    def __init__(self, message: str, *, customers: dict[str, str]) -> None:
        super().__init__(message)
        self.customers = customers
