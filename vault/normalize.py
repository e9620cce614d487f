"""The normalizers of searchable fields: a fixed, documented set (docs/search.md).

A searchable field names one normalizer. A value is indexed, and a query compared, by
its normalized form, so two spellings of the same phone number or e-mail address find
each other. The set is part of the index format: a normalizer never changes meaning;
a new rule gets a new name.

* ``exact``: Unicode NFC, nothing else (names, ids: equal text finds equal text);
* ``email``: NFKC, surrounding white space removed, Unicode case folding, NFKC again
  (``" Ann@Example.ORG"`` and ``"ann@example.org"`` are one value);
* ``digits``: NFKC (full-width digits become ASCII), then only the ASCII digits, with
  a ``+`` in front when the value's first non-space character is ``+``
  (``"+1 (555) 010-9999"`` is ``"+15550109999"``, ``"555.010.9999"`` is
  ``"5550109999"``).

A value whose normalized form is empty (no digit at all, only white space) is not
indexed and cannot be searched for.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from types import MappingProxyType

__all__ = ["NORMALIZERS", "normalize"]


def _exact(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _email(value: str) -> str:
    folded = unicodedata.normalize("NFKC", value).strip().casefold()
    return unicodedata.normalize("NFKC", folded)


def _digits(value: str) -> str:
    text = unicodedata.normalize("NFKC", value)
    digits = "".join(c for c in text if "0" <= c <= "9")
    if digits and text.lstrip().startswith("+"):
        return "+" + digits
    return digits


#: every normalizer by name, and what it does
NORMALIZERS: Mapping[str, Callable[[str], str]] = MappingProxyType(
    {"digits": _digits, "email": _email, "exact": _exact}
)


def normalize(name: str, value: str) -> str:
    """``value`` in the normalized form of the normalizer ``name`` (one of
    :data:`NORMALIZERS`; a KeyError otherwise, which declared kinds never give)."""
    return NORMALIZERS[name](value)
