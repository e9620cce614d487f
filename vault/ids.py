"""Random identifiers: a prefix and 26 base32 characters (130 random bits)."""

from __future__ import annotations

import os
import re

__all__ = [
    "CONSENT",
    "CUSTOMER",
    "NOTICE",
    "RECORD",
    "REQUEST",
    "VAULT",
    "is_id",
    "new_id",
    "new_ids",
]

CUSTOMER = "cus_"
RECORD = "rec_"
VAULT = "vlt_"
REQUEST = "req_"
NOTICE = "ntc_"
CONSENT = "cns_"
_ID_RE = re.compile(r"^(cus|rec|vlt|bak|pkg|req|ntc|cns)_[a-z2-7]{26}$")


# Each random byte picks one of 32 characters by its low 5 bits: 256 is a multiple of
# 32, so every character is equally likely and 26 of them carry 130 random bits.
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz234567"
_TO_BASE32 = bytes(_ALPHABET[b & 31] for b in range(256))


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` fresh ids from one ``os.urandom`` call, mapped to base32 in C."""
    text = os.urandom(26 * count).translate(_TO_BASE32).decode("ascii")
    return [prefix + text[26 * i : 26 * (i + 1)] for i in range(count)]


def new_id(prefix: str) -> str:
    return new_ids(prefix, 1)[0]


def is_id(value: object, prefix: str) -> bool:
    """True if ``value`` is a well-formed id with ``prefix``."""
    return (
        isinstance(value, str) and value.startswith(prefix) and _ID_RE.fullmatch(value) is not None
    )
