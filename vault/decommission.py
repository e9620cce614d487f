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
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, or_, select, update

from ..keys import KeyStore, KeystoreError, fingerprint
from .certificate import (
    CERTIFICATE_SCOPE,
    CERTIFICATE_TYPE,
    INTENT_ACTION,
    Certificate,
    sign_certificate,
)
from .checkpoint import parse_checkpoint
from .clock import format_ts
from .errors import (
    AccessDeniedError,
    DecommissionHoldError,
    ShreddedError,
    StorageError,
    VaultDecommissionedError,
)
from .faults import crash_point
from .lifecycle import (
    DECOMMISSION_ACTION,
    DECOMMISSIONED,
    DECOMMISSIONING,
    INTENT_SEQ_KEY,
    LIFECYCLE_KEY,
    final_entry_query,
    final_entry_seq,
)
from .log import Event, export_line
from .shred import check_reason, compact, shred_customer, shred_lock, shredded_row_values
from .store import backups, checkpoints, customers, log, records
from .vault import KEYS_FILE

if TYPE_CHECKING:
    from .session import Session
    from .vault import Tx, Vault

__all__ = ["decommission", "decommission_state", "decommissioned_certificate"]

_REASON_KEY = "decommission_reason"
_OVERRIDE_KEY = "decommission_override_holds"
_DESTROYED_KEY = "decommission_destroyed_keys"
CERTIFICATE_KEY = "decommission_certificate"
_BATCH = 500
ACTIVE = "active"


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
    try:
        if store.get_meta(LIFECYCLE_KEY) != DECOMMISSIONED:
            raise StorageError(f"{path} is not decommissioned")
        text = store.get_meta(CERTIFICATE_KEY)
        if text is None:
            raise StorageError("the keystore of this decommissioned vault holds no certificate")
        store.scrub()
        return Certificate(json.loads(text))
    except KeystoreError as error:
        raise StorageError(str(error)) from None
    finally:
        store.close()


def _open_keystore(path: str | os.PathLike[str]) -> KeyStore:
    try:
        return KeyStore.open(Path(path) / KEYS_FILE)
    except KeystoreError as error:
        raise StorageError(str(error)) from None


