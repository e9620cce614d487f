"""The input layer: arguments and files checked where they enter, so inner code
trusts them.

Ids, batch sizes and application references are checked here once; names (kinds,
fields, purposes, principals, roles) by :func:`.schema.check_name`. Every JSON
document that comes from outside (a receipt, certificate, anchor, log export line,
backup manifest, handover package, stdin) is parsed by :func:`parse_json`, with
limits: size, nesting depth, integer digits, finite numbers only, no duplicate keys,
valid UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sized
from typing import Any

from . import ids
from .errors import NotFoundError, SchemaError, VerificationError

__all__ = [
    "MAX_BATCH",
    "MAX_DOCUMENT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
    "MAX_REASON",
    "MAX_REF",
    "check_batch",
    "check_customer_id",
    "check_reason",
    "check_record_id",
    "check_ref",
    "malformed",
    "parse_json",
]

#: bytes in a small document from outside: a receipt, certificate, anchor, manifest,
#: export header or checkpoint line (a real one is a few KiB)
MAX_DOCUMENT_BYTES = 1 << 20
#: bytes in one JSON document read from outside, unless the caller says less
MAX_JSON_BYTES = 64 << 20
#: nesting of arrays and objects (no document of ours nests deeper than 6)
MAX_JSON_DEPTH = 32
#: digits of a JSON integer (a signed 64-bit integer has at most 19)
MAX_JSON_INT_DIGITS = 19

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NESTING = re.compile(rb"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Refused(ValueError):
    """A JSON value outside the limits (the message says which; never the value)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _Refused("an object has the same key twice")
    return document


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON allows")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _Refused(f"an integer has more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 64:
        raise _Refused("a number is too long")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number is out of range")
    return value


def _valid_text(value: Any) -> bool:
    """No string (key or value) holds a lone surrogate (from a ``\\udXXX`` escape)."""
    if isinstance(value, str):
        return not any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return all(_valid_text(item) for item in value)
    if isinstance(value, dict):
        return all(_valid_text(k) and _valid_text(v) for k, v in value.items())
    return True


def malformed(message: str) -> VerificationError:
    """The error for a file to verify that is not a well-formed document (exit 5);
    pass it as ``fail`` to :func:`parse_json`."""
    return VerificationError(message, reason="malformed")


def _too_deep(data: bytes, limit: int) -> bool:
    depth = 0
    for match in _JSON_NESTING.finditer(_JSON_STRING.sub(b"", data)):
        depth += 1 if match.group() in b"[{" else -1
        if depth > limit:
            return True
    return False


def parse_json(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    fail: Callable[[str], Exception] = SchemaError,
) -> Any:
    """The one JSON parser for input from outside: ``data`` as one JSON value, or
    ``fail(message)`` raised (a :class:`SchemaError` unless the caller names another
    error, e.g. a ``malformed`` VerificationError). ``what`` names the input in the
    one-line message, which never quotes the input.

    Refused: more than ``max_bytes`` bytes, invalid UTF-8 (or a lone surrogate),
    nesting deeper than ``max_depth``, an integer of more than
    :data:`MAX_JSON_INT_DIGITS` digits, NaN, Infinity or a float out of range, an
    object with a duplicate key, and anything that is not exactly one JSON value."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(f"{what} is not valid Unicode text") from None
    if len(data) > max_bytes:
        raise fail(f"{what} is larger than {max_bytes:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{what} is not valid UTF-8") from None
    if _too_deep(data, max_depth):
        raise fail(f"{what} nests deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except _Refused as error:
        raise fail(f"{what} is refused: {error}") from None
    except json.JSONDecodeError as error:
        # The decoder's message names a position, never the text.
        raise fail(f"{what} is not valid JSON: {error.msg} at byte {error.pos}") from None
    except (ValueError, RecursionError):
        raise fail(f"{what} is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(data) and not _valid_text(value):
        raise fail(f"{what} is refused: a string escapes half of a UTF-16 surrogate pair")
    return value


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
