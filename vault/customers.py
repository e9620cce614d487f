"""Customers: add, show, list, legal holds (operations of a context and an actor)."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, func, select

from . import ids
from .access import normalize_expiry
from .actor import Actor
from .context import Refusal, Tx, VaultContext
from .errors import (
    DuplicateRefError,
    NotFoundError,
    SchemaError,
    VaultBusyError,
    VaultError,
    keys_errors,
)
from .faults import crash_point
from .inputs import (
    check_batch_size,
    check_customer_id,
    check_known,
    check_limit,
    check_ref,
    decode_cursor,
    encode_cursor,
)
from .layout import ADDING_LOCK
from .locks import exclusive_lock
from .model import Customer, Page
from .rowauth import insert_rows, update_rows
from .schema import check_name
from .store import customers, set_unique_refs, unique_refs

__all__ = [
    "ADDING_PREFIX",
    "ADD_BATCH",
    "add_customer",
    "add_customers",
    "customer_by_ref",
    "customer_row",
    "declare_unique_refs",
    "finish_interrupted_adds",
    "list_customers",
    "set_hold",
    "show_customer",
]


#: keystore meta key prefix: a batch of new customers whose keys are written while their
#: rows may not be (the value is the JSON list of their ids; see add_customers)
ADDING_PREFIX = "adding:"
#: how many customers one transaction adds, unless told otherwise
ADD_BATCH = 1000
_SPEC_KEYS = ("consent", "ref", "retain_until")


@dataclass(frozen=True, slots=True)
class _NewCustomer:
    ref: str | None
    consent: dict[str, bool]
    until: str | None


def add_customer(
    ctx: VaultContext,
    actor: Actor,
    *,
    ref: str | None = None,
    consent: Mapping[str, bool] | None = None,
    retain_until: datetime | None = None,
) -> str:
    """Create a customer with fresh keys; returns its id. ``ref`` is an application
    reference (not personal data); ``consent`` flags such as ``{"transfer": True}``.
    A batch of one (:func:`add_customers`)."""
    spec = {"ref": ref, "consent": consent, "retain_until": retain_until}
    return add_customers(ctx, actor, [spec])[0]


def add_customers(
    ctx: VaultContext,
    actor: Actor,
    specs: Iterable[Mapping[str, Any]],
    *,
    batch_size: int | None = None,
    on_batch: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Create many customers, ``batch_size`` (default 1,000; 1 to 10,000) per
    transaction; returns their ids in the order given. Each spec is a mapping with
    any of ``ref``, ``consent``, ``retain_until`` (as :func:`add_customer` takes them).

    Every spec is checked before anything is written (:class:`SchemaError`). Each
    batch is all or nothing: its keys in ONE keystore transaction, then its rows and
    one ``customer.add`` entry per customer in ONE logged transaction (gated once).
    ``on_batch`` gets the ids of each batch once it is committed; if a later batch
    fails (a :class:`DuplicateRefError`, a denial), the batches before it stand and
    the error says how many. A crash between the two transactions leaves keys without
    customers; the next open destroys them (:func:`finish_interrupted_adds`)."""
    checked = [_checked_spec(spec, i) for i, spec in enumerate(specs)]
    size = ADD_BATCH if batch_size is None else check_batch_size(batch_size)
    actor.authorize("write", "customer.add")
    added: list[str] = []
    for start in range(0, len(checked), size):
        try:
            ids_now = _add_batch(ctx, actor, checked[start : start + size])
        except VaultError as error:
            if added:
                error.args = (
                    f"{error} ({len(added)} customer(s) of earlier batches were added and stay)",
                )
            raise
        added += ids_now
        if on_batch is not None:
            on_batch(ids_now)
    return added


def _checked_spec(spec: object, index: int) -> _NewCustomer:
    if not isinstance(spec, Mapping):
        raise SchemaError(f"customer #{index + 1}: expected an object with {', '.join(_SPEC_KEYS)}")
    check_known(f"customer #{index + 1} fields", spec, _SPEC_KEYS)
    ref = check_ref(spec.get("ref"))
    raw_consent = spec.get("consent") or {}
    if not isinstance(raw_consent, Mapping):
        raise SchemaError(f"customer #{index + 1}: consent must map names to True or False")
    consent_map = {check_name("consent", k): v for k, v in raw_consent.items()}
    if not all(isinstance(v, bool) for v in consent_map.values()):
        raise SchemaError("consent values must be True or False")
    return _NewCustomer(ref, consent_map, normalize_expiry(spec.get("retain_until")))


