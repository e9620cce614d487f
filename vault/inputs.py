"""The input layer: arguments checked where they enter, so inner code trusts them.

Ids, batch sizes and application references are checked here once; names (kinds,
fields, purposes, principals, roles) by :func:`.schema.check_name`.
"""

from __future__ import annotations

from collections.abc import Sized

from . import ids
from .errors import NotFoundError, SchemaError

__all__ = [
    "MAX_BATCH",
    "MAX_REASON",
    "MAX_REF",
    "check_backup_id",
    "check_batch",
    "check_customer_id",
    "check_reason",
    "check_record_id",
    "check_ref",
]

#: records in one put_many / get_many
MAX_BATCH = 10_000
#: characters in an application reference
MAX_REF = 200
#: characters in a shred or decommission reason (logged: no personal data)
MAX_REASON = 500


def check_customer_id(value: object) -> str:
    """``value`` if it is a customer id, else :class:`NotFoundError` (never a lookup)."""
    if not ids.is_id(value, ids.CUSTOMER):
        raise NotFoundError("not a customer id (expected cus_ and 26 base32 characters)")
    return value  # type: ignore[return-value]


def check_record_id(value: object) -> str:
    """``value`` if it is a record id, else :class:`NotFoundError` (never a lookup)."""
    if not ids.is_id(value, ids.RECORD):
        raise NotFoundError("not a record id (expected rec_ and 26 base32 characters)")
    return value  # type: ignore[return-value]


def check_batch(items: Sized) -> None:
    """A batch holds 1 to :data:`MAX_BATCH` items (:class:`SchemaError` otherwise)."""
    if not 0 < len(items) <= MAX_BATCH:
        raise SchemaError(f"a batch holds 1 to {MAX_BATCH} records")


def check_ref(ref: object) -> str | None:
    """An application reference: None or a string of 1 to :data:`MAX_REF` characters."""
    if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF):
        raise SchemaError(f"ref must be a string of 1-{MAX_REF} characters")
    return ref


def check_reason(reason: object) -> str:
    """A reason to log: 1 to :data:`MAX_REASON` characters, not blank
    (:class:`SchemaError` otherwise)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise SchemaError(f"a shred reason is 1-{MAX_REASON} characters (no personal data)")
    return reason


def check_backup_id(value: object) -> str:
    """``value`` if it is a backup id, else :class:`NotFoundError` (never a lookup)."""
    if not ids.is_id(value, "bak_"):
        raise NotFoundError("not a backup id (expected bak_ and 26 base32 characters)")
    return value  # type: ignore[return-value]
