"""Random identifiers: a prefix and 26 base32 characters (130 bits, 128 of them random)."""

from __future__ import annotations

import base64
import os
import re

__all__ = ["CUSTOMER", "RECORD", "VAULT", "is_id", "new_id", "new_ids"]

CUSTOMER = "cus_"
RECORD = "rec_"
VAULT = "vlt_"
_ID_RE = re.compile(r"^(cus|rec|vlt|bak|pkg)_[a-z2-7]{26}$")


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` fresh ids from one ``os.urandom`` call."""
    raw = os.urandom(16 * count)
    # 16 random bytes + 4 zero bytes = 20 bytes = exactly 32 base32 characters, so the
    # whole batch encodes in one call; the first 26 characters carry the 128 bits.
    pad = b"\0\0\0\0"
    text = base64.b32encode(b"".join(raw[16 * i : 16 * (i + 1)] + pad for i in range(count)))
    low = text.decode("ascii").lower()
    return [prefix + low[32 * i : 32 * i + 26] for i in range(count)]


def new_id(prefix: str) -> str:
    return new_ids(prefix, 1)[0]


def is_id(value: object, prefix: str) -> bool:
    """True if ``value`` is a well-formed id with ``prefix``."""
    return isinstance(value, str) and value.startswith(prefix) and _ID_RE.match(value) is not None
