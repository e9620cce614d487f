"""Shredding every customer for a decommission, in batches (docs/decommission.md, step 3).

The same three steps as :mod:`.shred`, a batch at a time: intent entries and state
``shredding``, the keys destroyed in one keystore transaction, then ``shredded`` with
the ``customer.shred`` entries. A shred that ``shred`` itself began (it holds a receipt
salt) is finished by the shred protocol, so its caller's receipt is still issued.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, select

from ..keys import fingerprint
from .actor import Actor
from .context import Refusal, Tx, VaultContext
from .errors import DecommissionHoldError, ShreddedError, keys_errors
from .faults import crash_point
from .lifecycle import DECOMMISSION_ACTION
from .log import Event
from .rowauth import update_rows
from .shred import shred_customer, shred_lock
from .store import customers, log, records
from .tombstone import tombstone_window, write_tombstones

__all__ = ["ACTIVE", "hold_denial", "hold_error", "shred_all"]


_BATCH = 500


ACTIVE = "active"


def shred_all(
    ctx: VaultContext,
    actor: Actor,
    reason: str,
    intent_seq: int,
    override: bool,
    progress: Callable[[int], None] | None,
) -> None:
    salted = set(ctx.keys.store.receipt_salt_customers())

    def ids_in(state: str) -> list[str]:
        stmt = (
            select(customers.c.id)
            .where(customers.c.state == state)
            .order_by(customers.c.id)
            .limit(_BATCH)
        )
        return ctx.data.read(lambda conn: [str(r.id) for r in conn.execute(stmt)])

    while True:
        # The shred lock (shred.py) is held per batch, as by `shred`: a customer found
        # in `shredding` under it was left by a crash, and a roll-forward in a process
        # opening meanwhile never sees a batch half-done.
        with shred_lock(ctx):
            stuck = ids_in("shredding")
            begun_by_shred = [c for c in stuck if c in salted]
            batch = [c for c in stuck if c not in salted]
            if batch:
                _destroy_keys(ctx, batch)
                _finish_batch(ctx, actor, batch)
            elif not begun_by_shred:
                batch = ids_in(ACTIVE)
                if not batch:
                    return
                _begin_batch(ctx, actor, batch, reason, intent_seq, override)
                crash_point("decommission:batch-intent")
                _destroy_keys(ctx, batch)
                crash_point("decommission:batch-keys")
                _finish_batch(ctx, actor, batch)
        # A shred that `shred` began (it has a receipt salt) and a crash interrupted is
        # finished by the shred protocol (which takes the lock), issuing its receipt.
        for cid in begun_by_shred:
            with contextlib.suppress(ShreddedError):  # finished elsewhere meanwhile
                ctx.recovered_receipts.append(shred_customer(ctx, actor, cid, reason))
        salted -= set(begun_by_shred)
        if progress is not None:
            progress(len(batch) + len(begun_by_shred))


def _begin_batch(
    ctx: VaultContext,
    actor: Actor,
    ids: Sequence[str],
    reason: str,
    intent_seq: int,
    override: bool,
) -> None:
    """Step 1 of the shred protocol for a batch: the intent entries, state ``shredding``."""
    keystore = ctx.keys.store
    tags = keystore.subject_tags(ids)
    prints: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in keystore.deks(ids):
        prints[row.customer_id].append((row.version, fingerprint(row.wrapped)))

    def work(tx: Tx) -> None:
        rows = tx.conn.execute(
            select(customers.c.id, customers.c.legal_hold).where(
                customers.c.id.in_(bindparam("ids", expanding=True)),
                customers.c.state == ACTIVE,
            ),
            {"ids": list(ids)},
        ).all()
        if not override and any(r.legal_hold for r in rows):
            held = tx.conn.execute(
                select(func.count())
                .select_from(customers)
                .where(customers.c.state == ACTIVE, customers.c.legal_hold.is_(True))
            ).scalar_one()
            raise Refusal(hold_error(int(held)), hold_denial(ctx, actor, int(held)))
        counts: dict[str, int] = dict(
            tx.conn.execute(
                select(records.c.customer_id, func.count())
                .where(records.c.customer_id.in_(bindparam("ids", expanding=True)))
                .group_by(records.c.customer_id),
                {"ids": [str(r.id) for r in rows]},
            ).all()
        )
        updates: dict[str, int] = {}
        for row in rows:
            cid = str(row.id)
            detail: dict[str, Any] = {
                "reason": reason,
                "records": int(counts.get(cid, 0)),
                "key_fingerprints": [fp for _v, fp in sorted(prints.get(cid, []))],
                "decommission_seq": intent_seq,
            }
            if row.legal_hold:
                detail["legal_hold_overridden"] = True
            tag = tags.get(cid)
            tx.log(
                actor.event(
                    "customer.shred-intent",
                    subject=None if tag is None else tag.hex(),
                    detail=detail,
                )
            )
            updates[cid] = tx.head.seq + len(tx.events)
        changes = {c: {"state": "shredding", "shred_intent_seq": q} for c, q in updates.items()}
        # A decommission erases every customer: a forged row is shredded all the same.
        update_rows(tx.conn, ctx.keys.row_auth, "sv_customers", changes, updates, verify=False)

    ctx.transact(work)


def _destroy_keys(ctx: VaultContext, ids: Sequence[str]) -> None:
    """Step 2 for a batch: one keystore transaction, one WAL truncation."""
    if not ids:
        return
    with keys_errors(
        "the decommission is recorded but keys could not be fully erased yet "
        "(run the decommission again to finish it)"
    ):
        ctx.keys.destroy_customers(ids)


def _finish_batch(ctx: VaultContext, actor: Actor, ids: Sequence[str]) -> None:
    """Step 3 for a batch: state ``shredded``, a ``customer.shred`` entry each (the
    intent's detail, as ``shred`` writes it), one checkpoint at the last."""
    if not ids:
        return

    def work(tx: Tx) -> None:
        rows = tx.conn.execute(
            select(customers.c.id, customers.c.shred_intent_seq)
            .where(
                customers.c.id.in_(bindparam("ids", expanding=True)),
                customers.c.state == "shredding",
            )
            .order_by(customers.c.id),
            {"ids": list(ids)},
        ).all()
        if not rows:
            return
        seqs = [int(r.shred_intent_seq) for r in rows if r.shred_intent_seq is not None]
        intents = {
            int(seq): json.loads(body)
            for seq, body in tx.conn.execute(
                select(log.c.seq, log.c.body).where(
                    log.c.seq.in_(bindparam("seqs", expanding=True))
                ),
                {"seqs": seqs},
            )
        }
        # The record rows stay for the decommission's own compact step, which
        # follows at once and which its certificate counts (docs/decommission.md).
        first = tx.next_seq()
        stamps = {str(row.id): first + i for i, row in enumerate(rows)}
        write_tombstones(
            tx.conn,
            ctx.data.is_sqlite,
            ctx.keys.row_auth,
            list(stamps),
            tombstone_window(ctx.clock()),
            stamps,
            drop_records=False,
        )
        for row in rows:
            seq = None if row.shred_intent_seq is None else int(row.shred_intent_seq)
            intent = intents.get(seq) if seq is not None else None
            detail = dict(intent["detail"]) if intent else {"records": None}
            detail["intent_seq"] = seq
            subject = intent.get("subject") if intent else None
            tx.log(actor.event("customer.shred", subject=subject, detail=detail))
        tx.checkpoint = True

    ctx.transact(work)


def hold_error(held: int) -> DecommissionHoldError:
    return DecommissionHoldError(
        f"{held} customer(s) are under legal hold: nothing was destroyed. Release them, "
        "or decommission with override_holds (CLI: --override-holds) to destroy them too",
        held=held,
    )


def hold_denial(ctx: VaultContext, actor: Actor, held: int) -> Event:
    return actor.event(
        DECOMMISSION_ACTION,
        outcome="denied",
        detail={"reason_code": "legal_hold", "held": int(held)},
    )
