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
    return canonical_text(value).encode("utf-8")
