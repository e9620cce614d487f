"""Customers: add, show, list, legal holds (operations of a context and an actor)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import RowMapping, func, select

from . import ids
from .access import normalize_expiry
from .actor import Actor
from .context import Refusal, Tx, VaultContext
from .errors import DuplicateRefError, NotFoundError, SchemaError, keys_errors
from .inputs import check_customer_id, check_limit, check_ref, decode_cursor, encode_cursor
from .model import Customer, Page
from .rowauth import insert_rows, update_rows
from .schema import check_name
from .store import customers, set_unique_refs, unique_refs

__all__ = [
    "add_customer",
    "customer_by_ref",
    "customer_row",
    "declare_unique_refs",
    "list_customers",
    "set_hold",
    "show_customer",
]


def add_customer(
    ctx: VaultContext,
    actor: Actor,
    *,
    ref: str | None = None,
    consent: Mapping[str, bool] | None = None,
    retain_until: datetime | None = None,
) -> str:
    """Create a customer with fresh keys; returns its id. ``ref`` is an application
    reference (not personal data); ``consent`` flags such as ``{"transfer": True}``."""
    check_ref(ref)
    consent_map = {check_name("consent", k): v for k, v in (consent or {}).items()}
    if not all(isinstance(v, bool) for v in consent_map.values()):
        raise SchemaError("consent values must be True or False")
    until = normalize_expiry(retain_until)
    actor.authorize("write", "customer.add")
    cid = ids.new_id(ids.CUSTOMER)
    created = ctx.now()
    with keys_errors("cannot add the customer"):
        tags = ctx.keys.create_customers([cid], created)
    row = {
        "id": cid,
        "ref": ref,
        "state": "active",
        "dek_version": 1,
        "retain_until": until,
        "legal_hold": False,
        "consent": json.dumps(consent_map, sort_keys=True),
        "created": created,
        "shredded": None,
        "shred_intent_seq": None,
    }

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "write", "customer.add")
        if ref is not None and unique_refs(tx.conn):
            taken = select(customers.c.id).where(customers.c.ref == ref).limit(1)
            if tx.conn.execute(taken).first() is not None:
                raise DuplicateRefError(
                    "another customer already has this ref and refs are unique in this "
                    "vault: nothing was written"
                )
        insert_rows(tx.conn, ctx.keys.row_auth, "sv_customers", [row], tx.next_seq())
        tx.log(
            actor.event(
                "customer.add",
                subject=tags[cid].hex(),
                detail={"consent": consent_map, "retain_until": until},
            )
        )

    try:
        ctx.transact(work)
    except BaseException:
        ctx.keys.destroy_customer(cid)  # no customer row: its keys must not linger
        raise
    return cid


def show_customer(ctx: VaultContext, actor: Actor, customer_id: str) -> Customer:
    """A customer's metadata (also for shredded customers). Logged."""
    check_customer_id(customer_id)

    def work(tx: Tx) -> Customer:
        actor.gate(tx.conn, "list", "customer.show")
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        if row is None:
            raise actor.not_found("customer.show", customer_id)
        return _shown(ctx, actor, tx, row._mapping)

    return ctx.transact(work)


def customer_by_ref(ctx: VaultContext, actor: Actor, ref: str) -> Customer:
    """The customer whose application reference is ``ref``: gated and logged as
    ``customer.show``, like a lookup by id. A shredded customer has no ref any more.

    Raises :class:`NotFoundError` (logged) when no customer has it and
    :class:`DuplicateRefError` (logged) when several do (refs not declared unique)."""
    if ref is None or check_ref(ref) is None:
        raise SchemaError("ref must be a string of 1 or more characters")
    stmt = (
        select(customers)
        .where(customers.c.ref == ref)
        .order_by(customers.c.created, customers.c.id)
        .limit(2)
    )

    def work(tx: Tx) -> Customer:
        actor.gate(tx.conn, "list", "customer.show")
        rows = [r._mapping for r in tx.conn.execute(stmt)]
        if len(rows) != 1:
            code = "ref_not_found" if not rows else "ref_ambiguous"
            ev = actor.event("customer.show", outcome="error", detail={"reason_code": code})
            if not rows:
                raise Refusal(NotFoundError("no customer has this ref"), ev)
            raise Refusal(
                DuplicateRefError(
                    "more than one customer has this ref (refs are not unique in this "
                    "vault): list the customers instead"
                ),
                ev,
            )
        return _shown(ctx, actor, tx, rows[0])

    return ctx.transact(work)


