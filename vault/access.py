"""Access control (DESIGN §6): roles, principals' tokens, and the decisions.

Deny by default. A role allows *actions* (``read``, ``write``, ``delete``, ``list``,
``shred``, ``export``, ``audit``, ``admin``) on *kinds*, per-kind *fields* and
*purposes*, optionally until an expiry. ``None`` in a role means "every declared one".
Every decision is logged by the caller: allowed accesses as the access itself,
denials with outcome ``denied`` and a reason code (never the requested values).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SchemaError
from .inputs import moment_text
from .schema import check_name

__all__ = [
    "ACTIONS",
    "BUILTIN_ROLES",
    "Role",
    "new_token",
    "normalize_expiry",
    "split_token",
]

ACTIONS = frozenset({"read", "write", "delete", "list", "shred", "export", "audit", "admin"})
_TOKEN_PREFIX = "svp_"  # noqa: S105 - a public prefix, not a secret
_LOOKUP_LEN = 12


@dataclass(frozen=True, slots=True)
class Role:
    """What a role may do. ``kinds``/``purposes``/``fields`` of ``None`` mean all."""

    name: str
    actions: frozenset[str]
    kinds: frozenset[str] | None = None
    fields: Mapping[str, frozenset[str]] | None = None
    purposes: frozenset[str] | None = None
    expires: str | None = None
    builtin: bool = False

    @classmethod
    def build(
        cls,
        name: str,
        *,
        actions: Iterable[str],
        kinds: Iterable[str] | None = None,
        fields: Iterable[str] | None = None,
        purposes: Iterable[str] | None = None,
        expires: str | None = None,
    ) -> Role:
        """Validate a custom role; ``fields`` are ``kind.field`` names."""
        check_name("role", name)
        if name in BUILTIN_ROLES:
            raise SchemaError(f"{name!r} is a built-in role")
        action_set = frozenset(actions)
        unknown = action_set - ACTIONS
        if unknown:
            raise SchemaError(
                f"unknown action(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(sorted(ACTIONS))}"
            )
        if "admin" in action_set:
            raise SchemaError("custom roles cannot hold the admin action; use the admin role")
        field_map: dict[str, set[str]] | None = None
        if fields is not None:
            field_map = {}
            for dotted in fields:
                kind, _, field = dotted.partition(".")
                if not field:
                    raise SchemaError(f"fields are named kind.field, got {dotted!r}")
                field_map.setdefault(check_name("kind", kind), set()).add(
                    check_name("field", field)
                )
        kind_set = None if kinds is None else frozenset(check_name("kind", k) for k in kinds)
        if kind_set is not None and field_map is not None and not set(field_map) <= kind_set:
            raise SchemaError("every kind named in fields must also be in kinds")
        return cls(
            name=name,
            actions=action_set,
            kinds=kind_set,
            fields=None if field_map is None else {k: frozenset(v) for k, v in field_map.items()},
            purposes=None
            if purposes is None
            else frozenset(check_name("purpose", p) for p in purposes),
            expires=normalize_expiry(expires),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "actions": sorted(self.actions),
            "kinds": None if self.kinds is None else sorted(self.kinds),
            "fields": None
            if self.fields is None
            else sorted(f"{k}.{f}" for k, fs in self.fields.items() for f in fs),
            "purposes": None if self.purposes is None else sorted(self.purposes),
            "expires": self.expires,
            "builtin": self.builtin,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Role:
        fields = raw.get("fields")
        field_map: dict[str, set[str]] | None = None
        if fields is not None:
            field_map = {}
            for dotted in fields:
                kind, _, field = str(dotted).partition(".")
                field_map.setdefault(kind, set()).add(field)
        return cls(
            name=str(raw["name"]),
            actions=frozenset(raw["actions"]),
            kinds=None if raw.get("kinds") is None else frozenset(raw["kinds"]),
            fields=None if field_map is None else {k: frozenset(v) for k, v in field_map.items()},
            purposes=None if raw.get("purposes") is None else frozenset(raw["purposes"]),
            expires=normalize_expiry(raw.get("expires")),
        )

    def denial(
        self, action: str, *, now: str, kind: str | None = None, purpose: str | None = None
    ) -> str | None:
        """The reason code this role may not do ``action`` (on ``kind`` for ``purpose``),
        or None when it may. Field checks are separate (:meth:`readable_fields`)."""
        if self.expires is not None and now >= self.expires:
            return "role_expired"
        if action not in self.actions and "admin" not in self.actions:
            return "action_not_allowed"
        if kind is not None and self.kinds is not None and kind not in self.kinds:
            return "kind_not_allowed"
        if purpose is not None and self.purposes is not None and purpose not in self.purposes:
            return "purpose_not_allowed"
        return None

    def fields_for(self, kind: str) -> frozenset[str] | None:
        """The fields of ``kind`` this role may see or write; None = every field."""
        if self.fields is None:
            return None
        return self.fields.get(kind)  # kinds the map does not name keep every field

    def visible(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The decrypted ``fields`` of a ``kind`` record, with only those this role may
        see (the very dict when it may see all of them)."""
        allowed = self.fields_for(kind)
        if allowed is None or allowed.issuperset(fields):
            return fields
        return {k: v for k, v in fields.items() if k in allowed}

    def withholds(self, kind: str, declared_purposes: Iterable[str]) -> str | None:
        """Why no record of ``kind`` (declared for ``declared_purposes``) is this role's
        to see or destroy where an operation has no purpose of its own (the subject
        access report, a shred), or None when it is: ``kind_not_allowed`` outside its
        kinds, ``purpose_not_allowed`` when it is limited to purposes the kind is not
        declared for."""
        if self.kinds is not None and kind not in self.kinds:
            return "kind_not_allowed"
        if self.purposes is not None and self.purposes.isdisjoint(declared_purposes):
            return "purpose_not_allowed"
        return None

    def narrowed(self) -> str | None:
        """Why an operation on the whole vault (a backup) refuses this role: it is
        limited to some kinds, fields or purposes; None when it is not limited."""
        if self.kinds is not None:
            return "kind_not_allowed"
        if self.fields is not None:
            return "field_not_allowed"
        if self.purposes is not None:
            return "purpose_not_allowed"
        return None


