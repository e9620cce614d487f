"""A principal's view of the vault: every public method is one short call into an
operation, with this session's context and actor (:mod:`.actor` holds the gate).

Each call is one or more logged transactions: the actor's role is re-read, checked
for the action, kind and purpose, and only then is data touched; a denial rolls the
work back and commits a ``denied`` entry on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from .access import Role
from .actor import Actor
from .certificate import Certificate
from .checkpoint import Checkpoint
from .context import Tx
from .custody import CustodyMethods
from .customers import (
    add_customer,
    add_customers,
    customer_by_ref,
    declare_unique_refs,
    list_customers,
    set_hold,
    show_customer,
)
from .decommission import decommission
from .desk import DeskMethods
from .kinds import alter_kind, declare_kind, list_kinds
from .log import Event
from .model import Customer, ExpiredCustomers, Page, Principal, Record, ShredExpiredResult
from .principals import add_principal, add_role, list_principals, list_roles, revoke_principal
from .receipt import Receipt
from .records import PutItem, delete_record, get_many, list_records, put_many, update_record
from .retention import expired_customers, set_retention, shred_expired
from .schema import KindSpec
from .search import find
from .shred import compact, shred_one
from .storecheck import StoreCheck, check_store

__all__ = ["Session"]

logger = logging.getLogger(__name__)


class Session(CustodyMethods, DeskMethods):
    """The vault as seen by one principal (or by the unlocking administrator); the
    privacy routine's methods come from :class:`~.desk.DeskMethods`."""

    def __init__(self, actor: Actor) -> None:
        self._actor = actor
        self._ctx = actor.ctx
        #: who acts (a principal's name, or ``admin``) and its role's name
        self.actor = actor.name
        self.role = actor.role.name

    def __repr__(self) -> str:
        return f"<Session actor={self.actor!r} role={self.role!r}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("sessions cannot be pickled")

    # -- schema and checkpoints ------------------------------------------------

    def declare_kind(
        self,
        name: str,
        *,
        fields: Iterable[str],
        purposes: Iterable[str],
        searchable: Mapping[str, str] | None = None,
    ) -> KindSpec:
        """Declare (or redeclare) a record kind: the fields it may hold, the purposes
        it may be used for, and ``searchable`` fields (field -> normalizer, found by
        :meth:`find`; docs/search.md); returns it. Needs ``admin``; logged as
        ``schema.declare``.

        Raises :class:`SchemaError` for a bad name (nothing logged) or
        :class:`AccessDeniedError` (logged as denied); either way nothing changes."""
        return declare_kind(
            self._ctx, self._actor, name, fields=fields, purposes=purposes, searchable=searchable
        )

    def alter_kind(
        self,
        name: str,
        *,
        add_fields: Iterable[str] = (),
        deprecate_fields: Iterable[str] = (),
        add_purposes: Iterable[str] = (),
        add_searchable: Mapping[str, str] | None = None,
        drop_searchable: Iterable[str] = (),
    ) -> KindSpec:
        """Evolve a declared kind without rewriting its records: add fields (a
        deprecated one becomes writable again), deprecate fields (still read, removed
        by an update setting them to None, never written again), add purposes, make
        fields searchable (field -> normalizer) or not (the kind's index is rebuilt);
        returns it. Needs ``admin``; logged as ``schema.alter``. :class:`SchemaError`
        (nothing changed or logged) for an undeclared kind, an unknown field or no
        change."""
        return alter_kind(
            self._ctx,
            self._actor,
            name,
            add_fields=add_fields,
            deprecate_fields=deprecate_fields,
            add_purposes=add_purposes,
            add_searchable=add_searchable,
            drop_searchable=drop_searchable,
        )

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind (names, fields, purposes: schema, no personal data).
        Needs ``list``; logged as one ``schema.list`` entry."""
        return list_kinds(self._ctx, self._actor)

    def check_store(self, *, progress: Callable[[int], None] | None = None) -> StoreCheck:
        """Check every authenticated row of the data store (vault/storecheck.py): the
        rows that fail their authenticator or were rolled back, by table and id.
        Needs ``audit``; logged as one ``store.check`` entry (counts only)."""
        return check_store(self._ctx, self._actor, progress=progress)

    def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint at the log head now and return it (see
        :meth:`Vault.checkpoint`). Needs ``audit``; logged as ``audit.checkpoint``.
        A denial is logged and signs nothing new."""
        actor = self._actor

        def entry(tx: Tx) -> Event:
            actor.gate(tx.conn, "audit", "audit.checkpoint")
            return actor.event("audit.checkpoint")

        return self._ctx.sign_checkpoint(entry)

    # -- customers -------------------------------------------------------------

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: datetime | None = None,
    ) -> str:
        """Create a customer with fresh keys; returns its id. ``ref`` is an application
        reference (not personal data); ``consent`` flags such as ``{"transfer": True}``."""
        return add_customer(
            self._ctx, self._actor, ref=ref, consent=consent, retain_until=retain_until
        )

    def add_customers(
        self,
        customers: Iterable[Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        on_batch: Callable[[list[str]], None] | None = None,
    ) -> list[str]:
        """Create many customers (each a mapping of ``ref``, ``consent``,
        ``retain_until``), one transaction per batch (default 1,000); returns their ids
        in order. ``on_batch`` gets each committed batch's ids (docs/customers.md)."""
        return add_customers(
            self._ctx, self._actor, customers, batch_size=batch_size, on_batch=on_batch
        )

    def customer(self, customer_id: str) -> Customer:
        """A customer's metadata (also for shredded customers). Logged."""
        return show_customer(self._ctx, self._actor, customer_id)

    def customer_by_ref(self, ref: str) -> Customer:
        """The customer whose application reference is ``ref``; gated and logged like
        :meth:`customer`. :class:`NotFoundError` when none has it,
        :class:`DuplicateRefError` when several do (refs not declared unique)."""
        return customer_by_ref(self._ctx, self._actor, ref)

    def set_unique_refs(self, unique: bool) -> None:
        """Declare customer refs unique in this vault (or stop): while on, adding a
        customer with a ref another customer has is refused (:class:`DuplicateRefError`,
        nothing written), in the database too (a unique index). Turning it on is refused
        while customers share a ref. Needs ``admin``; logged as ``customer.refs``."""
        declare_unique_refs(self._ctx, self._actor, unique)

    def list_customers(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Page[Customer]:
        """Customers' metadata (optionally in one state), logged as one entry: all of
        them, oldest first, or with ``limit``/``after`` one page in id order whose
        ``next`` is the cursor for the following page (None after the last)."""
        return list_customers(self._ctx, self._actor, state=state, limit=limit, after=after)

    def hold(self, customer_id: str) -> None:
        """Put a customer under legal hold: it cannot be shredded until released."""
        set_hold(self._ctx, self._actor, customer_id, True)

    def release(self, customer_id: str) -> None:
        """Release a customer's legal hold."""
        set_hold(self._ctx, self._actor, customer_id, False)

    def set_retention(self, customer_id: str, retain_until: datetime | str | None) -> str | None:
        """Change when a customer's data is due for erasure (``None``: keep until
        shredded on request). Admin only; logged as ``customer.retain`` with the new
        time. Returns it, normalized (RFC 3339 UTC). The next ``shred_expired`` uses it."""
        return set_retention(self._ctx, self._actor, customer_id, retain_until)

    # -- erasure ---------------------------------------------------------------

    def shred(self, customer_id: str, *, reason: str) -> Receipt:
        """Crypto-shred a customer: destroy its keys so every copy of its records is
        unreadable, in time independent of how many records it has. Returns a signed
        erasure receipt. ``reason`` is logged: keep personal data out of it.

        Raises :class:`NotFoundError`, :class:`ShreddedError` (already shredded),
        :class:`LegalHoldError` or :class:`AccessDeniedError`; each is logged and
        changes nothing."""
        receipt = shred_one(self._ctx, self._actor, customer_id, reason=reason)
        logger.info("customer %s shredded by %s", receipt.customer, self._actor.name)
        return receipt

    def shred_expired(
        self,
        *,
        reason: str = "retention period ended",
        progress: Callable[[int], None] | None = None,
        total: Callable[[int], None] | None = None,
    ) -> ShredExpiredResult:
        """Shred every active customer whose ``retain_until`` has passed, except those
        under legal hold (reported as ``held``); ``total`` gets how many are due."""
        result = shred_expired(
            self._ctx, self._actor, reason=reason, progress=progress, total=total
        )
        logger.info("retention: %d expired customer(s) shredded", len(result.receipts))
        return result

    def expired_customers(self) -> ExpiredCustomers:
        """Who :meth:`shred_expired` would shred now, and who a legal hold keeps: a dry
        run that changes nothing. Needs the ``shred`` action; logged as one
        ``customer.list`` entry (counts only)."""
        return expired_customers(self._ctx, self._actor)

    def compact(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Delete ciphertext rows of shredded customers (unreadable junk); returns the
        number removed. Each batch commits on its own: safe to interrupt."""
        return compact(self._ctx, self._actor, progress)

    def decommission(
        self,
        *,
        reason: str,
        override_holds: bool = False,
        progress: Callable[[int], None] | None = None,
        on_certificate: Callable[[Certificate], None] | None = None,
        total: Callable[[int], None] | None = None,
    ) -> Certificate:
        """Destroy everything the vault holds and return a signed certificate of
        destruction (admin only; see :mod:`vault.decommission`). Refused, with nothing
        changed, while customers are under legal hold (:class:`DecommissionHoldError`)
        unless ``override_holds``. Resumable: after a crash, run it again. Afterwards
        the vault serves no data and can sign nothing."""
        return decommission(
            self._ctx,
            self._actor,
            reason=reason,
            override_holds=override_holds,
            progress=progress,
            on_certificate=on_certificate,
            total=total,
        )

    # -- principals and roles (admin only) -------------------------------------

    def add_principal(self, name: str, *, role: str, expires: datetime | None = None) -> str:
        """Create a principal and return its token: shown once, stored only as SHA-256."""
        return add_principal(self._ctx, self._actor, name, role=role, expires=expires)

    def revoke_principal(self, name: str) -> None:
        """Revoke a principal's token at once (in every process)."""
        revoke_principal(self._ctx, self._actor, name)

    def list_principals(self) -> list[Principal]:
        """Every principal (never a token or its hash)."""
        return list_principals(self._ctx, self._actor)

    def add_role(self, role: Role, *, replace: bool = False) -> None:
        """Add a custom role (built from :meth:`Role.build`).

        A role of that name that exists already raises :class:`SchemaError` and nothing
        changes, unless ``replace``: then the new spec takes its place for its
        principals' very next call, logged as ``role.add`` with ``detail.replaced``."""
        add_role(self._ctx, self._actor, role, replace=replace)

    def list_roles(self) -> list[Role]:
        """Built-in and custom roles."""
        return list_roles(self._ctx, self._actor)

    # -- records ---------------------------------------------------------------

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        """Store one record; returns its id. See :meth:`put_many`."""
        return self.put_many([(customer_id, kind, fields)], purpose=purpose)[0]

    def put_many(self, items: Sequence[PutItem], *, purpose: str) -> list[str]:
        """Store records ``(customer_id, kind, fields)`` in one transaction and one
        ``executemany``; one log entry per record. All or nothing: an undeclared kind or
        field (:class:`SchemaError`), a purpose not declared or not allowed, a field
        outside the role's allow-list (:class:`AccessDeniedError`), or an unknown or
        shredded customer stores none of them."""
        return put_many(self._ctx, self._actor, items, purpose=purpose)

    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> Record:
        """Merge ``fields`` into a record (a ``None`` value is stored as null; for a
        deprecated field, or one dropped from the kind, it removes the field, which is
        otherwise kept as stored) and re-encrypt it under the customer's current key;
        returns the new record (with the fields this role may see)."""
        return update_record(
            self._ctx, self._actor, customer_id, record_id, fields, purpose=purpose
        )

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        """Delete one record (its ciphertext row). Logged as ``record.delete``."""
        delete_record(self._ctx, self._actor, customer_id, record_id, purpose=purpose)

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record:
        """Read one record. See :meth:`get_many`."""
        return self.get_many([(customer_id, record_id)], purpose=purpose)[0]

    def get_many(self, pairs: Sequence[tuple[str, str]], *, purpose: str) -> list[Record]:
        """Read records ``(customer_id, record_id)``, in order, in one transaction with
        one log entry per record. No data is returned unless the entries commit. A role
        with a field allow-list gets only those fields; the entry names them."""
        return get_many(self._ctx, self._actor, pairs, purpose=purpose)

    def find(self, kind: str, field: str, value: str, *, purpose: str) -> list[Record]:
        """The records of ``kind`` whose searchable ``field`` holds ``value`` (in its
        normalized form; docs/search.md), cut to this role's field allow-list. Needs
        ``read`` and the field; logged per record returned (one entry if none) with the
        kind, field and count, never the value. :class:`NotSearchableError` (nothing
        logged) for a field not declared searchable."""
        return find(self._ctx, self._actor, kind, field, value, purpose=purpose)

    def list_records(
        self,
        customer_id: str,
        *,
        purpose: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Record]:
        """Every record of a customer that may be used for ``purpose`` (optionally of one
        kind), oldest first; one log entry per record returned (one if none). With
        ``limit``/``after`` one page; its ``next`` is the cursor for the following one."""
        return list_records(
            self._ctx,
            self._actor,
            customer_id,
            purpose=purpose,
            kind=kind,
            limit=limit,
            after=after,
        )
