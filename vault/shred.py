"""Crypto-shredding (DESIGN §7): erase a customer by destroying its keys, in O(1).

1. data txn: ``customer.shred-intent`` entry (with the key fingerprints, record count
   and customer commitment), state ``shredding``;
2. keystore txn: delete every DEK version and the subject tag, truncate the WAL;
3. data txn: the row becomes a tombstone and the record rows go
   (:func:`tombstone.write_tombstones`), ``customer.shred`` entry, and a signed
   checkpoint at exactly that entry; then the data store's WAL is truncated.

A crash between steps leaves the customer in ``shredding``; opening the vault runs the
remaining steps (:func:`roll_forward`), so the result is that of an uninterrupted shred,
logged once. Every shred holds the vault's shred lock (``shred.lock`` beside the
keystore; locks.py: the kernel releases it when its process dies) from its salt to its
receipt, and roll-forward takes the same lock: so a customer found in ``shredding``
under the lock was left by a crash, never by a shred still running in another process.

Nothing here reads, decrypts or rewrites the customer's records: the keystore work and
the statements run do not grow with their number; their rows go in one indexed DELETE
(docs/decisions.md). :func:`compact` removes rows that shredded customers still have
(a decommission's, or a vault's from before) and rewrites the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from .actor import Actor, system_actor
from .audit import format_public_key
from .checkpoint import parse_checkpoint
from .context import Refusal, Tx, VaultContext
from .errors import (
    LegalHoldError,
    NotFoundError,
    ShreddedError,
    StorageError,
    VaultError,
    keys_errors,
)
from .faults import crash_point
from .inputs import check_customer_id, check_reason
from .keptreceipts import keep
from .locks import exclusive_lock
from .log import export_line
from .receipt import (
    ERASURE_METHOD,
    RECEIPT_TYPE,
    SCOPE,
    SCOPE_V2,
    Receipt,
    customer_commitment,
    erasure_epoch,
)
from .rowauth import check_rows, update_rows
from .store import checkpoints, customers, log, records
from .tombstone import (
    relocate_window,
    rewrite_physical,
    scrub_wal,
    tombstone_window,
    write_tombstones,
)

__all__ = ["compact", "relocate_tombstones", "roll_forward", "shred_customer", "shred_one"]

_COMPACT_BATCH = 1000
SHRED_LOCK = "shred.lock"


@contextmanager
def shred_lock(ctx: VaultContext) -> Iterator[None]:
    """Hold the vault's shred lock (all processes sharing this keystore are on this
    host, DESIGN §2). Raises VaultBusyError after the vault's busy timeout."""
    timeout = ctx.data.busy_timeout
    with exclusive_lock(ctx.path / SHRED_LOCK, timeout=timeout, holder="shredding"):
        yield


def shred_one(ctx: VaultContext, actor: Actor, customer_id: str, *, reason: str) -> Receipt:
    """Shred one customer as ``actor`` (needs ``shred``): the inputs checked, the
    action authorized and logged, then :func:`shred_customer`."""
    check_customer_id(customer_id)
    check_reason(reason)
    actor.authorize("shred", "customer.shred")
    return shred_customer(ctx, actor, customer_id, reason, gated=True)


def shred_customer(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    reason: str,
    *,
    gated: bool = False,
    relocate: bool = True,
) -> Receipt:
    """Run the three steps for one customer and return its erasure receipt.

    Raises NotFoundError (unknown), ShreddedError (already shredded), LegalHoldError
    (held); each is logged and changes nothing. ``gated``: the actor must cover every
    record of the customer (:meth:`Actor.gate_customer`), checked in the transaction
    that begins the shred, so the records' kinds cannot change before the intent
    commits; a refusal likewise changes nothing. (Ungated: the vault's own work —
    roll-forward, restore replay — and a decommission, which its own gate allowed.)
    A customer found half-shredded is finished instead (the original reason stands).
    ``relocate=False``: leave the day's tombstones where they are, for a batch that
    calls :func:`relocate_tombstones` at its end (tombstone.write_tombstones)."""
    check_reason(reason)
    with shred_lock(ctx):
        return _shred_locked(ctx, actor, customer_id, reason, gated, relocate)