def normalize_expiry(value: object) -> str | None:
    """An expiry as fixed-width RFC 3339 UTC (so text order is time order), or None.
    Accepts what the input layer's one date parser does (:func:`.inputs.parse_moment`:
    a plain date, an RFC 3339 time, a timezone-aware datetime)."""
    return None if value is None else moment_text(value, what="an expiry")


BUILTIN_ROLES: dict[str, Role] = {
    "admin": Role("admin", frozenset(ACTIONS), builtin=True),
    "operator": Role("operator", frozenset({"read", "write", "delete", "list"}), builtin=True),
    "auditor": Role("auditor", frozenset({"list", "audit"}), builtin=True),
}


def new_token() -> tuple[str, str]:
    """A fresh principal token and its public lookup id. The token carries 256 random
    bits after the lookup id; only its verifier is stored, which the key ring makes and
    checks (``KeyRing.token_mac``, ``KeyRing.token_matches``: HMAC-SHA-256 under a key
    the data store never sees)."""
    lookup = secrets.token_hex(_LOOKUP_LEN // 2)
    return f"{_TOKEN_PREFIX}{lookup}_{secrets.token_urlsafe(32)}", lookup


def split_token(token: str) -> str | None:
    """The lookup id of a well-formed token, else None."""
    if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIX) or len(token) > 200:
        return None
    lookup, sep, secret = token[len(_TOKEN_PREFIX) :].partition("_")
    if not sep or len(lookup) != _LOOKUP_LEN or not secret:
        return None
    return lookup
