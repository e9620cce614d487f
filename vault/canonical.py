"""Canonical JSON (DESIGN §6): UTF-8, keys sorted, no whitespace, no floats, no NaN.

For the values the vault produces (string keys in ASCII, integers below 2**53, no
floats) this is byte-identical to RFC 8785 (JCS); a property test holds it to that.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical", "canonical_text"]

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
)
# JSONEncoder.encode builds a new C encoder on every call; build it once. The settings
# are exactly those of _encoder above (which remains the fallback).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
)


def canonical_text(value: Any) -> str:
    """Canonical JSON text of ``value``."""
    if _c_encode is not None and isinstance(value, dict):
        return "".join(_c_encode(value, 0))
    return _encoder.encode(value)


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes of ``value``."""
    if type(value) is dict:
        flat = _flat_ascii(value)
        if flat is not None:
            return flat
    return canonical_text(value).encode("utf-8")


# Bytes a JSON string must escape besides '"': control characters and the backslash.
_ESCAPED = bytes(range(0x20)) + b"\\"
_SCALARS = {True: "true", False: "false", None: "null"}


def _flat_ascii(value: dict[Any, Any]) -> bytes | None:
    """:func:`canonical` of a flat object (a record's fields, most log details) whose
    keys are strings and values strings, integers, booleans or null, all ASCII with
    nothing to escape; None for anything else. The JSON encoder scans each string
    character by character; this writes them as they are, then tests the ASCII bytes
    for a stray quote, a backslash or a control character in two C passes. Either
    byte-identical to the encoder's output or None (a property test holds it to that).
    """
    try:
        keys = sorted(value)
    except TypeError:
        return None
    quotes = 0
    out = []
    for key in keys:
        if type(key) is not str:
            return None
        item = value[key]
        kind = type(item)
        if kind is str:
            out.append(f'"{key}":"{item}"')
            quotes += 4
        elif kind is int:
            out.append(f'"{key}":{int.__repr__(item)}')
            quotes += 2
        elif kind is bool or item is None:
            out.append(f'"{key}":{_SCALARS[item]}')
            quotes += 2
        else:
            return None
    try:
        data = ("{" + ",".join(out) + "}").encode("ascii")
    except UnicodeEncodeError:
        return None
    if data.count(b'"') != quotes or len(data.translate(None, _ESCAPED)) != len(data):
        return None
    return data