def _shred_locked(
    ctx: VaultContext, actor: Actor, customer_id: str, reason: str, gated: bool, relocate: bool
) -> Receipt:
    def begin(tx: Tx) -> None:
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        if row is None:
            ev = actor.event(
                "customer.shred",
                outcome="error",
                detail={"reason_code": "customer_not_found"},
            )
            raise Refusal(NotFoundError(f"no customer {customer_id}"), ev)
        if row.state == "shredded":
            ev = actor.event(
                "customer.shred",
                outcome="error",
                detail={"reason_code": "already_shredded"},
            )
            raise Refusal(ShreddedError(f"customer {customer_id} is already shredded"), ev)
        # Checked before its state decides anything: a row forged to ``shredding``
        # would otherwise skip the gate and the hold and go straight to the keys.
        actor.check_customers(tx.conn, [row._mapping], "customer.shred")
        if row.state == "shredding":
            return  # interrupted earlier: steps 2 and 3 finish it
        ck = ctx.keys.customer_keys([customer_id]).get(customer_id)
        if ck is None:
            raise StorageError(f"customer {customer_id} is active but has no keys in the keystore")
        tag = ck.subject_tag.hex()
        if gated:
            actor.gate_customer(tx.conn, "shred", "customer.shred", customer_id, tag)
        if row.legal_hold:
            ev = actor.event(
                "customer.shred",
                outcome="denied",
                subject=tag,
                detail={"reason_code": "legal_hold"},
            )
            raise Refusal(
                LegalHoldError(f"customer {customer_id} is under legal hold; release it first"), ev
            )
        fingerprints = ctx.keys.fingerprints(customer_id)
        count = tx.conn.execute(
            select(func.count()).select_from(records).where(records.c.customer_id == customer_id)
        ).scalar_one()
        tx.log(
            actor.event(
                "customer.shred-intent",
                subject=tag,
                detail={
                    "reason": reason,
                    "records": int(count),
                    "key_fingerprints": fingerprints,
                    "customer_commitment": customer_commitment(
                        ctx.vault_id, customer_id, ck.subject_tag, salt
                    ),
                },
            )
        )
        intent_seq = tx.head.seq + len(tx.events)
        changes = {customer_id: {"state": "shredding", "shred_intent_seq": intent_seq}}
        update_rows(tx.conn, ctx.keys.row_auth, "sv_customers", changes, intent_seq)

    # The receipt's salt goes to the keystore first, so a crash at any later point
    # can still issue a receipt that proves which customer was shredded.
    salt = _salt(ctx, customer_id, create=True)
    try:
        ctx.transact(begin)
    except VaultError:
        if _state(ctx, customer_id) != "shredding":
            ctx.keys.drop_receipt_salt(customer_id)  # nothing began: leave nothing
        raise
    crash_point("shred:after-intent")
    _destroy_keys(ctx, customer_id)
    crash_point("shred:after-keys")
    receipt = _finish(ctx, actor, customer_id, salt, relocate=relocate)
    if receipt is None:  # another process finished it between our steps
        raise ShreddedError(f"customer {customer_id} is already shredded")
    crash_point("shred:after-finish")
    ctx.keys.drop_receipt_salt(customer_id)
    return receipt


def _salt(ctx: VaultContext, customer_id: str, *, create: bool = False) -> bytes:
    with keys_errors("cannot prepare the erasure receipt"):
        salt = ctx.keys.receipt_salt(customer_id, create=create)
    if salt is None:
        raise StorageError(f"the receipt salt of {customer_id} is missing from the keystore")
    return salt


def _state(ctx: VaultContext, customer_id: str) -> str | None:
    return ctx.data.read(
        lambda conn: conn.execute(
            select(customers.c.state).where(customers.c.id == customer_id)
        ).scalar()
    )


def _destroy_keys(ctx: VaultContext, customer_id: str) -> None:
    with keys_errors(
        f"the shred of {customer_id} is recorded but its keys could not be fully erased yet "
        "(run the shred again, or reopen the vault, to finish it)"
    ):
        ctx.keys.destroy_customer(customer_id)


