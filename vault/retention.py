"""Retention: when customers' data is due for erasure, and erasing those past it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .access import normalize_expiry
from .actor import Actor
from .context import Tx, VaultContext
from .errors import LegalHoldError, ShreddedError, VaultError
from .inputs import check_customer_id, check_reason
from .model import ExpiredCustomers, ShredExpiredResult
from .receipt import Receipt
from .rowauth import update_rows
from .shred import relocate_tombstones, shred_customer
from .store import customers

__all__ = ["expired_customers", "set_retention", "shred_expired"]


def set_retention(
    ctx: VaultContext, actor: Actor, customer_id: str, retain_until: datetime | str | None
) -> str | None:
    """Change when a customer's data is due for erasure (``None``: keep until
    shredded on request). Admin only; logged as ``customer.retain`` with the new
    time. Returns it, normalized (RFC 3339 UTC). The next ``shred_expired`` uses it."""
    check_customer_id(customer_id)
    until = normalize_expiry(retain_until)

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "customer.retain")
        actor.customer_states(tx.conn, [customer_id], "customer.retain", None)
        changes = {customer_id: {"retain_until": until}}
        update_rows(tx.conn, ctx.keys.row_auth, "sv_customers", changes, tx.next_seq())
        tag = ctx.subject_of(customer_id)
        tx.log(actor.event("customer.retain", subject=tag, detail={"retain_until": until}))

    ctx.transact(work)
    return until


def shred_expired(
    ctx: VaultContext,
    actor: Actor,
    *,
    reason: str = "retention period ended",
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> ShredExpiredResult:
    """Shred every active customer whose ``retain_until`` has passed, except those
    under legal hold (reported as ``held``). ``total`` gets how many are due first."""
    check_reason(reason)
    actor.authorize("shred", "customer.shred")
    due = _expired(ctx.now())
    rows = ctx.data.read(lambda conn: conn.execute(due).all())
    if total is not None:
        total(len(rows))
    receipts: list[Receipt] = []
    held: list[str] = []
    failed: dict[str, str] = {}
    began = ctx.clock()
    # One keystore scrub for the whole run (its cost grows with the keystore), and one
    # rewrite of the day's tombstones at its end (vault/tombstone.py: per shred, it
    # would cost the run a time quadratic in its size).
    with ctx.keys.scrub_once() as scrubbed:
        for row in rows:
            if row.legal_hold:
                held.append(str(row.id))
            else:
                try:
                    receipts.append(
                        shred_customer(ctx, actor, str(row.id), reason, gated=True, relocate=False)
                    )
                except LegalHoldError:
                    held.append(str(row.id))  # held by another process meanwhile
                except ShreddedError:
                    pass  # shredded by another process meanwhile
                except VaultError as error:
                    # Keep going: the receipts already issued must reach the caller.
                    failed[str(row.id)] = str(error)
            if progress is not None:
                progress(1)
    if receipts:
        relocate_tombstones(ctx, began)
    return ShredExpiredResult(receipts, held, failed, scrub_pending=not scrubbed.done)


def expired_customers(ctx: VaultContext, actor: Actor) -> ExpiredCustomers:
    """Who :meth:`shred_expired` would shred now, and who a legal hold keeps: a dry
    run that changes nothing. Needs the ``shred`` action; logged as one
    ``customer.list`` entry (counts only). Every customer it would list passes its
    row's checks first, else a logged :class:`TamperError` lists none (a back-dated
    ``retain_until`` is never shown as due; ``audit check-store`` names every row)."""
    stmt = _expired(ctx.now()).with_only_columns(customers)

    def work(tx: Tx) -> ExpiredCustomers:
        actor.gate(tx.conn, "shred", "customer.list")
        rows = [r._mapping for r in tx.conn.execute(stmt)]
        actor.check_customers(tx.conn, rows, "customer.list")
        due: dict[str, str] = {}
        held: dict[str, str] = {}
        refs: dict[str, str] = {}
        for row in rows:
            (held if row["legal_hold"] else due)[str(row["id"])] = str(row["retain_until"])
            if row["ref"] is not None:
                refs[str(row["id"])] = str(row["ref"])
        tx.log(
            actor.event(
                "customer.list",
                detail={"expired": len(due), "held": len(held), "dry_run": True},
            )
        )
        return ExpiredCustomers(due, held, refs)

    return ctx.transact(work)


def _expired(now: str) -> Any:
    """Active customers whose retain-until time has passed, oldest first."""
    return (
        select(customers.c.id, customers.c.legal_hold, customers.c.retain_until, customers.c.ref)
        .where(
            customers.c.state == "active",
            customers.c.retain_until.is_not(None),
            customers.c.retain_until < now,
        )
        .order_by(customers.c.retain_until, customers.c.id)
    )