def _add_batch(ctx: VaultContext, actor: Actor, batch: Sequence[_NewCustomer]) -> list[str]:
    token = secrets.token_hex(8)
    mark = ADDING_PREFIX + token
    cids = ids.new_ids(ids.CUSTOMER, len(batch))
    created = ctx.now()
    rows = [
        {
            "id": cid,
            "ref": new.ref,
            "state": "active",
            "dek_version": 1,
            "retain_until": new.until,
            "legal_hold": False,
            "consent": json.dumps(new.consent, sort_keys=True),
            "created": created,
            "shredded": None,
            "shred_intent_seq": None,
        }
        for cid, new in zip(cids, batch, strict=True)
    ]
    refs = [new.ref for new in batch if new.ref is not None]

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "write", "customer.add")
        if refs and unique_refs(tx.conn):
            _refuse_taken_refs(ctx, tx.conn, refs)
        insert_rows(
            tx.conn, ctx.keys.row_auth, "sv_customers", rows, tx.next_seq(), one_entry_each=True
        )
        tx.log(
            *(
                actor.event(
                    "customer.add",
                    subject=tags[cid].hex(),
                    detail={"consent": new.consent, "retain_until": new.until},
                )
                for cid, new in zip(cids, batch, strict=True)
            )
        )

    # The lock says "this batch is under way" to any process that opens the vault
    # meanwhile: a mark whose lock is free belongs to a batch whose process died.
    with exclusive_lock(_lock_path(ctx, token), timeout=0, holder="adding customers"):
        try:
            with keys_errors("cannot add the customers"):
                tags = ctx.keys.create_customers(cids, created, mark=(mark, json.dumps(cids)))
            crash_point("add-customers:after-keys")
            try:
                ctx.transact(work)
            except BaseException:
                with keys_errors("the customers were not added but their new keys stay"):
                    ctx.keys.destroy_customers(cids)  # no rows: their keys must not linger
                raise
            crash_point("add-customers:after-data")
        finally:
            _clear_mark(ctx, mark)
    _lock_path(ctx, token).unlink(missing_ok=True)
    return cids


def _refuse_taken_refs(ctx: VaultContext, conn: Connection, refs: list[str]) -> None:
    if len(set(refs)) < len(refs):
        raise DuplicateRefError(
            "two customers of the batch have the same ref and refs are unique in this "
            "vault: nothing of the batch was written"
        )
    taken = select(customers.c.id).where(customers.c.ref.in_(bindparam("refs", expanding=True)))
    for start in range(0, len(refs), 500):
        if conn.execute(taken.limit(1), {"refs": refs[start : start + 500]}).first():
            raise DuplicateRefError(
                "another customer already has this ref and refs are unique in this "
                "vault: nothing was written"
            )


def _lock_path(ctx: VaultContext, token: str) -> Path:
    return ctx.path / f"{ADDING_LOCK}{token}.lock"


def _clear_mark(ctx: VaultContext, mark: str) -> None:
    # Best effort: a mark left behind only makes the next open check the batch's rows.
    with contextlib.suppress(VaultError), keys_errors(), ctx.keys.store.transaction() as conn:
        ctx.keys.store.delete_meta(conn, mark)


def finish_interrupted_adds(ctx: VaultContext) -> list[str]:
    """At open: for every batch of new customers whose process died between writing
    their keys and their rows (its keystore mark is there and its lock is free),
    destroy the keys of the customers that have no row; the others were committed and
    stay. A batch still under way in another process is left alone. Returns the ids
    whose keys were destroyed (no entry: the log never said they existed)."""
    store = ctx.keys.store
    gone: list[str] = []
    for mark in store.meta_with_prefix(ADDING_PREFIX):
        token = mark[len(ADDING_PREFIX) :]
        if not (len(token) == 16 and all(c in "0123456789abcdef" for c in token)):
            continue  # not a mark this code writes
        try:
            with exclusive_lock(_lock_path(ctx, token), timeout=0, holder="adding customers"):
                gone += _finish_batch(ctx, mark)
        except VaultBusyError:
            continue  # its process is alive: the batch is still under way
        _lock_path(ctx, token).unlink(missing_ok=True)
    return gone


def _finish_batch(ctx: VaultContext, mark: str) -> list[str]:
    text = ctx.keys.store.get_meta(mark)
    if text is None:
        return []  # finished meanwhile
    try:
        listed = json.loads(text)
        cids = [check_customer_id(c) for c in listed] if isinstance(listed, list) else []
    except (ValueError, SchemaError):
        cids = []
    present = {str(r.id) for r in ctx.read_in(select(customers.c.id), customers.c.id, cids)}
    missing = [c for c in cids if c not in present]
    if missing:
        with keys_errors("cannot erase the keys of customers a crash left half-added"):
            ctx.keys.destroy_customers(missing)
    _clear_mark(ctx, mark)
    return missing


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
