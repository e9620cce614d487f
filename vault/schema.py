"""Declared record kinds (minimal collection, DESIGN §5) and field validation.

Each kind names the fields it may hold and the purposes it may be used for. Anything
undeclared is refused with :class:`~vault.errors.SchemaError` before a byte is stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import canonical
from .errors import PurposeError, SchemaError
from .inputs import suggest

__all__ = [
    "MAX_FIELD_BYTES",
    "MAX_RECORD_BYTES",
    "FieldValue",
    "KindSpec",
    "check_name",
    "encode_fields",
]

MAX_FIELD_BYTES = 64 * 1024
MAX_RECORD_BYTES = 1024 * 1024
_MAX_INT = 2**53 - 1  # canonical JSON must equal RFC 8785, which counts in doubles
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")

FieldValue = str | int | bool | None | list[str | int | bool | None]


def check_name(what: str, name: object) -> str:
    """Validate a kind, field or purpose name: lowercase ASCII, digits, ``_``/``-``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SchemaError(
            f"{what} name must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a "
            f"letter; got {name!r}"
            if isinstance(name, str) and len(name) <= 80
            else f"{what} name is not a valid name"
        )
    return name


@dataclass(frozen=True, slots=True)
class KindSpec:
    """A declared kind: its allowed fields and purposes."""

    name: str
    fields: frozenset[str]
    purposes: frozenset[str]

    @classmethod
    def build(cls, name: str, fields: Iterable[str], purposes: Iterable[str]) -> KindSpec:
        if isinstance(fields, str) or isinstance(purposes, str):
            raise SchemaError("fields and purposes must be lists of names, not one string")
        check_name("kind", name)
        field_set = frozenset(check_name("field", f) for f in fields)
        purpose_set = frozenset(check_name("purpose", p) for p in purposes)
        if not field_set:
            raise SchemaError(f"kind {name!r} must declare at least one field")
        if not purpose_set:
            raise SchemaError(f"kind {name!r} must declare at least one purpose")
        return cls(name, field_set, purpose_set)

    def to_json(self) -> dict[str, Any]:
        return {"fields": sorted(self.fields), "purposes": sorted(self.purposes)}

    def check_purpose(self, purpose: str) -> None:
        if purpose not in self.purposes:
            raise PurposeError(
                f"purpose {purpose!r} is not declared for kind {self.name!r} "
                f"(declared: {', '.join(sorted(self.purposes))})"
            )


def _check_value(kind: str, name: str, value: object) -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if -_MAX_INT <= value <= _MAX_INT:
            return
        raise SchemaError(f"field {kind}.{name}: integers must lie within ±(2**53-1)")
    if isinstance(value, list):
        for item in value:
            if isinstance(item, list):
                raise SchemaError(f"field {kind}.{name}: lists may not nest")
            _check_value(kind, name, item)
        return
    raise SchemaError(
        f"field {kind}.{name}: values must be str, int, bool, None or a list of those, "
        f"not {type(value).__name__}"
    )


def encode_fields(spec: KindSpec, fields: Mapping[str, object]) -> bytes:
    """Validate ``fields`` against ``spec`` and return their canonical JSON plaintext.

    Raises :class:`SchemaError` naming the offending field (never its value).
    """
    if not isinstance(fields, Mapping):
        raise SchemaError("record fields must be a mapping of field name to value")
    undeclared = [k for k in fields if k not in spec.fields]
    if undeclared:
        shown = ", ".join(sorted(f"{str(k)[:64]}{suggest(k, spec.fields)}" for k in undeclared))
        raise SchemaError(f"field(s) {shown} not declared for kind {spec.name!r}")
    for name, value in fields.items():
        _check_value(spec.name, name, value)
        # JSON escaping can take 6 bytes per character (\u0001), so measure any string
        # that could reach the limit once escaped.
        big = (isinstance(value, str) and len(value) > MAX_FIELD_BYTES // 6) or isinstance(
            value, list
        )
        if big and len(canonical(value)) > MAX_FIELD_BYTES:
            raise SchemaError(f"field {spec.name}.{name} exceeds {MAX_FIELD_BYTES} bytes")
    try:
        plaintext = canonical(fields)
    except UnicodeEncodeError:
        raise SchemaError(
            f"record of kind {spec.name!r} holds text that is not valid Unicode"
        ) from None
    if len(plaintext) > MAX_RECORD_BYTES:
        raise SchemaError(f"record of kind {spec.name!r} exceeds {MAX_RECORD_BYTES} bytes")
    return plaintext
