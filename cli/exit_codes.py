"""The CLI's exit codes (DESIGN §9) and the one place that maps library errors to them."""

from __future__ import annotations

from ..vault import (
    AccessDeniedError,
    KeysError,
    NotFoundError,
    NoTrustedKeyError,
    SchemaError,
    UnlockError,
    VaultError,
    VerificationError,
)

__all__ = [
    "ACCESS_DENIED",
    "ERROR",
    "NOT_FOUND",
    "NOT_TRUSTED",
    "OK",
    "UNLOCK_FAILED",
    "USAGE",
    "VERIFICATION_FAILED",
    "CommandError",
    "describe",
    "exit_code_for",
]

OK = 0
ERROR = 1
USAGE = 2  # click's own UsageError code
ACCESS_DENIED = 3
NOT_FOUND = 4
VERIFICATION_FAILED = 5
UNLOCK_FAILED = 6
NOT_TRUSTED = 7  # not verified: no trusted key (no --pubkey / anchor / seller key)

# Most specific first. PurposeError is both an AccessDeniedError and a SchemaError:
# AccessDeniedError must come before SchemaError so it exits 3, not 1.
_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UnlockError, UNLOCK_FAILED),
    (AccessDeniedError, ACCESS_DENIED),
    (NotFoundError, NOT_FOUND),  # includes ShreddedError and VaultDecommissionedError
    (NoTrustedKeyError, NOT_TRUSTED),  # before VerificationError: it is one
    (VerificationError, VERIFICATION_FAILED),  # includes AuditChainError
    (SchemaError, ERROR),
    (VaultError, ERROR),
    (KeysError, ERROR),
    (OSError, ERROR),
)


class CommandError(Exception):
    """An expected failure found by the CLI itself, with the exit code to end with."""

    def __init__(self, message: str, exit_code: int = ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error the CLI, the library or the file system raised."""
    if isinstance(error, CommandError):
        return error.exit_code
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return ERROR


def describe(error: BaseException) -> str:
    """The one-line message for ``error: <message>``. Library messages never hold
    secrets or field values; for OS errors, the file and the system's reason."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error) or type(error).__name__