def decommission(
    session: Session,
    *,
    reason: str,
    override_holds: bool = False,
    progress: Callable[[int], None] | None = None,
    on_certificate: Callable[[Certificate], None] | None = None,
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
    vault = session._vault
    store = vault._keys.store
    # Another process may have begun (or even finished) it since this vault opened.
    vault.lifecycle = store.get_meta(LIFECYCLE_KEY)
    if vault.lifecycle == DECOMMISSIONED:
        raise VaultDecommissionedError("the vault is already decommissioned")
    if vault.lifecycle is not None and vault._final_seq is None:
        vault._final_seq = final_entry_seq(vault._data, int(store.get_meta(INTENT_SEQ_KEY) or 0))
    if vault._final_seq is None:
        session._authorize("admin", DECOMMISSION_ACTION)
    elif session._principal is not None or session.role != "admin":
        raise AccessDeniedError("only the administrator who unlocked the vault may finish this")
    if vault.lifecycle is None:
        _begin(session, reason, override_holds)
    intent_seq = int(store.get_meta(INTENT_SEQ_KEY) or 0)
    reason = store.get_meta(_REASON_KEY) or reason  # the original reason stands
    override = override_holds or store.get_meta(_OVERRIDE_KEY) == "1"
    if vault._final_seq is None:
        _shred_all(session, reason, intent_seq, override, progress)
        crash_point("decommission:after-shred")
        compact(vault, session.actor, session.role)
        crash_point("decommission:after-compact")
        try:
            destroyed = vault._keys.destroy_all_keys(record_as=_DESTROYED_KEY)
        except KeystoreError as error:
            raise StorageError(
                f"the keys could not be fully destroyed yet ({error}); run the "
                "decommission again to finish it"
            ) from None
        crash_point("decommission:after-keys")
        vault._final_seq = _final_entry(session, reason, intent_seq, destroyed)
        crash_point("decommission:after-final")
    certificate = _certificate(vault, reason, intent_seq, vault._final_seq)
    crash_point("decommission:after-certificate")
    if on_certificate is not None:
        on_certificate(certificate)
    try:
        vault._keys.destroy_signing_key({LIFECYCLE_KEY: DECOMMISSIONED})
    except KeystoreError as error:
        raise StorageError(
            f"the signing key could not be destroyed yet ({error}); run the decommission "
            "again to finish it"
        ) from None
    vault.lifecycle = DECOMMISSIONED
    crash_point("decommission:after-seed")
    try:
        store.scrub()
    except KeystoreError as error:
        raise StorageError(
            f"the vault is decommissioned, but the keystore WAL could not be truncated yet "
            f"({error}); run the decommission again to finish it"
        ) from None
    return certificate


# -- 1-2: intent and state ----------------------------------------------------------------


def _begin(session: Session, reason: str, override: bool) -> None:
    from .vault import Refusal

    vault = session._vault

    def work(tx: Tx) -> int:
        session._gate(tx.conn, "admin", DECOMMISSION_ACTION)
        state = select(func.count()).select_from(customers)
        held = tx.conn.execute(
            state.where(customers.c.state != "shredded", customers.c.legal_hold.is_(True))
        ).scalar_one()
        if held and not override:
            raise Refusal(_hold_error(held), _hold_denial(session, held))
        active = tx.conn.execute(state.where(customers.c.state != "shredded")).scalar_one()
        rows = tx.conn.execute(select(func.count()).select_from(records)).scalar_one()
        before = tx.conn.execute(
            select(func.count())
            .select_from(log)
            .where(log.c.action == "customer.shred", log.c.outcome == "ok")
        ).scalar_one()
        tx.log(
            session._event(
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

    intent_seq = vault._transact(work)
    # A crash here leaves a serving vault with an intent nothing followed: a rerun
    # begins again with a new intent. Nothing is destroyed before the next step.
    crash_point("decommission:after-intent")
    try:
        with vault._keys.store.transaction() as conn:
            store = vault._keys.store
            store.set_meta(conn, LIFECYCLE_KEY, DECOMMISSIONING)
            store.set_meta(conn, INTENT_SEQ_KEY, str(intent_seq))
            store.set_meta(conn, _REASON_KEY, reason)
            store.set_meta(conn, _OVERRIDE_KEY, "1" if override else "0")
    except KeystoreError as error:
        raise StorageError(f"cannot record the decommission in the keystore: {error}") from None
    vault.lifecycle = DECOMMISSIONING
    crash_point("decommission:after-state")


def _hold_error(held: int) -> DecommissionHoldError:
    return DecommissionHoldError(
        f"{held} customer(s) are under legal hold: nothing was destroyed. Release them, "
        "or decommission with override_holds (CLI: --override-holds) to destroy them too",
        held=held,
    )


def _hold_denial(session: Session, held: int) -> Event:
    return session._event(
        DECOMMISSION_ACTION,
        outcome="denied",
        detail={"reason_code": "legal_hold", "held": int(held)},
    )


# -- 3: shred every customer, in batches -----------------------------------------------


def _shred_all(
    session: Session,
    reason: str,
    intent_seq: int,
    override: bool,
    progress: Callable[[int], None] | None,
) -> None:
    vault = session._vault
    salted = set(vault._keys.store.receipt_salt_customers())

    def ids_in(state: str) -> list[str]:
        stmt = (
            select(customers.c.id)
            .where(customers.c.state == state)
            .order_by(customers.c.id)
            .limit(_BATCH)
        )
        return vault._data.read(lambda conn: [str(r.id) for r in conn.execute(stmt)])

    while True:
        # The shred lock (shred.py) is held per batch, as by `shred`: a customer found
        # in `shredding` under it was left by a crash, and a roll-forward in a process
        # opening meanwhile never sees a batch half-done.
        with shred_lock(vault):
            stuck = ids_in("shredding")
            begun_by_shred = [c for c in stuck if c in salted]
            batch = [c for c in stuck if c not in salted]
            if batch:
                _destroy_keys(vault, batch)
                _finish_batch(session, batch)
            elif not begun_by_shred:
                batch = ids_in(ACTIVE)
                if not batch:
                    return
                _begin_batch(session, batch, reason, intent_seq, override)
                crash_point("decommission:batch-intent")
                _destroy_keys(vault, batch)
                crash_point("decommission:batch-keys")
                _finish_batch(session, batch)
        # A shred that `shred` began (it has a receipt salt) and a crash interrupted is
        # finished by the shred protocol (which takes the lock), issuing its receipt.
        for cid in begun_by_shred:
            with contextlib.suppress(ShreddedError):  # finished elsewhere meanwhile
                vault.recovered_receipts.append(
                    shred_customer(vault, session.actor, session.role, cid, reason)
                )
        salted -= set(begun_by_shred)
        if progress is not None:
            progress(len(batch) + len(begun_by_shred))


def _begin_batch(
    session: Session, ids: Sequence[str], reason: str, intent_seq: int, override: bool
) -> None:
    """Step 1 of the shred protocol for a batch: the intent entries, state ``shredding``."""
    from .vault import Refusal

    vault = session._vault
    keystore = vault._keys.store
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
            raise Refusal(_hold_error(int(held)), _hold_denial(session, int(held)))
        counts: dict[str, int] = dict(
            tx.conn.execute(
                select(records.c.customer_id, func.count())
                .where(records.c.customer_id.in_(bindparam("ids", expanding=True)))
                .group_by(records.c.customer_id),
                {"ids": [str(r.id) for r in rows]},
            ).all()
        )
        updates = []
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
                session._event(
                    "customer.shred-intent",
                    subject=None if tag is None else tag.hex(),
                    detail=detail,
                )
            )
            updates.append({"cid": cid, "intent": tx.head.seq + len(tx.events)})
        if updates:
            tx.conn.execute(
                update(customers)
                .where(customers.c.id == bindparam("cid"))
                .values(state="shredding", shred_intent_seq=bindparam("intent")),
                updates,
            )

    vault._transact(work)


def _destroy_keys(vault: Vault, ids: Sequence[str]) -> None:
    """Step 2 for a batch: one keystore transaction, one WAL truncation."""
    if not ids:
        return
    try:
        vault._keys.destroy_customers(ids)
    except KeystoreError as error:
        raise StorageError(
            f"the decommission is recorded but keys could not be fully erased yet ({error}); "
            "run the decommission again to finish it"
        ) from None


def _finish_batch(session: Session, ids: Sequence[str]) -> None:
    """Step 3 for a batch: state ``shredded``, a ``customer.shred`` entry each (the
    intent's detail, as ``shred`` writes it), one checkpoint at the last."""
    if not ids:
        return
    vault = session._vault

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
        tx.conn.execute(
            update(customers)
            .where(customers.c.id.in_(bindparam("done", expanding=True)))
            .values(shredded_row_values(vault._clock())),
            {"done": [str(r.id) for r in rows]},
        )
        for row in rows:
            seq = None if row.shred_intent_seq is None else int(row.shred_intent_seq)
            intent = intents.get(seq) if seq is not None else None
            detail = dict(intent["detail"]) if intent else {"records": None}
            detail["intent_seq"] = seq
            subject = intent.get("subject") if intent else None
            tx.log(session._event("customer.shred", subject=subject, detail=detail))
        tx.checkpoint = True

    vault._transact(work)


# -- 6: the final entry ---------------------------------------------------------------


def _final_entry(session: Session, reason: str, intent_seq: int, destroyed: dict[str, Any]) -> int:
    vault = session._vault
    now = format_ts(vault._clock())

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
            session._event(
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

    return vault._transact(work)


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


def _certificate(vault: Vault, reason: str, intent_seq: int, final_seq: int) -> Certificate:
    """The stored certificate, or a new one signed and stored (before anything else)."""
    store = vault._keys.store
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

    body, digest, cp_body, cp_sig, listed = vault._data.read(read)
    entry = json.loads(export_line(body, digest))
    detail = entry["detail"]
    destroyed = json.loads(store.get_meta(_DESTROYED_KEY) or "{}")
    outstanding = set(detail["backups_outstanding"])
    document = {
        "type": CERTIFICATE_TYPE,
        "v": 1,
        "vault": vault.vault_id,
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
            "signing_key": "deleted right after this certificate was signed",
        },
        "backups_outstanding": [b for b in listed if b["id"] in outstanding],
        "scope": CERTIFICATE_SCOPE,
    }
    certificate = sign_certificate(document, vault._keys.signer.sign, vault.public_key)
    try:
        with store.transaction() as conn:
            store.set_meta(conn, CERTIFICATE_KEY, json.dumps(certificate.document))
    except KeystoreError as error:
        raise StorageError(f"cannot store the certificate in the keystore: {error}") from None
    return certificate