def _shown(ctx: VaultContext, actor: Actor, tx: Tx, row: RowMapping) -> Customer:
    actor.check_customers(tx.conn, [row], "customer.show")
    tag = ctx.subject_of(str(row["id"]))
    tx.log(actor.event("customer.show", subject=tag))
    return customer_row(row)


def declare_unique_refs(ctx: VaultContext, actor: Actor, unique: bool) -> None:
    """Declare customer refs unique (or not) in this vault. On: refused with
    :class:`DuplicateRefError` while two customers share a ref (nothing changes), else
    the ``sv_meta`` flag and a unique index on the column are created. Needs
    ``admin``; logged as ``customer.refs``."""
    shared = (
        select(customers.c.ref)
        .where(customers.c.ref.is_not(None))
        .group_by(customers.c.ref)
        .having(func.count() > 1)
        .subquery()
    )

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "customer.refs")
        if unique:
            count = int(tx.conn.execute(select(func.count()).select_from(shared)).scalar() or 0)
            if count:
                raise DuplicateRefError(
                    f"{count} ref(s) are shared by more than one customer: give them distinct "
                    "refs first; nothing was changed"
                )
        set_unique_refs(tx.conn, unique)
        tx.log(actor.event("customer.refs", detail={"unique": unique}))

    ctx.transact(work)


def list_customers(
    ctx: VaultContext,
    actor: Actor,
    *,
    state: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Page[Customer]:
    """Customers' metadata (optionally in one state), logged as one entry. Without
    ``limit`` or ``after``: all of them, oldest first. With them: a page of at most
    ``limit`` in id order after the cursor ``after``, read by keyset on the primary key
    (its cost follows the page, not the vault); ``Page.next`` continues it."""
    size = check_limit(limit)
    paged = size is not None or after is not None
    if paged:
        stmt = select(customers).order_by(customers.c.id)
        if after is not None:
            (last,) = decode_cursor(after, (str,))
            stmt = stmt.where(customers.c.id > last)
        if size is not None:
            stmt = stmt.limit(size + 1)
    else:
        stmt = select(customers).order_by(customers.c.created, customers.c.id)
    if state is not None:
        stmt = stmt.where(customers.c.state == state)

    def work(tx: Tx) -> Page[Customer]:
        actor.gate(tx.conn, "list", "customer.list")
        rows = [r._mapping for r in tx.conn.execute(stmt)]
        more = size is not None and len(rows) > size
        rows = rows[:size] if size is not None else rows
        actor.check_customers(tx.conn, rows, "customer.list")
        out = [customer_row(r) for r in rows]
        detail: dict[str, object] = {"count": len(out)}
        if paged:
            detail["page"] = True
        tx.log(actor.event("customer.list", detail=detail))
        return Page(out, encode_cursor(out[-1].id) if more else None)

    return ctx.transact(work)


def set_hold(ctx: VaultContext, actor: Actor, customer_id: str, held: bool) -> None:
    check_customer_id(customer_id)
    action = "customer.hold" if held else "customer.release"

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", action)
        actor.customer_states(tx.conn, [customer_id], action, None)
        changes = {customer_id: {"legal_hold": held}}
        update_rows(tx.conn, ctx.keys.row_auth, "sv_customers", changes, tx.next_seq())
        tag = ctx.subject_of(customer_id)
        tx.log(actor.event(action, subject=tag))

    ctx.transact(work)


def customer_row(row: RowMapping) -> Customer:
    return Customer(
        id=str(row["id"]),
        ref=row["ref"],
        state=str(row["state"]),
        consent=json.loads(row["consent"]),
        retain_until=row["retain_until"],
        legal_hold=bool(row["legal_hold"]),
        created=str(row["created"]),
        shredded=row["shredded"],
    )
