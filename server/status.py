"""The one place where the library's typed errors become HTTP statuses.

The JSON body of every error names the error's class (``{"error": "ShreddedError",
"message": ...}``); library messages hold no secret and no field value, so they are
passed on as they are.
"""

from __future__ import annotations

from typing import Any

from ..vault import (
    AccessDeniedError,
    AuditChainError,
    DuplicateRefError,
    HandoverConflictError,
    KeysError,
    LegalHoldError,
    LogPendingError,
    NotFoundError,
    NoTrustedKeyError,
    SchemaError,
    ShreddedError,
    StateConflictError,
    StorageError,
    UnlockError,
    VaultBusyError,
    VaultDecommissionedError,
    VaultError,
    VerificationError,
)

__all__ = ["STATUSES", "HttpProblem", "error_body", "status_for"]

#: most specific first: PurposeError is both an AccessDeniedError and a SchemaError
#: (403, as the CLI's exit 3); a shredded customer is gone for good (410); a broken
#: chain or a tampered row is the server's store failing (500), not the caller's input
STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (VaultDecommissionedError, 410),
    (StateConflictError, 409),
    (ShreddedError, 410),
    (AccessDeniedError, 403),
    (NotFoundError, 404),
    (DuplicateRefError, 409),
    (LegalHoldError, 409),
    (HandoverConflictError, 409),
    (AuditChainError, 500),
    (NoTrustedKeyError, 422),
    (VerificationError, 422),
    (SchemaError, 422),
    (VaultBusyError, 503),
    (LogPendingError, 503),
    (StorageError, 503),
    (UnlockError, 500),
    (VaultError, 500),
    (KeysError, 500),
)


class HttpProblem(Exception):
    """A refusal found by the server itself (no token, a malformed body, too many
    failed logins), with its status and the name to report as ``error``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def status_for(error: BaseException) -> int:
    """The HTTP status for a library error or an :class:`HttpProblem`."""
    if isinstance(error, HttpProblem):
        return error.status
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def error_body(error: BaseException) -> dict[str, Any]:
    """``{"error": <class name>, "message": <one line>}`` for the response body."""
    name = error.error if isinstance(error, HttpProblem) else type(error).__name__
    return {"error": name, "message": str(error) or name}
