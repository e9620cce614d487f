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

import base64
import binascii
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sized
from datetime import UTC, date, datetime, time
from typing import Any, BinaryIO

from . import ids
from .clock import format_ts
from .errors import NotFoundError, SchemaError, VerificationError

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_BATCH",
    "MAX_DAYS",
    "MAX_DOCUMENT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
    "MAX_PAGE",
    "MAX_REASON",
    "MAX_REF",
    "MOMENT_HELP",
    "check_backup_id",
    "check_batch",
    "check_batch_size",
    "check_customer_id",
    "check_days",
    "check_known",
    "check_limit",
    "check_reason",
    "check_record_id",
    "check_ref",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "load_json_document",
    "malformed",
    "moment_text",
    "parse_json",
    "parse_moment",
    "read_lines",
    "suggest",
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


def read_lines(
    handle: BinaryIO,
    *,
    what: str,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    fail: Callable[[str], Exception] = malformed,
) -> Iterator[bytes]:
    """The lines of a file from outside (a log export), each with its newline, read at
    most ``max_bytes`` + 1 bytes at a time: a line longer than ``max_bytes`` (a file
    of one endless line) is ``fail(message)`` naming the line's number, not read into
    memory whole."""
    number = 0
    while True:
        line = handle.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not (len(line) == max_bytes + 1 and line.endswith(b"\n")):
            raise fail(f"{what}: line {number} is longer than {max_bytes:,} bytes")
        yield line


#: records in one put_many / get_many
MAX_BATCH = 10_000
#: characters in an application reference
MAX_REF = 200
#: characters in a shred or decommission reason (logged: no personal data)
MAX_REASON = 500


#: the range of dates and times accepted as input (retention, expiries, windows)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
#: a number of days given as input (backup expiry, DEK age): up to 1,000 years
MAX_DAYS = 365_250.0

MOMENT_HELP = "a date (YYYY-MM-DD, 00:00 UTC) or an RFC 3339 time (2027-01-31T12:00:00Z)"


def parse_moment(value: object, *, what: str = "a time") -> datetime:
    """The one date/time parser for every option and API argument: a plain date
    ``YYYY-MM-DD`` (00:00 UTC that day), an RFC 3339 date-time with ``Z`` or an offset,
    or a timezone-aware ``datetime``; between :data:`EARLIEST` and :data:`LATEST`.
    Anything else is a :class:`SchemaError` naming ``what`` (never the value)."""
    moment: datetime | None = None
    try:
        if isinstance(value, datetime):
            moment = value if value.tzinfo is not None else None
        elif isinstance(value, str) and 10 <= len(value) <= 40 and value.isascii():
            if len(value) == 10:
                moment = datetime.combine(date.fromisoformat(value), time(0), tzinfo=UTC)
            elif value[10] in "Tt " and (value[-1] in "Zz" or value[-6] in "+-"):
                parsed = datetime.fromisoformat(
                    value[:-1] + "+00:00" if value[-1] in "Zz" else value
                )
                moment = parsed if parsed.tzinfo is not None else None
        if moment is not None:
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise SchemaError(f"{what} must be {MOMENT_HELP}")
    if not EARLIEST <= moment < LATEST:
        raise SchemaError(f"{what} must lie between 1970-01-01 and 9999-01-01")
    return moment


def moment_text(value: object, *, what: str = "a time") -> str:
    """:func:`parse_moment` as the log stores times: fixed-width RFC 3339 UTC, so text
    order is time order."""
    return format_ts(parse_moment(value, what=what))


