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


def canonical_text(value: Any) -> str:
    """Canonical JSON text of ``value``."""
    return _encoder.encode(value)


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes of ``value``."""
    return _encoder.encode(value).encode("utf-8")
