"""The request desk (docs/requests.md): customers' requests with answer deadlines, and
consent changes with their history. Closing a request runs what answers it: an
erasure shreds the customer (its receipt attached), an access produces the subject
report, a consent withdrawal withdraws every consent the customer gave. Every step
passes the gate and is logged; rows are authenticated (vault/rowauth.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from . import ids
from .actor import Actor
from .clock import format_ts
from .context import Refusal, Tx, VaultContext
from .errors import NotFoundError, RequestClosedError, SchemaError, TamperError
from .inputs import check_customer_id, check_days, check_text
from .keptreceipts import keep
from .receipt import Receipt
from .routine import (
    OUTCOMES,
    REQUEST_TYPES,
    Request,
    check_channel,
    check_choice,
    consent_history,
    due_date,
    missing_requests,
    policy_days,
    write_consent,
)
from .routine_tables import request_policy as policy_table
from .routine_tables import requests
from .rowauth import insert_rows, require, update_rows
from .schema import check_name
from .sealing import seal_note
from .shred import shred_one
from .store import customers
from .subject_report import customer_report

__all__ = [
    "MAX_NOTE",
    "RequestClosure",
    "change_consent",
    "close_request",
    "list_requests",
    "open_request",
    "request_policy",
    "set_request_policy",
]

MAX_NOTE = 4000
_MAX_REASON = 200
_MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class RequestClosure:
    """A closed request and what answered it: the erasure receipt or the subject
    access report (None for other types, or a refusal)."""

    request: Request
    receipt: Receipt | None = None
    report: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json(), "receipt": self.receipt is not None}


def check_request_id(value: object) -> str:
    if not ids.is_id(value, ids.REQUEST):
        raise NotFoundError("not a request id (expected req_ and 26 base32 characters)")
    return str(value)


def open_request(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    *,
    type: str,
    channel: str,
    note: str | None = None,
) -> Request:
    """Record a customer's request, due by the vault's policy for its type; the note
    (which may hold personal data) is sealed under the customer's key. Needs
    ``write``; logged as ``request.open``. NotFoundError / ShreddedError for a
    customer that does not exist or was shredded."""
    check_customer_id(customer_id)
    check_choice("the request type", type, REQUEST_TYPES)
    check_channel(channel)
    text = None if note is None else check_text(note, "a note", max_chars=MAX_NOTE)
    rid = ids.new_id(ids.REQUEST)

    def work(tx: Tx) -> Request:
        actor.gate(tx.conn, "write", "request.open")
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        if row is None:
            raise actor.not_found("request.open", customer_id)
        actor.check_customers(tx.conn, [row._mapping], "request.open")
        if row.state != "active":
            raise actor.inactive_refusal(customer_id, str(row.state), "request.open")
        try:
            days = policy_days(tx.conn, ctx.keys.row_auth)
        except TamperError as error:
            raise actor.tamper_refusal(error, "request.open") from None
        ck = ctx.keys.customer_keys([customer_id])[customer_id]
        sealed, dek = (None, None) if text is None else seal_note(ck, rid, text.encode())
        now = ctx.now()
        values = {
            "id": rid,
            "customer_id": customer_id,
            "type": type,
            "channel": channel,
            "state": "open",
            "opened": now,
            "due": due_date(now, days[type]),
            "closed": None,
            "outcome": None,
            "reason": None,
            "receipt": None,
            "note": sealed,
            "note_dek": dek,
        }
        insert_rows(tx.conn, ctx.keys.row_auth, requests.name, [values], tx.next_seq())
        detail = {"request": rid, "type": type, "channel": channel, "due": values["due"]}
        tx.log(actor.event("request.open", subject=ck.subject_tag.hex(), detail=detail))
        return Request.from_row(values, now)

    return ctx.transact(work)


def list_requests(
    ctx: VaultContext,
    actor: Actor,
    *,
    due_within_days: float | None = None,
    overdue: bool = False,
    state: str | None = None,
) -> list[Request]:
    """Requests, soonest due first: all, or those in ``state`` (open/closed), open ones
    due within N days, or open ones overdue. Every row is checked, and no request the
    log opened may be missing (a :class:`TamperError`, logged, and no listing).
    Needs ``list``; logged as ``request.list``."""
    if state is not None:
        check_choice("the state", state, ("open", "closed"))
    within = None if due_within_days is None else check_days(due_within_days, allow_zero=True)

    def work(tx: Tx) -> list[Request]:
        actor.gate(tx.conn, "list", "request.list")
        rows = [r._mapping for r in tx.conn.execute(select(requests))]
        try:
            require(tx.conn, ctx.keys.row_auth, requests.name, rows)
            missing_requests(tx.conn, rows)
        except TamperError as error:
            raise actor.tamper_refusal(error, "request.list") from None
        moment = ctx.clock()
        now = format_ts(moment)
        found = [Request.from_row(r, now) for r in rows]
        if state is not None:
            found = [r for r in found if r.state == state]
        if overdue:
            found = [r for r in found if r.overdue]
        if within is not None:
            horizon = format_ts(moment + timedelta(days=within))
            found = [r for r in found if r.state == "open" and r.due <= horizon]
        found.sort(key=lambda r: (r.due, r.id))
        tx.log(actor.event("request.list", detail={"count": len(found)}))
        return found

    return ctx.transact(work)


def _open_row(ctx: VaultContext, actor: Actor, tx: Tx, request_id: str) -> Mapping[str, Any]:
    row = tx.conn.execute(select(requests).where(requests.c.id == request_id)).first()
    if row is None:
        ev = actor.event(
            "request.close", outcome="error", detail={"reason_code": "request_not_found"}
        )
        raise Refusal(NotFoundError(f"no request {request_id}"), ev)
    try:
        require(tx.conn, ctx.keys.row_auth, requests.name, [row._mapping])
    except TamperError as error:
        raise actor.tamper_refusal(error, "request.close") from None
    if row.state != "open":
        ev = actor.event(
            "request.close",
            outcome="error",
            detail={"request": request_id, "reason_code": "request_closed"},
        )
        raise Refusal(RequestClosedError(f"request {request_id} is already closed"), ev)
    return dict(row._mapping)


def close_request(
    ctx: VaultContext,
    actor: Actor,
    request_id: str,
    *,
    outcome: str,
    reason: str | None = None,
) -> RequestClosure:
    """Close a request with its outcome. Fulfilling (or partly fulfilling) one runs
    what answers it first, each step gated and logged on its own: an erasure shreds
    the customer (``shred``; the receipt's SHA-256 is kept on the request), an access
    produces the subject report (``export``), a consent withdrawal withdraws every
    consent the customer gave (``write``). Needs ``write``; logged as ``request.close``
    (``detail.in_time``). RequestClosedError if it is closed already."""
    check_request_id(request_id)
    check_choice("the outcome", outcome, OUTCOMES)
    if reason is not None:
        check_text(reason, "a reason", max_chars=_MAX_REASON)

    def read(tx: Tx) -> Mapping[str, Any]:
        actor.gate(tx.conn, "write", "request.close")
        return _open_row(ctx, actor, tx, request_id)

    row = ctx.transact(read)
    cid, kind = row["customer_id"], str(row["type"])
    receipt = report = None
    if outcome != "refused" and cid is not None:
        if kind == "erasure":
            receipt = shred_one(ctx, actor, str(cid), reason=f"erasure request {request_id}")
        elif kind == "access":
            report = customer_report(ctx, actor, str(cid))
        elif kind == "consent-withdrawal":
            change_consent(
                ctx,
                actor,
                str(cid),
                lambda held: {name: False for name in held},
                channel=str(row["channel"]),
            )
    attached = None
    if receipt is not None:
        digest = hashlib.sha256(receipt.dumps().encode("utf-8")).hexdigest()
        attached = {"sha256": digest}

    def finish(tx: Tx) -> Request:
        actor.gate(tx.conn, "write", "request.close")
        current = _open_row(ctx, actor, tx, request_id)
        now = ctx.now()
        changes = {
            "state": "closed",
            "closed": now,
            "outcome": outcome,
            "reason": reason,
            "receipt": None if attached is None else json.dumps(attached, sort_keys=True),
        }
        update_rows(tx.conn, ctx.keys.row_auth, requests.name, {request_id: changes}, tx.next_seq())
        done = Request.from_row({**current, **changes}, now)
        owner = current["customer_id"]
        detail: dict[str, Any] = {
            "request": request_id,
            "type": kind,
            "outcome": outcome,
            "in_time": done.in_time,
        }
        if attached is not None:
            detail["receipt_sha256"] = attached["sha256"]
        subject = None if owner is None else ctx.subject_of(str(owner))
        tx.log(actor.event("request.close", subject=subject, detail=detail))
        return done

    try:
        done = ctx.transact(finish)
    except BaseException:
        if receipt is not None:  # the shred committed: its receipt cannot be issued again
            keep(ctx.keys.store, [receipt])
        raise
    return RequestClosure(done, receipt, report)


def request_policy(ctx: VaultContext, actor: Actor) -> dict[str, int]:
    """Days to answer per request type (the defaults unless set). Needs ``list``;
    logged as ``request.list`` (``detail.policy``)."""

    def work(tx: Tx) -> dict[str, int]:
        actor.gate(tx.conn, "list", "request.list")
        try:
            days = policy_days(tx.conn, ctx.keys.row_auth)
        except TamperError as error:
            raise actor.tamper_refusal(error, "request.list") from None
        tx.log(actor.event("request.list", detail={"policy": True}))
        return days

    return ctx.transact(work)


def set_request_policy(ctx: VaultContext, actor: Actor, type: str, days: int) -> None:
    """Set the days to answer a request type (1 to 366; requests already open keep
    their due date). Needs ``admin``; logged as ``request.policy``."""
    check_choice("the request type", type, REQUEST_TYPES)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise SchemaError(f"days must be a whole number from 1 to {_MAX_DAYS}")

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "request.policy")
        auth, seq = ctx.keys.row_auth, tx.next_seq()
        stmt = select(policy_table).where(policy_table.c.type == type)
        existing = tx.conn.execute(stmt).first()
        values = {"type": type, "days": days, "changed": ctx.now()}
        if existing is None:
            insert_rows(tx.conn, auth, policy_table.name, [values], seq)
        else:
            try:
                update_rows(tx.conn, auth, policy_table.name, {type: values}, seq)
            except TamperError as error:
                raise actor.tamper_refusal(error, "request.policy") from None
        tx.log(actor.event("request.policy", detail={"type": type, "days": days}))

    ctx.transact(work)


def change_consent(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    change: Mapping[str, bool] | Callable[[dict[str, bool]], Mapping[str, bool]],
    *,
    channel: str,
) -> dict[str, bool]:
    """Change a customer's consent flags (``change``: the flags to set, or a function
    of the flags held giving them) and add the change to its history: who, when, what,
    through which channel. Needs ``write``; logged as ``customer.consent``. Returns the
    consent now in force."""
    check_customer_id(customer_id)
    check_channel(channel)
    if not callable(change):
        change = _checked_flags(change)
        if not change:  # a history entry that changes nothing would still be logged
            raise SchemaError("name at least one consent flag to change")

    def work(tx: Tx) -> dict[str, bool]:
        actor.gate(tx.conn, "write", "customer.consent")
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        if row is None:
            raise actor.not_found("customer.consent", customer_id)
        actor.check_customers(tx.conn, [row._mapping], "customer.consent")
        if row.state != "active":
            raise actor.inactive_refusal(customer_id, str(row.state), "customer.consent")
        held = json.loads(row.consent)
        flags = _checked_flags(change(dict(held)) if callable(change) else change)
        consent = dict(sorted({**held, **flags}.items()))
        tag = ctx.subject_of(customer_id)
        seq, auth, now = tx.next_seq(), ctx.keys.row_auth, ctx.now()
        try:
            consent_history(tx.conn, auth, row._mapping)  # never extend a forged history
        except TamperError as error:
            raise actor.tamper_refusal(error, "customer.consent", subject=tag) from None
        change_id = write_consent(
            tx.conn, auth, row._mapping, consent, channel=channel, actor=actor.name, ts=now, seq=seq
        )
        text = json.dumps(consent, sort_keys=True)
        update_rows(tx.conn, auth, customers.name, {customer_id: {"consent": text}}, seq)
        detail = {"change": change_id, "consent": flags, "channel": channel}
        tx.log(actor.event("customer.consent", subject=tag, detail=detail))
        return consent

    return ctx.transact(work)


def _checked_flags(flags: Mapping[str, bool]) -> dict[str, bool]:
    if not isinstance(flags, Mapping):
        raise SchemaError("consent must be a mapping of flag name to True or False")
    out = {check_name("consent", k): v for k, v in flags.items()}
    if not all(isinstance(v, bool) for v in out.values()):
        raise SchemaError("consent values must be True or False")
    return out
