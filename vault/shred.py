"""Crypto-shredding (DESIGN §7): erase a customer by destroying its keys, in O(1).

1. data txn: ``customer.shred-intent`` entry (with the key fingerprints, record count
   and customer commitment), state ``shredding``;
2. keystore txn: delete every DEK version and the subject tag, truncate the WAL;
3. data txn: state ``shredded``, ``ref`` cleared, ``customer.shred`` entry, and a signed
   checkpoint at exactly that entry.

A crash between steps leaves the customer in ``shredding``; opening the vault runs the
remaining steps (:func:`roll_forward`), so the result is that of an uninterrupted shred,
logged once. Every shred holds the vault's shred lock (``shred.lock`` beside the
keystore, an ``flock`` the kernel releases when its process dies) from its salt to its
receipt, and roll-forward takes the same lock: so a customer found in ``shredding``
under the lock was left by a crash, never by a shred still running in another process.

Nothing here reads or rewrites the customer's records: cost does not grow
with their number; :func:`compact` removes the unreadable rows later.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from ..keys import KeystoreError
from .clock import format_ts
from .errors import (
    LegalHoldError,
    NotFoundError,
    SchemaError,
    ShreddedError,
    StorageError,
    VaultBusyError,
    VaultError,
)
from .faults import crash_point
from .log import Event
from .receipt import RECEIPT_TYPE, SCOPE, Receipt, customer_commitment
from .store import checkpoints, customers, log, records

if TYPE_CHECKING:
    from .vault import Tx, Vault

__all__ = ["compact", "roll_forward", "shred_customer"]

_MAX_REASON = 500
_COMPACT_BATCH = 1000
SHRED_LOCK = "shred.lock"
_LOCK_POLL_S = 0.005


@contextmanager
def shred_lock(vault: Vault) -> Iterator[None]:
    """Hold the vault's shred lock (all processes sharing this keystore are on this
    host, DESIGN §2). Raises VaultBusyError after the vault's busy timeout."""
    try:
        fd = os.open(vault.path / SHRED_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StorageError(f"cannot open the shred lock: {error.strerror}") from None
    try:
        deadline = time.monotonic() + vault._data.busy_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise VaultBusyError(
                        "another process has been shredding for longer than "
                        f"{vault._data.busy_timeout:g}s; nothing was changed"
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON:
        raise SchemaError(f"a shred reason is 1-{_MAX_REASON} characters (no personal data)")
    return reason


ShredGate = Callable[["Tx", str, str], None]


def shred_customer(
    vault: Vault,
    actor: str,
    role: str,
    customer_id: str,
    reason: str,
    *,
    gate: ShredGate | None = None,
) -> Receipt:
    """Run the three steps for one customer and return its erasure receipt.

    Raises NotFoundError (unknown), ShreddedError (already shredded), LegalHoldError
    (held); each is logged and changes nothing. ``gate(tx, customer, subject tag)``
    runs in the transaction that begins the shred, before anything changes, so what
    it checks (the records' kinds) cannot change before the intent commits; its
    Refusal likewise changes nothing. A customer found half-shredded is finished
    instead (the original reason stands)."""
    check_reason(reason)
    with shred_lock(vault):
        return _shred_locked(vault, actor, role, customer_id, reason, gate)


def _shred_locked(
    vault: Vault, actor: str, role: str, customer_id: str, reason: str, gate: ShredGate | None
) -> Receipt:
    from .vault import Refusal

    def begin(tx: Tx) -> None:
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        if row is None:
            ev = Event(
                actor,
                role,
                "customer.shred",
                outcome="error",
                detail={"reason_code": "customer_not_found"},
            )
            raise Refusal(NotFoundError(f"no customer {customer_id}"), ev)
        if row.state == "shredded":
            ev = Event(
                actor,
                role,
                "customer.shred",
                outcome="error",
                detail={"reason_code": "already_shredded"},
            )
            raise Refusal(ShreddedError(f"customer {customer_id} is already shredded"), ev)
        if row.state == "shredding":
            return  # interrupted earlier: steps 2 and 3 finish it
        ck = vault._keys.customer_keys([customer_id]).get(customer_id)
        if ck is None:
            raise StorageError(f"customer {customer_id} is active but has no keys in the keystore")
        tag = ck.subject_tag.hex()
        if gate is not None:
            gate(tx, customer_id, tag)
        if row.legal_hold:
            ev = Event(
                actor,
                role,
                "customer.shred",
                outcome="denied",
                subject=tag,
                detail={"reason_code": "legal_hold"},
            )
            raise Refusal(
                LegalHoldError(f"customer {customer_id} is under legal hold; release it first"), ev
            )
        fingerprints = vault._keys.fingerprints(customer_id)
        count = tx.conn.execute(
            select(func.count()).select_from(records).where(records.c.customer_id == customer_id)
        ).scalar_one()
        tx.log(
            Event(
                actor,
                role,
                "customer.shred-intent",
                subject=tag,
                detail={
                    "reason": reason,
                    "records": int(count),
                    "key_fingerprints": fingerprints,
                    "customer_commitment": customer_commitment(
                        vault.vault_id, customer_id, ck.subject_tag, salt
                    ),
                },
            )
        )
        intent_seq = tx.head.seq + len(tx.events)
        tx.conn.execute(
            update(customers)
            .where(customers.c.id == customer_id)
            .values(state="shredding", shred_intent_seq=intent_seq)
        )

    # The receipt's salt goes to the keystore first, so a crash at any later point
    # can still issue a receipt that proves which customer was shredded.
    salt = _salt(vault, customer_id, create=True)
    try:
        vault._transact(begin)
    except VaultError:
        if _state(vault, customer_id) != "shredding":
            vault._keys.drop_receipt_salt(customer_id)  # nothing began: leave nothing
        raise
    crash_point("shred:after-intent")
    _destroy_keys(vault, customer_id)
    crash_point("shred:after-keys")
    receipt = _finish(vault, actor, role, customer_id, salt)
    if receipt is None:  # another process finished it between our steps
        raise ShreddedError(f"customer {customer_id} is already shredded")
    crash_point("shred:after-finish")
    vault._keys.drop_receipt_salt(customer_id)
    return receipt


def _salt(vault: Vault, customer_id: str, *, create: bool = False) -> bytes:
    try:
        salt = vault._keys.receipt_salt(customer_id, create=create)
    except KeystoreError as error:
        raise StorageError(f"cannot prepare the erasure receipt: {error}") from None
    if salt is None:
        raise StorageError(f"the receipt salt of {customer_id} is missing from the keystore")
    return salt


def _state(vault: Vault, customer_id: str) -> str | None:
    return vault._data.read(
        lambda conn: conn.execute(
            select(customers.c.state).where(customers.c.id == customer_id)
        ).scalar()
    )


def _destroy_keys(vault: Vault, customer_id: str) -> None:
    try:
        vault._keys.destroy_customer(customer_id)
    except KeystoreError as error:
        raise StorageError(
            f"the shred of {customer_id} is recorded but its keys could not be fully erased "
            f"yet ({error}); run the shred again, or reopen the vault, to finish it"
        ) from None


def _finish(vault: Vault, actor: str, role: str, customer_id: str, salt: bytes) -> Receipt | None:
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
        tx.conn.execute(
            update(customers)
            .where(customers.c.id == customer_id)
            .values(shredded_row_values(vault._clock()))
        )
        tx.log(Event(actor, role, "customer.shred", subject=intent["subject"], detail=detail))
        tx.checkpoint = True
        return tx.head.seq + len(tx.events), {"subject": intent["subject"]}

    done = vault._transact(work)
    if done is None:
        return None
    seq, info = done
    return _receipt(vault, customer_id, seq, info["subject"], salt)


def shredded_row_values(now: datetime) -> dict[str, Any]:
    """What a shredded customer's row keeps. Nothing that was logged exactly
    (retention, consent, the creation time) may stay: it would lead from the customer
    id back to its old entries. Dates only, so they cannot be matched to an entry time."""
    return {
        "state": "shredded",
        "ref": None,
        "legal_hold": False,
        "retain_until": None,
        "consent": "{}",
        "created": func.substr(customers.c.created, 1, 10),
        "shredded": format_ts(now)[:10],
        "shred_intent_seq": None,
    }


def _receipt(vault: Vault, customer_id: str, seq: int, subject: str, salt: bytes) -> Receipt:
    from .audit import format_public_key
    from .checkpoint import parse_checkpoint
    from .log import export_line

    def read(conn: Any) -> tuple[bytes, str, bytes, bytes]:
        entry = conn.execute(select(log.c.body, log.c.hash).where(log.c.seq == seq)).one()
        cp = conn.execute(
            select(checkpoints.c.body, checkpoints.c.signature).where(checkpoints.c.seq == seq)
        ).one()
        return bytes(entry.body), str(entry.hash), bytes(cp.body), bytes(cp.signature)

    body, digest, cp_body, cp_sig = vault._data.read(read)
    cp = parse_checkpoint(cp_body, cp_sig)
    return Receipt(
        {
            "type": RECEIPT_TYPE,
            "v": 1,
            "vault": vault.vault_id,
            "customer": customer_id,
            "subject_tag": subject,
            "salt": salt.hex(),
            "entry": json.loads(export_line(body, digest)),
            "checkpoint": cp.to_json(),
            "public_key": format_public_key(vault.public_key),
            "scope": SCOPE,
        }
    )


def roll_forward(vault: Vault) -> list[Receipt]:
    """Finish every shred a crash interrupted (called at open), logged once each, and
    issue the receipts that the interrupted callers never got."""
    with shred_lock(vault):
        return _roll_forward_locked(vault)


def _roll_forward_locked(vault: Vault) -> list[Receipt]:
    stuck = vault._data.read(
        lambda conn: [
            str(r.id)
            for r in conn.execute(select(customers.c.id).where(customers.c.state == "shredding"))
        ]
    )
    receipts = []
    for customer_id in stuck:
        salt = _salt(vault, customer_id)
        _destroy_keys(vault, customer_id)
        receipt = _finish(vault, "vault", "system", customer_id, salt)
        if receipt is not None:
            receipts.append(receipt)
        vault._keys.drop_receipt_salt(customer_id)
    # Salts left by a crash after the shred committed (receipt not yet handed out) or
    # before its intent (nothing began).
    for customer_id in vault._keys.store.receipt_salt_customers():
        if _state(vault, customer_id) == "shredded":
            found = _find_shred(vault, customer_id, _salt(vault, customer_id))
            if found is not None:
                receipts.append(found)
        vault._keys.drop_receipt_salt(customer_id)
    return receipts


def _find_shred(vault: Vault, customer_id: str, salt: bytes) -> Receipt | None:
    """The receipt of a finished shred, found by its commitment (rare: crash recovery)."""
    rows = vault._data.read(
        lambda conn: conn.execute(
            select(log.c.seq, log.c.subject, log.c.body)
            .where(log.c.action == "customer.shred", log.c.outcome == "ok")
            .order_by(log.c.seq.desc())
        ).all()
    )
    for row in rows:
        subject = str(row.subject)
        detail = json.loads(row.body)["detail"]
        expected = customer_commitment(vault.vault_id, customer_id, bytes.fromhex(subject), salt)
        if detail.get("customer_commitment") == expected:
            return _receipt(vault, customer_id, int(row.seq), subject, salt)
    return None


def compact(
    vault: Vault, actor: str, role: str, progress: Callable[[int], None] | None = None
) -> int:
    """Delete the ciphertext rows of shredded customers, a batch per transaction (safe to
    interrupt: each batch commits with its own ``vault.compact`` entry). Returns rows removed."""
    removed = 0
    while True:

        def work(tx: Tx, first: bool = removed == 0) -> int:
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
                if first:  # log an empty run too: every decision is logged
                    tx.log(Event(actor, role, "vault.compact", detail={"records": 0}))
                return 0
            tx.conn.execute(delete(records).where(records.c.id.in_(ids)))
            crash_point("compact:batch")
            tx.log(Event(actor, role, "vault.compact", detail={"records": len(ids)}))
            return len(ids)

        n = vault._transact(work)
        if n == 0:
            return removed
        removed += n
        if progress is not None:
            progress(n)
