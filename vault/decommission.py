"""Decommission (issue 9): destroy everything a vault holds, with a certificate.

The procedure (docs/decommission.md), each step safe to rerun after a crash:

1. data txn: ``vault.decommission-intent`` (reason, counts, holds) and a checkpoint;
   refused (logged, nothing changed) while customers are under legal hold, unless
   holds are overridden;
2. keystore txn: ``lifecycle = decommissioning`` with the intent's seq and reason.
   From here the vault serves no data (:mod:`vault.lifecycle`);
3. every customer still active is crypto-shredded, in batches: one data transaction
   for the batch's ``customer.shred-intent`` entries, one keystore transaction (and
   one WAL truncation) for its keys, one data transaction for its ``customer.shred``
   entries and a checkpoint at the last. A shred a crash interrupted is finished;
4. ``compact``: every ciphertext row is deleted (logged per batch);
5. keystore txn: every KEK epoch, DEK, subject tag and receipt salt deleted, what went
   recorded in the same transaction; WAL truncated;
6. data txn: the final ``vault.decommission`` entry with the counts, and a signed
   checkpoint at exactly it. Nothing is logged after it;
7. the certificate is signed and stored in the keystore (a rerun re-emits it), and
   handed to the caller's ``on_certificate``;
8. keystore txn: the signing seed deleted (public key kept), ``lifecycle =
   decommissioned``; WAL truncated.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, or_, select

from ..keys import KeyStore
from .actor import Actor
from .bulk_shred import ACTIVE, hold_denial, hold_error, shred_all
from .certificate import (
    CERTIFICATE_SCOPE,
    CERTIFICATE_TYPE,
    INTENT_ACTION,
    SIGNING_KEY_NOTE,
    Certificate,
    sign_certificate,
)
from .checkpoint import parse_checkpoint
from .context import Refusal, Tx, VaultContext
from .errors import (
    AccessDeniedError,
    StorageError,
    VaultDecommissionedError,
    keys_errors,
)
from .faults import crash_point
from .inputs import check_reason
from .layout import KEYS_FILE
from .lifecycle import (
    DECOMMISSION_ACTION,
    DECOMMISSIONED,
    DECOMMISSIONING,
    INTENT_SEQ_KEY,
    LIFECYCLE_KEY,
    final_entry_query,
    final_entry_seq,
)
from .log import export_line
from .shred import compact
from .store import backups, checkpoints, customers, log, records

__all__ = ["decommission", "decommission_state", "decommissioned_certificate"]

_REASON_KEY = "decommission_reason"
_OVERRIDE_KEY = "decommission_override_holds"
_DESTROYED_KEY = "decommission_destroyed_keys"
CERTIFICATE_KEY = "decommission_certificate"


def decommission_state(path: str | os.PathLike[str]) -> str:
    """``active``, ``decommissioning`` or ``decommissioned``, read from the keystore
    without unlocking it. Raises StorageError when there is no keystore."""
    store = _open_keystore(path)
    try:
        return store.get_meta(LIFECYCLE_KEY) or ACTIVE
    finally:
        store.close()


def decommissioned_certificate(path: str | os.PathLike[str]) -> Certificate:
    """The certificate of a decommissioned vault (no passphrase: it is kept in the
    keystore), after making sure the WAL truncation a crash may have cut short is
    done. Raises StorageError if the vault is not decommissioned."""
    store = _open_keystore(path)
    with contextlib.closing(store), keys_errors():
        if store.get_meta(LIFECYCLE_KEY) != DECOMMISSIONED:
            raise StorageError(f"{path} is not decommissioned")
        text = store.get_meta(CERTIFICATE_KEY)
        if text is None:
            raise StorageError("the keystore of this decommissioned vault holds no certificate")
        store.scrub()
        return Certificate(json.loads(text))


def _open_keystore(path: str | os.PathLike[str]) -> KeyStore:
    with keys_errors():
        return KeyStore.open(Path(path) / KEYS_FILE)


def decommission(
    ctx: VaultContext,
    actor: Actor,
    *,
    reason: str,
    override_holds: bool = False,
    progress: Callable[[int], None] | None = None,
    on_certificate: Callable[[Certificate], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> Certificate:
    """Run (or finish) the decommission of the session's vault; see the module doc.

    Admin only: any other role is refused (``AccessDeniedError``, logged). Customers
    under legal hold refuse it (``DecommissionHoldError``, logged, nothing changed)
    unless ``override_holds``. A rerun after a crash finishes with the original
    reason. ``progress(n)`` is called as customers are shredded. ``on_certificate``
    gets the signed certificate before the signing seed is destroyed; if it raises,
    the seed is kept and a rerun hands over the same certificate again.
    """
    check_reason(reason)
    store = ctx.keys.store
    # Another process may have begun (or even finished) it since this vault opened.
    ctx.lifecycle = store.get_meta(LIFECYCLE_KEY)
    if ctx.lifecycle == DECOMMISSIONED:
        raise VaultDecommissionedError("the vault is already decommissioned")
    if ctx.lifecycle is not None and ctx.final_seq is None:
        ctx.final_seq = final_entry_seq(ctx.data, int(store.get_meta(INTENT_SEQ_KEY) or 0))
    if ctx.final_seq is None:
        actor.authorize("admin", DECOMMISSION_ACTION)
    elif actor.principal is not None or actor.role.name != "admin":
        raise AccessDeniedError("only the administrator who unlocked the vault may finish this")
    if ctx.lifecycle is None:
        _begin(ctx, actor, reason, override_holds)
    intent_seq = int(store.get_meta(INTENT_SEQ_KEY) or 0)
    reason = store.get_meta(_REASON_KEY) or reason  # the original reason stands
    override = override_holds or store.get_meta(_OVERRIDE_KEY) == "1"
    if ctx.final_seq is None:
        if total is not None:  # ``progress`` counts the customers not yet shredded
            total(ctx.data.read(_unshredded))
        shred_all(ctx, actor, reason, intent_seq, override, progress)
        crash_point("decommission:after-shred")
        compact(ctx, actor, gated=False)
        crash_point("decommission:after-compact")
        with keys_errors(
            "the keys could not be fully destroyed yet (run the decommission again to finish it)"
        ):
            destroyed = ctx.keys.destroy_all_keys(record_as=_DESTROYED_KEY)
        crash_point("decommission:after-keys")
        ctx.final_seq = _final_entry(ctx, actor, reason, intent_seq, destroyed)
        crash_point("decommission:after-final")
    certificate = _certificate(ctx, reason, intent_seq, ctx.final_seq)
    crash_point("decommission:after-certificate")
    if on_certificate is not None:
        on_certificate(certificate)
    with keys_errors(
        "the signing key could not be destroyed yet (run the decommission again to finish it)"
    ):
        ctx.keys.destroy_signing_key({LIFECYCLE_KEY: DECOMMISSIONED})
    ctx.lifecycle = DECOMMISSIONED
    crash_point("decommission:after-seed")
    with keys_errors(
        "the vault is decommissioned, but the keystore WAL could not be truncated yet "
        "(run the decommission again to finish it)"
    ):
        store.scrub()
    return certificate


# -- 1-2: intent and state ----------------------------------------------------------------


def _check_holds(tx: Tx, actor: Actor, page: int = 2000) -> None:
    """Without an override the legal holds decide whether the decommission may go on,
    so every customer not yet shredded must pass its row's checks first (a hold
    cleared in the data store would otherwise be shredded): a logged TamperError."""
    after = ""
    while True:
        rows = [
            r._mapping
            for r in tx.conn.execute(
                select(customers)
                .where(customers.c.state != "shredded", customers.c.id > after)
                .order_by(customers.c.id)
                .limit(page)
            )
        ]
        if not rows:
            return
        actor.check_customers(tx.conn, rows, DECOMMISSION_ACTION)
        after = str(rows[-1]["id"])


def _begin(ctx: VaultContext, actor: Actor, reason: str, override: bool) -> None:
    def work(tx: Tx) -> int:
        actor.gate(tx.conn, "admin", DECOMMISSION_ACTION)
        if not override:
            _check_holds(tx, actor)
        state = select(func.count()).select_from(customers)
        held = tx.conn.execute(
            state.where(customers.c.state != "shredded", customers.c.legal_hold.is_(True))
        ).scalar_one()
        if held and not override:
            raise Refusal(hold_error(held), hold_denial(ctx, actor, held))
        active = tx.conn.execute(state.where(customers.c.state != "shredded")).scalar_one()
        rows = tx.conn.execute(select(func.count()).select_from(records)).scalar_one()
        before = tx.conn.execute(
            select(func.count())
            .select_from(log)
            .where(log.c.action == "customer.shred", log.c.outcome == "ok")
        ).scalar_one()
        tx.log(
            actor.event(
                INTENT_ACTION,
                detail={
                    "reason": reason,
                    "customers_active": int(active),
                    "customers_shredded_before": int(before),
                    "records": int(rows),
                    "legal_holds_overridden": int(held),
                },
            )
        )
        tx.checkpoint = True
        return tx.head.seq + len(tx.events)

    intent_seq = ctx.transact(work)
    # A crash here leaves a serving vault with an intent nothing followed: a rerun
    # begins again with a new intent. Nothing is destroyed before the next step.
    crash_point("decommission:after-intent")
    with (
        keys_errors("cannot record the decommission in the keystore"),
        ctx.keys.store.transaction() as conn,
    ):
        store = ctx.keys.store
        store.set_meta(conn, LIFECYCLE_KEY, DECOMMISSIONING)
        store.set_meta(conn, INTENT_SEQ_KEY, str(intent_seq))
        store.set_meta(conn, _REASON_KEY, reason)
        store.set_meta(conn, _OVERRIDE_KEY, "1" if override else "0")
    ctx.lifecycle = DECOMMISSIONING
    crash_point("decommission:after-state")


# -- 6: the final entry ---------------------------------------------------------------


def _final_entry(
    ctx: VaultContext, actor: Actor, reason: str, intent_seq: int, destroyed: dict[str, Any]
) -> int:
    now = ctx.now()

    def work(tx: Tx) -> int:
        done = tx.conn.execute(final_entry_query(intent_seq)).scalar()
        if done is not None:
            return int(done)  # written by another run: there is only one final entry
        left = tx.conn.execute(
            select(func.count()).select_from(customers).where(customers.c.state != "shredded")
        ).scalar_one()
        rows = tx.conn.execute(select(func.count()).select_from(records)).scalar_one()
        if left or rows:
            # Another process added data meanwhile: never certify what is not true.
            raise StorageError(
                f"{left} customer(s) and {rows} record row(s) appeared during the "
                "decommission (is another process using the vault?); stop it and run "
                "the decommission again to finish"
            )
        intent = json.loads(
            tx.conn.execute(select(log.c.body).where(log.c.seq == intent_seq)).scalar_one()
        )
        counts = _count_since(tx, intent_seq)
        outstanding = [
            str(r.id)
            for r in tx.conn.execute(
                select(backups.c.id)
                .where(or_(backups.c.expires.is_(None), backups.c.expires > now))
                .order_by(backups.c.seq, backups.c.id)
            )
        ]
        tx.log(
            actor.event(
                DECOMMISSION_ACTION,
                detail={
                    "reason": reason,
                    "intent_seq": intent_seq,
                    "customers_shredded_before": int(intent["detail"]["customers_shredded_before"]),
                    **counts,
                    "kek_epochs_destroyed": [e["fingerprint"] for e in destroyed["kek_epochs"]],
                    "stray_deks_destroyed": int(destroyed["deks"]),
                    "backups_outstanding": outstanding,
                },
            )
        )
        tx.checkpoint = True
        return tx.head.seq + len(tx.events)

    return ctx.transact(work)


def _count_since(tx: Tx, intent_seq: int) -> dict[str, int]:
    """What the log says the decommission did after its intent (verifiers recount the
    same from an export): customers shredded, record rows deleted, holds overridden."""
    shredded = records_deleted = overridden = 0
    stmt = select(log.c.action, log.c.body).where(
        log.c.seq > intent_seq,
        log.c.outcome == "ok",
        log.c.action.in_(["customer.shred", "customer.shred-intent", "vault.compact"]),
    )
    for action, body in tx.conn.execute(stmt):
        if action == "customer.shred":
            shredded += 1
            continue
        detail = json.loads(body)["detail"]
        if action == "vault.compact":
            records_deleted += int(detail.get("records", 0))
        elif detail.get("legal_hold_overridden"):
            overridden += 1
    return {
        "customers_shredded": shredded,
        "records_deleted": records_deleted,
        "legal_holds_overridden": overridden,
    }


# -- 7: the certificate -------------------------------------------------------------------


def _certificate(ctx: VaultContext, reason: str, intent_seq: int, final_seq: int) -> Certificate:
    """The stored certificate, or a new one signed and stored (before anything else)."""
    store = ctx.keys.store
    kept = store.get_meta(CERTIFICATE_KEY)
    if kept is not None:
        return Certificate(json.loads(kept))

    def read(conn: Any) -> tuple[bytes, str, bytes, bytes, list[dict[str, Any]]]:
        entry = conn.execute(select(log.c.body, log.c.hash).where(log.c.seq == final_seq)).one()
        cp = conn.execute(
            select(checkpoints.c.body, checkpoints.c.signature).where(
                checkpoints.c.seq == final_seq
            )
        ).one()
        listed = [
            {"id": str(r.id), "seq": int(r.seq), "created": str(r.created), "expires": r.expires}
            for r in conn.execute(select(backups).order_by(backups.c.seq, backups.c.id))
        ]
        return bytes(entry.body), str(entry.hash), bytes(cp.body), bytes(cp.signature), listed

    body, digest, cp_body, cp_sig, listed = ctx.data.read(read)
    entry = json.loads(export_line(body, digest))
    detail = entry["detail"]
    destroyed = json.loads(store.get_meta(_DESTROYED_KEY) or "{}")
    outstanding = set(detail["backups_outstanding"])
    document = {
        "type": CERTIFICATE_TYPE,
        "v": 1,
        "vault": ctx.vault_id,
        "reason": reason,
        "decommissioned_at": entry["ts"],
        "counts": {
            name: detail[name]
            for name in (
                "customers_shredded",
                "customers_shredded_before",
                "records_deleted",
                "legal_holds_overridden",
                "stray_deks_destroyed",
            )
        },
        "log": {"first_seq": intent_seq, "last_seq": final_seq, "head": digest},
        "final_entry": entry,
        "checkpoint": parse_checkpoint(cp_body, cp_sig).to_json(),
        "destroyed_keys": {
            "kek_epochs": destroyed.get("kek_epochs", []),
            "signing_key": SIGNING_KEY_NOTE,
        },
        "backups_outstanding": [b for b in listed if b["id"] in outstanding],
        "scope": CERTIFICATE_SCOPE,
    }
    certificate = sign_certificate(document, ctx.keys.signer.sign, ctx.public_key)
    with (
        keys_errors("cannot store the certificate in the keystore"),
        store.transaction() as conn,
    ):
        store.set_meta(conn, CERTIFICATE_KEY, json.dumps(certificate.document))
    return certificate


def _unshredded(conn: Connection) -> int:
    stmt = select(func.count()).select_from(customers).where(customers.c.state != "shredded")
    return int(conn.execute(stmt).scalar() or 0)