def _finish(
    ctx: VaultContext, actor: Actor, customer_id: str, salt: bytes, *, relocate: bool = True
) -> Receipt | None:
    """Step 3; returns None if the customer is no longer in ``shredding``."""

    def work(tx: Tx) -> tuple[int, dict[str, Any]] | None:
        row = tx.conn.execute(
            select(customers.c.state, customers.c.shred_intent_seq).where(
                customers.c.id == customer_id
            )
        ).first()
        if row is None or row.state != "shredding" or row.shred_intent_seq is None:
            return None
        body = tx.conn.execute(
            select(log.c.body).where(log.c.seq == row.shred_intent_seq)
        ).scalar_one()
        intent = json.loads(body)
        detail = dict(intent["detail"])
        detail["intent_seq"] = int(row.shred_intent_seq)
        # Step 2 overwrote the keys in place: say so, and in which scrub epoch the
        # rows left holding filler go (vault/receipt.py, SCOPE_V2).
        detail["keystore_erasure"] = {"method": ERASURE_METHOD, "scrub_epoch": epoch}
        write_tombstones(
            tx.conn,
            ctx.data.is_sqlite,
            ctx.keys.row_auth,
            [customer_id],
            tombstone_window(ctx.clock()),
            tx.next_seq(),
            relocate=relocate,
        )
        tx.log(actor.event("customer.shred", subject=intent["subject"], detail=detail))
        tx.checkpoint = True
        return tx.head.seq + len(tx.events), {"subject": intent["subject"]}

    with keys_errors("cannot read the keystore's scrub epoch"):
        epoch = ctx.keys.scrub_epoch
    done = ctx.transact(work)
    if done is None:
        return None
    scrub_wal(ctx.data)
    seq, info = done
    return _receipt(ctx, customer_id, seq, info["subject"], salt)


def relocate_tombstones(ctx: VaultContext, since: datetime) -> None:
    """The end of a batch of shreds made with ``relocate=False``: rewrite the
    tombstones of every window from ``since`` to now in id order, one transaction (it
    logs nothing: no row's content changes, only where it sits)."""
    days = sorted({tombstone_window(since), tombstone_window(ctx.clock())})

    def work(tx: Tx) -> None:
        for day in days:
            relocate_window(tx.conn, ctx.data.is_sqlite, day)

    ctx.transact(work)


def _receipt(ctx: VaultContext, customer_id: str, seq: int, subject: str, salt: bytes) -> Receipt:
    def read(conn: Any) -> tuple[bytes, str, bytes, bytes]:
        entry = conn.execute(select(log.c.body, log.c.hash).where(log.c.seq == seq)).one()
        cp = conn.execute(
            select(checkpoints.c.body, checkpoints.c.signature).where(checkpoints.c.seq == seq)
        ).one()
        return bytes(entry.body), str(entry.hash), bytes(cp.body), bytes(cp.signature)

    body, digest, cp_body, cp_sig = ctx.data.read(read)
    cp = parse_checkpoint(cp_body, cp_sig)
    entry = json.loads(export_line(body, digest))
    # A shred logged before erasure in place (found again by recovery) keeps v1.
    version = 2 if erasure_epoch(entry.get("detail") or {}) is not None else 1
    return Receipt(
        {
            "type": RECEIPT_TYPE,
            "v": version,
            "vault": ctx.vault_id,
            "customer": customer_id,
            "subject_tag": subject,
            "salt": salt.hex(),
            "entry": entry,
            "checkpoint": cp.to_json(),
            "public_key": format_public_key(ctx.public_key),
            "scope": SCOPE_V2 if version == 2 else SCOPE,
        }
    )


def roll_forward(ctx: VaultContext) -> list[Receipt]:
    """Finish every shred a crash interrupted (called at open), logged once each, and
    issue the receipts that the interrupted callers never got."""
    with shred_lock(ctx):
        return _roll_forward_locked(ctx)


def _stuck_authentic(ctx: VaultContext) -> list[str]:
    """The customers a crash left in ``shredding`` whose rows pass their checks. A row
    that fails (``shredding`` forged in the data store) destroys no keys: it is
    logged as a refused ``customer.shred`` (``row_tampered``) and left for an admin;
    every call on that customer is refused as tampered meanwhile."""
    shredding = select(customers).where(customers.c.state == "shredding")
    rows = ctx.data.read(lambda conn: [r._mapping for r in conn.execute(shredding)])
    if not rows:
        return []
    found = ctx.keys.store.subject_tags([str(r["id"]) for r in rows])
    tags = {cid: tag.hex() for cid, tag in found.items()}
    bad = ctx.data.read(
        lambda conn: check_rows(conn, ctx.keys.row_auth, "sv_customers", rows, tags=tags)
    )
    if bad:
        actor = system_actor(ctx)
        events = [
            actor.event(
                "customer.shred",
                outcome="error",
                subject=tags.get(b.row),
                detail={"reason_code": "row_tampered", "table": b.table, "why": b.reason},
            )
            for b in bad
        ]
        ctx.transact(lambda tx: tx.log(*events))
    refused = {b.row for b in bad}
    return [str(r["id"]) for r in rows if str(r["id"]) not in refused]


