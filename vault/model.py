"""Values the public API returns: customers and records. Reprs never show field values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .receipt import Receipt
from .schema import FieldValue

__all__ = ["Customer", "ExpiredCustomers", "Page", "Principal", "Record", "ShredExpiredResult"]

T = TypeVar("T")


class Page(list[T]):
    """A list of results and ``next``, the cursor to pass as ``after`` for the next
    page (None: this was the last page, or no ``limit`` was given)."""

    def __init__(self, items: Iterable[T] = (), next: str | None = None) -> None:
        super().__init__(items)
        self.next = next


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer's metadata. Personal data lives only in encrypted records."""

    id: str
    ref: str | None
    state: str  # "active" | "shredding" | "shredded"
    consent: Mapping[str, bool]
    retain_until: str | None
    legal_hold: bool
    created: str
    shredded: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "state": self.state,
            "consent": dict(self.consent),
            "retain_until": self.retain_until,
            "legal_hold": self.legal_hold,
            "created": self.created,
            "shredded": self.shredded,
        }


@dataclass(frozen=True, slots=True, repr=False)
class Record:
    """A decrypted record. ``fields`` holds plaintext: its repr shows names only."""

    id: str
    customer: str
    kind: str
    fields: Mapping[str, FieldValue]
    version: int
    created: str
    updated: str

    def __repr__(self) -> str:
        names = ",".join(sorted(self.fields))
        return (
            f"Record(id={self.id!r}, customer={self.customer!r}, kind={self.kind!r}, "
            f"fields=[{names}] (values redacted), version={self.version})"
        )

    __str__ = __repr__

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer,
            "kind": self.kind,
            "fields": dict(self.fields),
            "version": self.version,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True, slots=True)
class ExpiredCustomers:
    """Who ``shred_expired`` would shred now (``due``, with each one's retain-until
    time) and who it would keep because of a legal hold (``held``); ``refs`` maps each
    of them that has an application reference to it (refs are not personal data)."""

    due: dict[str, str]
    held: dict[str, str]
    refs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"due": dict(self.due), "held": dict(self.held), "refs": dict(self.refs)}


@dataclass(frozen=True, slots=True)
class ShredExpiredResult:
    """What ``shred_expired`` did: a receipt per shredded customer, the ids of customers
    past retention kept because of a legal hold, and any that failed (with why)."""

    receipts: list[Receipt]
    held: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # customer id -> error message
    #: Keys were deleted but the keystore is not yet rebuilt (another process held it
    #: open); the next open of the vault finishes the scrub.
    scrub_pending: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """A principal as listed: never its token or the token's hash."""

    name: str
    role: str
    expires: str | None
    revoked: bool
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "expires": self.expires,
            "revoked": self.revoked,
            "created": self.created,
        }
