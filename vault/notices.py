"""Change notices (docs/requests.md): before a handover or a new purpose, one notice per
affected customer (Markdown and JSON through the writer), stating who receives the
data, what, why, how to object and by when; the vault records that they were prepared,
delivered (the operator marks it) and objected to. A handover export can then require
that each customer's objection window has passed (vault/handover_export.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select

from . import ids
from .actor import Actor
from .context import Refusal, Tx, VaultContext
from .errors import NotFoundError, SchemaError, StorageError, TamperError
from .files import write_file
from .inputs import check_customer_id, check_text, moment_text
from .markdown import render_notice
from .routine import NOTICE_REASONS, Notice, check_channel, check_choice
from .routine_tables import notices
from .rowauth import insert_rows, require, update_rows
from .schema import check_name
from .store import customers, records

__all__ = ["NOTICE_TYPE", "NoticeBatch", "mark_notice", "prepare_notices"]

NOTICE_TYPE = "shredvault-change-notice"
DEFAULT_CONTACT = "tell us by phone, email, our web form or in person, quoting the notice id"
#: recipients one notice names (each is stored on every notice of the batch)
MAX_RECIPIENTS = 20


@dataclass(frozen=True, slots=True)
class NoticeBatch:
    """The notices one ``prepare`` run wrote: their batch id, the notices, the files."""

    batch: str
    notices: list[Notice]
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "notices": [n.to_json() for n in self.notices],
            "files": list(self.files),
        }


def prepare_notices(
    ctx: VaultContext,
    actor: Actor,
    *,
    reason: str,
    effective: object,
    recipients: Sequence[str],
    out_dir: str | os.PathLike[str],
    purpose: str | None = None,
    contact: str = DEFAULT_CONTACT,
) -> NoticeBatch:
    """Prepare a notice for every affected customer: for a ``transfer``, the active
    customers whose consent allows it (those a handover would export); for a
    ``new-purpose`` (``purpose`` names it), every active customer. Each notice names
    the kinds of data held (never values); the objection window ends at ``effective``.
    Writes ``<notice>.md`` and ``<notice>.json`` into the existing directory ``out_dir``
    (never over a file). Needs ``write``; one ``notice.prepare`` entry."""
    check_choice("the notice reason", reason, NOTICE_REASONS)
    when = moment_text(effective, what="the effective date")
    if isinstance(recipients, str) or not recipients:
        raise SchemaError("name at least one recipient (a list of names)")
    if len(recipients) > MAX_RECIPIENTS:
        raise SchemaError(f"a notice names at most {MAX_RECIPIENTS} recipients")
    names = [check_text(r, "a recipient", max_chars=200) for r in recipients]
    if reason == "new-purpose":
        if purpose is None:
            raise SchemaError("a new-purpose notice names the purpose")
        check_name("purpose", purpose)
    how = check_text(contact, "how to object", max_chars=500)
    folder = Path(out_dir)
    if not folder.is_dir():
        raise StorageError(f"{folder} is not a directory")
    batch = ids.new_id(ids.NOTICE)

    def work(tx: Tx) -> tuple[list[Notice], list[dict[str, Any]]]:
        actor.gate(tx.conn, "write", "notice.prepare")
        now = ctx.now()
        if when <= now:
            raise SchemaError("the effective date must be in the future")
        rows = [
            r._mapping
            for r in tx.conn.execute(
                select(customers).where(customers.c.state == "active").order_by(customers.c.id)
            )
        ]
        actor.check_customers(tx.conn, rows, "notice.prepare")
        affected = [
            r for r in rows if reason != "transfer" or json.loads(r["consent"]).get("transfer")
        ]
        held: dict[str, set[str]] = {str(r["id"]): set() for r in affected}
        stmt = select(records.c.customer_id, records.c.kind).distinct()
        stmt = stmt.where(records.c.customer_id.in_(bindparam("ids", expanding=True)))
        wanted = list(held)
        for start in range(0, len(wanted), 500):
            for cid, kind in tx.conn.execute(stmt, {"ids": wanted[start : start + 500]}):
                held[str(cid)].add(str(kind))
        why = (
            f"the business is being transferred to {', '.join(names)}"
            if reason == "transfer"
            else f"your data will also be used for a new purpose: {purpose}"
        )
        values, documents = [], []
        for r, nid in zip(affected, ids.new_ids(ids.NOTICE, len(affected)), strict=True):
            cid = str(r["id"])
            values.append(
                {
                    "id": nid,
                    "customer_id": cid,
                    "batch": batch,
                    "reason": reason,
                    "recipient": json.dumps(names),
                    "effective": when,
                    "prepared": now,
                    "delivered": None,
                    "channel": None,
                    "objected": None,
                }
            )
            documents.append(
                {
                    "type": NOTICE_TYPE,
                    "v": 1,
                    "vault": ctx.vault_id,
                    "notice": nid,
                    "batch": batch,
                    "customer": cid,
                    "ref": r["ref"],
                    "reason": reason,
                    "why": why,
                    "recipients": names,
                    "data": sorted(held[cid]),
                    "effective": when,
                    "object_by": when,
                    "how_to_object": how,
                    "prepared": now,
                }
            )
        insert_rows(tx.conn, ctx.keys.row_auth, notices.name, values, tx.next_seq())
        detail = {"batch": batch, "reason": reason, "notices": len(values), "effective": when}
        tx.log(actor.event("notice.prepare", detail=detail))
        return [Notice.from_row(v) for v in values], documents

    prepared, documents = ctx.transact(work)
    files = []
    for doc in documents:
        for suffix, text in (
            (".json", json.dumps(doc, indent=2, sort_keys=True) + "\n"),
            (".md", render_notice(doc)),
        ):
            path = folder / f"{doc['notice']}{suffix}"
            write_file(path, text.encode("utf-8"))
            files.append(str(path))
    return NoticeBatch(batch, prepared, files)


def mark_notice(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    notice_id: str,
    *,
    objected: bool = False,
    channel: str,
) -> Notice:
    """Mark a customer's notice delivered (``notice.deliver``), or record that the
    customer objected (``notice.object``), through ``channel``. Needs ``write``.
    NotFoundError for a notice that is not this customer's; SchemaError if already
    marked so."""
    check_customer_id(customer_id)
    if not ids.is_id(notice_id, ids.NOTICE):
        raise NotFoundError("not a notice id (expected ntc_ and 26 base32 characters)")
    check_channel(channel)
    action, column = ("notice.object", "objected") if objected else ("notice.deliver", "delivered")

    def work(tx: Tx) -> Notice:
        actor.gate(tx.conn, "write", action)
        row = tx.conn.execute(select(notices).where(notices.c.id == notice_id)).first()
        if row is None or row.customer_id != customer_id:
            ev = actor.event(action, outcome="error", detail={"reason_code": "notice_not_found"})
            raise Refusal(NotFoundError(f"customer {customer_id} has no notice {notice_id}"), ev)
        tag = ctx.subject_of(customer_id)
        try:
            require(tx.conn, ctx.keys.row_auth, notices.name, [row._mapping])
        except TamperError as error:
            raise actor.tamper_refusal(error, action, subject=tag) from None
        if row._mapping[column] is not None:
            raise SchemaError(f"notice {notice_id} is already marked {column}")
        changes = {column: ctx.now()}
        if not objected:
            changes["channel"] = channel
        update_rows(tx.conn, ctx.keys.row_auth, notices.name, {notice_id: changes}, tx.next_seq())
        detail = {"notice": notice_id, "channel": channel}
        tx.log(actor.event(action, subject=tag, detail=detail))
        return Notice.from_row({**row._mapping, **changes})

    return ctx.transact(work)
