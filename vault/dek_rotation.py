"""DEK rotation (DESIGN §3), in batches: per batch of customers, their new key
versions in one keystore transaction, their records re-encrypted and one
``keys.rotate-dek`` entry each in one logged transaction, their old versions deleted in
one keystore transaction. Reads accept any version still present, so a crash between
the steps leaves every record readable, and a rerun finishes what was cut short.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select

from .actor import Actor
from .clock import format_ts
from .context import Tx, VaultContext
from .errors import NotFoundError, ShreddedError, TamperError, keys_errors
from .faults import crash_point
from .inputs import check_batch_size, check_days
from .routine_tables import requests
from .rowauth import require, update_rows
from .sealing import record_version, reseal_note, reseal_record
from .store import customers, records

__all__ = ["DEK_BATCH", "customers_due", "rotate_dek", "rotate_deks"]

#: customers per batch (a batch's records are held in memory at once)
DEK_BATCH = 250


def rotate_dek(ctx: VaultContext, actor: Actor, customer_id: str) -> int:
    """Give a customer a new DEK version, re-encrypt its records under it, then delete
    the older versions. Crash-safe: reads accept any version still present, and a rerun
    reuses the version an interrupted run made. Returns the new version. A batch of one
    (:func:`rotate_deks`); :class:`NotFoundError` or :class:`ShreddedError` for a
    customer that is not there or not active."""
    actor.authorize("admin", "keys.rotate-dek")
    done = _rotate_batch(ctx, actor, [customer_id], single=True)
    return done[customer_id]


def rotate_deks(
    ctx: VaultContext,
    actor: Actor,
    *,
    older_than_days: float | None = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    batch_size: int = DEK_BATCH,
) -> list[str]:
    """Rotate the DEK of every active customer (or those older than N days), in
    batches of ``batch_size`` customers: each batch's new key versions in one keystore
    transaction, its records re-encrypted and one ``keys.rotate-dek`` entry per
    customer in one logged transaction (with a checkpoint), its old versions deleted in
    one keystore transaction; the old versions leave keys.db in one scrub at the end.
    ``total`` gets the number of customers due first; ``progress`` each batch's count.
    A crash leaves every record readable; a rerun finishes what was cut short."""
    actor.authorize("admin", "keys.rotate-dek")
    size = check_batch_size(batch_size)
    due = customers_due(ctx, actor, older_than_days=older_than_days)
    if total is not None:
        total(len(due))
    done: list[str] = []
    with ctx.keys.scrub_once():
        for start in range(0, len(due), size):
            batch = due[start : start + size]
            done += _rotate_batch(ctx, actor, batch, single=False)
            if progress is not None:
                progress(len(batch))
    return done


def _rotate_batch(
    ctx: VaultContext, actor: Actor, customer_ids: list[str], *, single: bool
) -> dict[str, int]:
    """Rotate the DEKs of ``customer_ids``; returns customer -> its version now, for
    the active ones (``single``: raise for a customer that is missing or not active)."""

    def read(tx: Tx) -> list[Any]:
        # The row's DEK version decides which key versions a rerun deletes: checked
        # first (a forged one could otherwise drop the version the records need).
        stmt = select(customers).where(customers.c.id.in_(bindparam("ids", expanding=True)))
        found = list(tx.conn.execute(stmt, {"ids": customer_ids}))
        if found:
            actor.check_customers(tx.conn, [r._mapping for r in found], "keys.rotate-dek")
        return found

    rows = ctx.transact(read)
    if single and not rows:
        raise NotFoundError(f"no customer {customer_ids[0]}")
    if single and rows[0].state != "active":
        raise ShreddedError(f"customer {customer_ids[0]} is {rows[0].state}; its keys are gone")
    current = {str(r.id): int(r.dek_version) for r in rows if r.state == "active"}
    held: dict[str, set[int]] = {}
    for dek in ctx.keys.store.deks(list(current)):
        held.setdefault(dek.customer_id, set()).add(dek.version)
    # An earlier run re-encrypted the records but died before deleting the old
    # version: finishing is deleting it, not making yet another version.
    finishing = {
        c: v for c, v in current.items() if c in held and max(held[c]) == v and min(held[c]) < v
    }
    after = {c: v for c, v in current.items() if c in held and c not in finishing}
    with keys_errors("the DEK rotation could not make new key versions"):
        newest = ctx.keys.add_dek_versions(after, ctx.now()) if after else {}
    crash_point("rotate-dek:after-key")
    rotated = ctx.transact(lambda tx: _reseal(ctx, actor, tx, newest, single=single))
    crash_point("rotate-dek:after-data")
    drop = {**finishing, **rotated}
    with keys_errors(
        f"the records of {len(drop)} customer(s) are re-keyed but older key versions could "
        "not be fully erased yet (run the rotation again to finish)"
    ):
        ctx.keys.drop_dek_versions(drop)
    return drop


def _reseal(
    ctx: VaultContext, actor: Actor, tx: Tx, newest: dict[str, int], *, single: bool
) -> dict[str, int]:
    """In one logged transaction: re-encrypt the records of the customers still
    active under their ``newest`` version, move their rows to it, and log one
    ``keys.rotate-dek`` entry each (a checkpoint at the last)."""
    actor.gate(tx.conn, "admin", "keys.rotate-dek")
    if not newest:
        return {}
    ids: Any = bindparam("ids", expanding=True)
    states = dict(
        tx.conn.execute(
            select(customers.c.id, customers.c.state).where(customers.c.id.in_(ids)),
            {"ids": list(newest)},
        ).all()
    )
    live = [c for c in newest if states.get(c) == "active"]
    if single and not live:
        raise ShreddedError(f"customer {next(iter(newest))} was shredded meanwhile")
    ctx.keys.forget(live)
    keys = ctx.keys.customer_keys(live)
    live = [c for c in live if c in keys]  # keys destroyed meanwhile: a shred under way
    stmt = select(records).where(records.c.customer_id.in_(ids))
    found = [r._mapping for r in tx.conn.execute(stmt, {"ids": live})] if live else []
    # Never re-seal (and so re-authenticate) a forged or rolled-back record.
    try:
        require(tx.conn, ctx.keys.row_auth, "sv_records", found)
    except TamperError as error:
        raise actor.tamper_refusal(error, "keys.rotate-dek") from None
    first = tx.next_seq()
    seq_of = {c: first + i for i, c in enumerate(live)}
    updates: dict[str, dict[str, object]] = {}
    counts = dict.fromkeys(live, 0)
    for r in found:
        cid = str(r["customer_id"])
        version = newest[cid]
        blob = reseal_record(
            keys[cid],
            str(r["id"]),
            str(r["kind"]),
            int(r["version"]),
            record_version(r),
            int(r["dek_version"]),
            version,
            bytes(r["ciphertext"]),
        )
        updates[str(r["id"])] = {"dek_version": version, "ciphertext": blob, "aad_v": 2}
        counts[cid] += 1
    record_seqs = {str(r["id"]): seq_of[str(r["customer_id"])] for r in found}
    update_rows(tx.conn, ctx.keys.row_auth, "sv_records", updates, record_seqs, verify=False)
    changes = {c: {"dek_version": newest[c]} for c in live}
    update_rows(tx.conn, ctx.keys.row_auth, "sv_customers", changes, seq_of)
    _reseal_notes(ctx, tx, keys, newest, live, seq_of)
    tx.log(
        *(
            actor.event(
                "keys.rotate-dek",
                subject=keys[c].subject_tag.hex(),
                detail={"version": newest[c], "records": counts[c]},
            )
            for c in live
        )
    )
    tx.checkpoint = True
    return {c: newest[c] for c in live}


def _reseal_notes(
    ctx: VaultContext,
    tx: Tx,
    keys: dict[str, Any],
    newest: dict[str, int],
    live: list[str],
    seq_of: dict[str, int],
) -> None:
    """Re-seal the customers' request notes under their new DEK versions
    (docs/requests.md) before the older versions are deleted; a row that fails its check
    is refused."""
    if not live:
        return
    stmt = select(requests).where(
        requests.c.customer_id.in_(bindparam("ids", expanding=True)), requests.c.note.is_not(None)
    )
    rows = [r._mapping for r in tx.conn.execute(stmt, {"ids": live})]
    if not rows:
        return
    require(tx.conn, ctx.keys.row_auth, "sv_requests", rows)
    changes: dict[str, dict[str, object]] = {}
    seqs: dict[str, int] = {}
    for r in rows:
        cid = str(r["customer_id"])
        blob = reseal_note(
            keys[cid], str(r["id"]), int(r["note_dek"]), newest[cid], bytes(r["note"])
        )
        changes[str(r["id"])] = {"note": blob, "note_dek": newest[cid]}
        seqs[str(r["id"])] = seq_of[cid]
    update_rows(tx.conn, ctx.keys.row_auth, "sv_requests", changes, seqs, verify=False)


def customers_due(ctx: VaultContext, actor: Actor, *, older_than_days: float | None) -> list[str]:
    """Active customers, optionally only those whose newest DEK is older than N days."""
    active = ctx.data.read(
        lambda conn: [
            str(r.id)
            for r in conn.execute(select(customers.c.id).where(customers.c.state == "active"))
        ]
    )
    if older_than_days is None:
        return active
    older_than_days = check_days(older_than_days, what="older_than_days", allow_zero=True)
    cutoff = format_ts(ctx.clock() - timedelta(days=older_than_days))
    old = set(ctx.keys.store.deks_created_before(cutoff))
    return [c for c in active if c in old]