def _roll_forward_locked(ctx: VaultContext) -> list[Receipt]:
    stuck = _stuck_authentic(ctx)
    receipts = []
    for customer_id in stuck:
        salt = _salt(ctx, customer_id)
        _destroy_keys(ctx, customer_id)
        receipt = _finish(ctx, system_actor(ctx), customer_id, salt)
        if receipt is not None:
            receipts.append(receipt)
            keep(ctx.keys.store, [receipt])  # until collected: it cannot be issued again
        ctx.keys.drop_receipt_salt(customer_id)
    # Salts left by a crash after the shred committed (receipt not yet handed out) or
    # before its intent (nothing began).
    for customer_id in ctx.keys.store.receipt_salt_customers():
        if _state(ctx, customer_id) == "shredded":
            found = _find_shred(ctx, customer_id, _salt(ctx, customer_id))
            if found is not None:
                receipts.append(found)
                keep(ctx.keys.store, [found])
        ctx.keys.drop_receipt_salt(customer_id)
    return receipts


def _find_shred(ctx: VaultContext, customer_id: str, salt: bytes) -> Receipt | None:
    """The receipt of a finished shred, found by its commitment (rare: crash recovery)."""
    rows = ctx.data.read(
        lambda conn: conn.execute(
            select(log.c.seq, log.c.subject, log.c.body)
            .where(log.c.action == "customer.shred", log.c.outcome == "ok")
            .order_by(log.c.seq.desc())
        ).all()
    )
    for row in rows:
        subject = str(row.subject)
        detail = json.loads(row.body)["detail"]
        expected = customer_commitment(ctx.vault_id, customer_id, bytes.fromhex(subject), salt)
        if detail.get("customer_commitment") == expected:
            return _receipt(ctx, customer_id, int(row.seq), subject, salt)
    return None


def compact(
    ctx: VaultContext,
    actor: Actor,
    progress: Callable[[int], None] | None = None,
    *,
    gated: bool = True,
) -> int:
    """Delete the ciphertext rows shredded customers still have (a decommission's, and
    those a vault from before shreds removed them left behind), a batch per
    transaction (safe to interrupt: each batch commits with its own ``vault.compact``
    entry), then rewrite the data store so no physical order follows the log
    (:func:`tombstone.rewrite_physical`), logged by one last ``vault.compact`` entry
    (``"rewritten": true``). Returns rows removed. Each transaction checks the actor
    (admin), unless ``gated`` is false: a decommission, whose own gate allowed it,
    compacts as its step 4. Raises StorageError if the rewrite is refused; the
    batches already done stay done and logged."""
    removed = 0
    while True:

        def work(tx: Tx) -> int:
            if gated:
                actor.gate(tx.conn, "admin", "vault.compact")
            shredded = select(customers.c.id).where(customers.c.state == "shredded")
            ids = [
                str(r.id)
                for r in tx.conn.execute(
                    select(records.c.id)
                    .where(records.c.customer_id.in_(shredded))
                    .limit(_COMPACT_BATCH)
                )
            ]
            if not ids:
                return 0
            tx.conn.execute(delete(records).where(records.c.id.in_(ids)))
            crash_point("compact:batch")
            tx.log(actor.event("vault.compact", detail={"records": len(ids)}))
            return len(ids)

        n = ctx.transact(work)
        if n == 0:
            break
        removed += n
        if progress is not None:
            progress(n)
    rewrite_physical(ctx.data)

    def done(tx: Tx) -> None:
        if gated:
            actor.gate(tx.conn, "admin", "vault.compact")
        tx.log(actor.event("vault.compact", detail={"records": 0, "rewritten": True}))

    ctx.transact(done)
    return removed
