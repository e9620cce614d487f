"""The subject access report: everything the vault holds about one customer, for that
customer — decrypted, with every log entry about them and a signed checkpoint covering
the report's own entries (admin, or a role with ``export``); for a shredded customer
the same through its erasure receipt.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import Connection, select

from .actor import Actor
from .audit import format_public_key
from .chain import read_head
from .checkpoint import Checkpoint, checkpoint_from_json, latest_checkpoint
from .context import Refusal, Tx, VaultContext
from .errors import TamperError, VerificationError
from .log import export_line
from .receipt import ReceiptReport, verify_receipt
from .routine import consent_history
from .rowauth import require
from .sealing import envelope, open_fields, record_version
from .store import LogHead, customers, log, records

__all__ = ["SUBJECT_ACCESS", "customer_report", "customer_report_from_receipt"]

SUBJECT_ACCESS = "subject-access"


def customer_report(ctx: VaultContext, actor: Actor, customer_id: str) -> dict[str, Any]:
    """Everything the vault holds about ``customer_id``, for the customer.

    The right of access overrides the purposes declared for kinds, so records are read
    for the purpose ``subject-access``; each read is logged (one entry per record), and
    a checkpoint is signed over the report's own entries. A role limited in kinds,
    fields or purposes gets only what it may see (``Role.withholds``, ``Role.visible``);
    ``withheld`` counts the rest, and a summary entry logs it. Raises NotFoundError, or
    ShreddedError (a shredded customer is answered by its erasure receipt), or
    StateConflictError (the row says shredded but the keys are still held).
    """
    keys_of = ctx.keys

    def work(tx: Tx) -> dict[str, Any]:
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        # The subject tag (when the customer still has one) goes on a refusal too, so a
        # refused report attempt shows in that customer's own history.
        tags = keys_of.store.subject_tags([customer_id]) if row is not None else {}
        tag_bytes = tags.get(customer_id)
        role = actor.gate(
            tx.conn,
            "export",
            "customer.report",
            subject=None if tag_bytes is None else tag_bytes.hex(),
        )
        if row is None:
            raise actor.not_found("customer.report", customer_id)
        actor.check_customers(tx.conn, [row._mapping], "customer.report")
        if row.state != "active":
            raise actor.inactive_refusal(
                customer_id,
                str(row.state),
                "customer.report",
                message=f"customer {customer_id} was shredded: report through its erasure receipt",
            )
        ck = keys_of.customer_keys([customer_id])[customer_id]
        keys = {customer_id: ck}
        tag = ck.subject_tag.hex()
        rows = tx.conn.execute(
            select(records).where(records.c.customer_id == customer_id).order_by(records.c.created)
        ).all()
        try:
            require(tx.conn, ctx.keys.row_auth, "sv_records", [r._mapping for r in rows])
        except TamperError as error:
            raise actor.tamper_refusal(error, "customer.report", subject=tag) from None
        held = []
        withheld: Counter[str] = Counter()
        partial = 0
        for r in rows:
            # What the role may not see is never decrypted (docs/access-control.md).
            why = role.withholds(str(r.kind), ctx.kind(str(r.kind)).purposes)
            if why is not None:
                withheld[why] += 1
                continue
            env = envelope(ctx.keys, keys, customer_id, int(r.dek_version))
            version = record_version(r._mapping)
            plain = open_fields(env, ck, str(r.id), str(r.kind), version, bytes(r.ciphertext))
            fields = role.visible(str(r.kind), plain)
            partial += len(fields) < len(plain)
            held.append(
                {
                    "id": r.id,
                    "kind": r.kind,
                    "fields": fields,
                    "version": r.version,
                    "created": r.created,
                    "updated": r.updated,
                }
            )
        try:
            consents = consent_history(tx.conn, ctx.keys.row_auth, row._mapping)
        except TamperError as error:
            raise actor.tamper_refusal(error, "customer.report", subject=tag) from None
        history = [
            _entry_view(body, digest)
            for body, digest in tx.conn.execute(
                select(log.c.body, log.c.hash).where(log.c.subject == tag).order_by(log.c.seq)
            )
        ]
        for item in held:
            tx.log(
                actor.event(
                    "customer.report",
                    subject=tag,
                    record=str(item["id"]),
                    purpose=SUBJECT_ACCESS,
                    detail={"kind": item["kind"], "fields": sorted(item["fields"])},
                )
            )
        if not held or withheld:
            summary: dict[str, Any] = {"records": len(held)}
            if withheld:
                summary["withheld"] = dict(sorted(withheld.items()))
            tx.log(
                actor.event("customer.report", subject=tag, purpose=SUBJECT_ACCESS, detail=summary)
            )
        tx.checkpoint = True
        return {
            "customer": {
                "id": row.id,
                "ref": row.ref,
                "state": row.state,
                "consent": json.loads(row.consent),
                "retain_until": row.retain_until,
                "legal_hold": bool(row.legal_hold),
                "created": row.created,
            },
            "subject_tag": tag,
            "consent_history": consents,
            "records": held,
            "withheld": {
                "records": sum(withheld.values()),
                "reasons": dict(sorted(withheld.items())),
                "records_with_fields_withheld": partial,
            },
            "history": history,
            "report_entries": len(tx.events),
            "first_report_seq": tx.head.seq + 1,
        }

    return _complete(ctx, actor, ctx.transact(work))


def customer_report_from_receipt(
    ctx: VaultContext, actor: Actor, receipt: dict[str, Any]
) -> dict[str, Any]:
    """The subject access report of a shredded customer, through its erasure receipt.

    Once shredded, the vault can no longer link the customer to its log entries: the
    receipt's subject tag does. The receipt must verify against this vault's public key
    and its shred entry must be the one in this vault's log (else VerificationError,
    logged). The report holds the receipt, every log entry with the receipt's subject
    tag (with its exact line), no records (they are unreadable), and a signed checkpoint
    covering the report's own ``customer.report`` entry (subject: the tag; the customer
    id is never logged). Admin, or a role with ``export``.
    """
    if isinstance(receipt, dict):
        checked = verify_receipt(receipt, public_key=ctx.public_key)
    else:
        checked = ReceiptReport(False, "malformed", "a receipt is a JSON object")
    if checked.ok and checked.vault != ctx.vault_id:
        checked = ReceiptReport(False, "foreign vault", "the receipt is from another vault")
    tag = str(receipt["subject_tag"]) if checked.ok else None

    def refuse(reason: str, message: str) -> Refusal:
        ev = actor.event(
            "customer.report",
            outcome="error",
            subject=tag,
            detail={"reason_code": "receipt_not_verified", "verification": reason},
        )
        return Refusal(
            VerificationError(f"the receipt does not verify: {message}", reason=reason), ev
        )

    def work(tx: Tx) -> dict[str, Any]:
        # An unverified receipt's tag is unauthenticated: its refusal names no subject.
        actor.gate(tx.conn, "export", "customer.report", subject=tag)
        if not checked.ok or tag is None or checked.seq is None:
            raise refuse(str(checked.reason), checked.message)
        seq = checked.seq
        head = checkpoint_from_json(receipt["checkpoint"]).head
        stored = tx.conn.execute(select(log.c.hash).where(log.c.seq == seq)).scalar()
        if stored != head:
            raise refuse("forked", f"this vault's log does not hold its shred entry at seq {seq}")
        history = [
            _entry_view(body, digest)
            for body, digest in tx.conn.execute(
                select(log.c.body, log.c.hash).where(log.c.subject == tag).order_by(log.c.seq)
            )
        ]
        tx.log(
            actor.event(
                "customer.report",
                subject=tag,
                purpose=SUBJECT_ACCESS,
                detail={"records": 0, "receipt_seq": seq},
            )
        )
        tx.checkpoint = True
        return {
            "customer": {
                "id": checked.customer,
                "state": "shredded",
                "shredded_at": checked.shredded_at,
                "shred_seq": seq,
            },
            "subject_tag": tag,
            "records": [],
            "withheld": {"records": 0, "reasons": {}, "records_with_fields_withheld": 0},
            "receipt": dict(receipt),
            "history": history,
            "report_entries": len(tx.events),
            "first_report_seq": tx.head.seq + 1,
        }

    return _complete(ctx, actor, ctx.transact(work))


def _complete(ctx: VaultContext, actor: Actor, report: dict[str, Any]) -> dict[str, Any]:
    """Add the report's own log entries (their seq range was left in ``report``), the
    chain state and the signed checkpoint covering them, read together."""
    first = int(report.pop("first_report_seq"))
    count = int(report.pop("report_entries"))

    def read(conn: Connection) -> tuple[list[dict[str, Any]], LogHead, Checkpoint | None]:
        own = [
            _entry_view(body, digest)
            for body, digest in conn.execute(
                select(log.c.body, log.c.hash)
                .where(log.c.seq >= first, log.c.seq < first + count)
                .order_by(log.c.seq)
            )
        ]
        return own, read_head(conn), latest_checkpoint(conn)

    own, head, checkpoint = ctx.data.read(read)
    report["history"] += own
    report.update(
        {
            "type": "shredvault-subject-access-report",
            "v": 1,
            "vault": ctx.vault_id,
            "generated": ctx.now(),
            "checkpoint": None if checkpoint is None else checkpoint.to_json(),
            "chain": {
                "last_seq": head.seq,
                "head": head.hash,
                "checkpoint_seq": None if checkpoint is None else checkpoint.seq,
            },
            "public_key": format_public_key(ctx.public_key),
            "how_to_check": (
                "Each history entry carries its exact log line: its SHA-256 (with the "
                "prefix 'shredvault/log/v1\\n' over the line without 'hash') must equal "
                "'hash'. The checkpoint is signed with the vault's public key and covers "
                "the log up to its seq, which includes this report's own entries; an "
                "auditor can confirm the entries sit in that chain from the vault's log "
                "export (docs/log-format.md)."
            ),
        }
    )
    return report


def _entry_view(body: bytes, digest: str) -> dict[str, Any]:
    entry = json.loads(body)
    detail = entry.get("detail") or {}
    return {
        "seq": entry["seq"],
        "ts": entry["ts"],
        "actor": entry["actor"],
        "role": entry["role"],
        "action": entry["action"],
        "purpose": entry["purpose"],
        "outcome": entry["outcome"],
        "record": entry["record"],
        "fields": detail.get("fields"),
        "line": export_line(bytes(body), digest).decode("utf-8"),
    }