def check_days(value: object, *, what: str = "days", allow_zero: bool = False) -> float:
    """A number of days: finite, positive (or zero with ``allow_zero``), at most
    :data:`MAX_DAYS`; a :class:`SchemaError` otherwise (``nan``, ``inf``, ``1e308``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{what} must be a number of days")
    days = float(value)
    low_ok = days >= 0 if allow_zero else days > 0
    if not (math.isfinite(days) and low_ok and days <= MAX_DAYS):
        bound = "0" if allow_zero else "more than 0"
        raise SchemaError(f"{what} must be a number of days, {bound} and at most {MAX_DAYS:,.0f}")
    return days


def suggest(name: object, known: Iterable[str]) -> str:
    """``" (did you mean a, b?)"`` with the closest of ``known`` to ``name``, or ``""``."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_known(what: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Every one of ``names`` is in ``known``, else a :class:`SchemaError` naming the
    unknown ones with the closest known names: a typo must not pass silently (a role
    for kind ``profil`` that matches nothing, a query for ``record.gett`` that answers
    "nobody")."""
    known_set = set(known)
    unknown = [n for n in dict.fromkeys(names) if n not in known_set]
    if unknown:
        shown = ", ".join(f"{str(n)[:64]!r}{suggest(n, known_set)}" for n in unknown)
        raise SchemaError(f"unknown {what}: {shown}")


def check_text(value: object, what: str, *, max_chars: int) -> str:
    """A string of 1 to ``max_chars`` characters, not blank, that is valid Unicode
    (no lone surrogate, which undecodable bytes become) and holds no NUL; a
    :class:`SchemaError` otherwise, checked before anything is written."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise SchemaError(f"{what} is 1-{max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{what} is not valid Unicode text") from None
    if "\x00" in value:
        raise SchemaError(f"{what} holds a NUL character")
    return value


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


def check_batch_size(value: object) -> int:
    """How many items one transaction takes: an integer from 1 to :data:`MAX_BATCH`
    (:class:`SchemaError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BATCH:
        raise SchemaError(f"a batch size is an integer from 1 to {MAX_BATCH}")
    return value


def check_ref(ref: object) -> str | None:
    """An application reference: None or a string of 1 to :data:`MAX_REF` characters
    of valid Unicode text."""
    if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF):
        raise SchemaError(f"ref must be a string of 1-{MAX_REF} characters")
    return None if ref is None else check_text(ref, "ref", max_chars=MAX_REF)


def check_reason(reason: object) -> str:
    """A reason to log: 1 to :data:`MAX_REASON` characters, not blank
    (:class:`SchemaError` otherwise)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise SchemaError(f"a shred reason is 1-{MAX_REASON} characters (no personal data)")
    return check_text(reason, "a shred reason", max_chars=MAX_REASON)


def check_backup_id(value: object) -> str:
    """``value`` if it is a backup id, else :class:`NotFoundError` (never a lookup)."""
    if not ids.is_id(value, "bak_"):
        raise NotFoundError("not a backup id (expected bak_ and 26 base32 characters)")
    return value  # type: ignore[return-value]


def load_json_document(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON object (a receipt, a certificate) from a file through the input
    layer's parser (:func:`.inputs.parse_json`); raises VerificationError
    (``malformed``) if it cannot be read, is over the limits or is not an object."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise malformed(f"cannot read {what} {path}: {error.strerror}") from None
    raw = parse_json(data, what=f"{what} {path}", max_bytes=MAX_DOCUMENT_BYTES, fail=malformed)
    if not isinstance(raw, dict):
        raise VerificationError(f"a {what} is a JSON object", reason="malformed")
    return raw


#: the most items one page may hold (``limit``)
MAX_PAGE = 1000
_MAX_CURSOR = 400


def check_limit(limit: object) -> int | None:
    """A page size: None (everything) or an int from 1 to :data:`MAX_PAGE`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE:
        raise SchemaError(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return limit


def encode_cursor(*parts: str | int) -> str:
    """An opaque page cursor: base64url (no padding) of the JSON array of the sort key
    of the last item returned (docs/customers.md, "Paging")."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object, shape: tuple[type, ...]) -> list[Any]:
    """The sort key in a cursor from :func:`encode_cursor`, checked against ``shape``
    (the type of each part); :class:`SchemaError` for anything else."""
    bad = SchemaError("after is not a cursor that this listing returned")
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, binascii.Error):
        raise bad from None
    parts = parse_json(raw, what="after", fail=lambda _message: bad)
    if not isinstance(parts, list) or len(parts) != len(shape):
        raise bad
    for part, kind in zip(parts, shape, strict=True):
        if isinstance(part, bool) or not isinstance(part, kind):
            raise bad
        if isinstance(part, str) and not 0 < len(part) <= 64:
            raise bad
    return parts
