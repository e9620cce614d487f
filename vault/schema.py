"""Declared record kinds (minimal collection, DESIGN §5) and field validation.

Each kind names the fields it may hold and the purposes it may be used for. Anything
undeclared is refused with :class:`~vault.errors.SchemaError` before a byte is stored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import canonical
from .errors import PurposeError, SchemaError
from .inputs import suggest
from .normalize import NORMALIZERS

__all__ = [
    "MAX_FIELD_BYTES",
    "MAX_RECORD_BYTES",
    "FieldValue",
    "KindSpec",
    "check_name",
    "encode_fields",
    "removed_by_update",
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
    """A declared kind: its allowed fields and purposes. ``deprecated`` fields (a
    subset of ``fields``) are still read, and removed by an update setting them to
    None, but no longer written (docs/kinds.md). ``searchable``: sorted pairs
    ``(field, normalizer)`` of the fields found by exact match (docs/search.md)."""

    name: str
    fields: frozenset[str]
    purposes: frozenset[str]
    deprecated: frozenset[str] = frozenset()
    searchable: tuple[tuple[str, str], ...] = ()

    def normalizer(self, field: str) -> str | None:
        """The normalizer of a searchable field; None when the field is not searchable."""
        for name, normalizer in self.searchable:
            if name == field:
                return normalizer
        return None

    @property
    def writable(self) -> frozenset[str]:
        """The fields a put or an update may set."""
        return self.fields - self.deprecated

    @classmethod
    def from_json(cls, name: str, raw: Mapping[str, Any]) -> KindSpec:
        """The spec as stored (``to_json``; no ``deprecated`` or ``searchable`` member
        means none)."""
        return cls(
            name,
            frozenset(raw["fields"]),
            frozenset(raw["purposes"]),
            frozenset(raw.get("deprecated", ())),
            tuple(sorted(dict(raw.get("searchable", {})).items())),
        )

    def altered(
        self,
        *,
        add_fields: Iterable[str] = (),
        deprecate_fields: Iterable[str] = (),
        add_purposes: Iterable[str] = (),
        add_searchable: Mapping[str, str] | None = None,
        drop_searchable: Iterable[str] = (),
    ) -> KindSpec:
        """This kind with fields added (a deprecated one becomes writable again),
        fields deprecated, purposes added, fields made searchable (field -> normalizer)
        or no longer searchable. :class:`SchemaError` for a bad or unknown name or
        normalizer, a field both added and deprecated (or made searchable and not), no
        writable field left, or no change."""
        for given in (add_fields, deprecate_fields, add_purposes, drop_searchable):
            if isinstance(given, str):
                raise SchemaError("fields and purposes must be lists of names, not one string")
        add = frozenset(check_name("field", f) for f in add_fields)
        drop = frozenset(check_name("field", f) for f in deprecate_fields)
        more = frozenset(check_name("purpose", p) for p in add_purposes)
        if add & drop:
            raise SchemaError(f"field(s) {', '.join(sorted(add & drop))} both added and deprecated")
        unknown = drop - self.fields
        if unknown:
            shown = ", ".join(f"{f}{suggest(f, self.fields)}" for f in sorted(unknown))
            raise SchemaError(f"field(s) {shown} not declared for kind {self.name!r}")
        deprecated = (self.deprecated - add) | drop
        fields = self.fields | add
        if not fields - deprecated:
            raise SchemaError(f"kind {self.name!r} must keep at least one writable field")
        search = dict(self.searchable)
        unsearch = frozenset(check_name("field", f) for f in drop_searchable)
        made = _searchable(self.name, fields, add_searchable or {})
        if unsearch & made.keys():
            both = ", ".join(sorted(unsearch & made.keys()))
            raise SchemaError(f"field(s) {both} both made searchable and not")
        missing = sorted(unsearch - search.keys())
        if missing:
            raise SchemaError(
                f"field(s) {', '.join(missing)} of kind {self.name!r} are not searchable"
            )
        search = {f: n for f, n in {**search, **made}.items() if f not in unsearch}
        searchable = tuple(sorted(search.items()))
        new = KindSpec(self.name, fields, self.purposes | more, deprecated, searchable)
        if new == self:
            raise SchemaError(f"the change leaves kind {self.name!r} as it is")
        return new

    @classmethod
    def build(
        cls,
        name: str,
        fields: Iterable[str],
        purposes: Iterable[str],
        searchable: Mapping[str, str] | None = None,
    ) -> KindSpec:
        """A new kind. :class:`SchemaError` for a bad name, no field or purpose, or a
        searchable field the kind does not declare or whose normalizer is unknown."""
        if isinstance(fields, str) or isinstance(purposes, str):
            raise SchemaError("fields and purposes must be lists of names, not one string")
        check_name("kind", name)
        field_set = frozenset(check_name("field", f) for f in fields)
        purpose_set = frozenset(check_name("purpose", p) for p in purposes)
        if not field_set:
            raise SchemaError(f"kind {name!r} must declare at least one field")
        if not purpose_set:
            raise SchemaError(f"kind {name!r} must declare at least one purpose")
        search = _searchable(name, field_set, searchable or {})
        return cls(name, field_set, purpose_set, searchable=tuple(sorted(search.items())))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fields": sorted(self.fields), "purposes": sorted(self.purposes)}
        if self.deprecated:
            out["deprecated"] = sorted(self.deprecated)
        if self.searchable:
            out["searchable"] = dict(self.searchable)
        return out

    def check_purpose(self, purpose: str) -> None:
        if purpose not in self.purposes:
            raise PurposeError(
                f"purpose {purpose!r} is not declared for kind {self.name!r} "
                f"(declared: {', '.join(sorted(self.purposes))})"
            )


def _searchable(kind: str, fields: Collection[str], given: Mapping[str, str]) -> dict[str, str]:
    """``given`` (field -> normalizer) checked: declared fields, known normalizers."""
    if not isinstance(given, Mapping):
        raise SchemaError("searchable fields must be a mapping of field name to normalizer")
    out = {}
    for field, normalizer in given.items():
        check_name("field", field)
        if field not in fields:
            shown = f"{field}{suggest(field, fields)}"
            raise SchemaError(f"searchable field {shown} is not declared for kind {kind!r}")
        if not isinstance(normalizer, str) or normalizer not in NORMALIZERS:
            known = ", ".join(sorted(NORMALIZERS))
            shown = (
                repr(normalizer) if isinstance(normalizer, str) and len(normalizer) <= 40 else "?"
            )
            raise SchemaError(f"unknown normalizer {shown} for field {field} (known: {known})")
        out[field] = normalizer
    return out


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


def removed_by_update(
    spec: KindSpec, fields: Mapping[str, object], held: Collection[str]
) -> frozenset[str]:
    """The fields an update removes: those set to None that are no longer writable
    (deprecated, or dropped from the kind) and that the record ``held`` or the kind
    still declares. Raises :class:`SchemaError` for any other write of such a field."""
    if not isinstance(fields, Mapping):
        raise SchemaError("record fields must be a mapping of field name to value")
    return frozenset(
        k
        for k, v in fields.items()
        if v is None and k not in spec.writable and (k in held or k in spec.deprecated)
    )


def encode_fields(
    spec: KindSpec, fields: Mapping[str, object], *, kept: Collection[str] = ()
) -> bytes:
    """Validate ``fields`` against ``spec`` and return their canonical JSON plaintext.
    Only writable fields may appear, and ``kept`` ones: fields an update carries over
    unchanged from the stored record (deprecated, or dropped from the kind since).

    Raises :class:`SchemaError` naming the offending field (never its value).
    """
    if not isinstance(fields, Mapping):
        raise SchemaError("record fields must be a mapping of field name to value")
    declared = spec.fields
    if not declared.issuperset(fields):
        undeclared = [k for k in fields if k not in declared and k not in kept]
        if undeclared:
            shown = ", ".join(sorted(f"{str(k)[:64]}{suggest(k, declared)}" for k in undeclared))
            raise SchemaError(f"field(s) {shown} not declared for kind {spec.name!r}")
    frozen = (
        sorted(k for k in fields if k in spec.deprecated and k not in kept)
        if spec.deprecated
        else None
    )
    if frozen:
        raise SchemaError(
            f"field(s) {', '.join(frozen)} of kind {spec.name!r} are deprecated: they are "
            "read, and removed by an update setting them to None, but not written"
        )
    for name, value in fields.items():
        if type(value) is str and len(value) <= MAX_FIELD_BYTES // 6:
            continue  # the common case: nothing to check (see below)
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
