"""Reconciliation at open: the keystore and the log must agree (docs/shredding.md).

The data store is untrusted for integrity, and an old copy of keys.db may be put back:
either way the keystore may hold the keys of a customer whose shred the vault's own
log records. Before the vault serves, :func:`reconcile` finds every such customer and
erases it again: its keys destroyed (one keystore transaction, then the scrub the shred
protocol uses), its row set to the shredded tombstone, one entry each, by the vault.

**What counts as a recorded shred.** An ``ok`` ``customer.shred`` or
``customer.shred-intent`` entry, read from the exact hashed bytes of an entry that this
open's chain verification covered (:meth:`VaultContext.check_anchor` runs from the mark
on, and hands each entry to :meth:`ClaimScan.observe` in the same pass), whose subject
tag the keystore still maps to a customer, **and** whose ``key_fingerprints`` name at
least one of the wrapped keys the keystore holds for that customer. The last condition
is the one a data-store writer cannot meet: a wrapped key's fingerprint exists only in
keys.db and in the shred entries of that very key, so an entry appended to the log
(and then signed by the vault's next checkpoint, which signs whatever precedes it)
cannot make the vault erase anyone. A recorded shred whose fingerprints do not match
(a forged entry, or a keys.db from before a key rotation) is *unconfirmed*: nothing is
destroyed; if the customer's row says ``active`` the vault refuses to open
(:class:`AuditChainError`, reason ``unconfirmed shred``), otherwise the customer stays
refused (:class:`StateConflictError` on access) and one error entry records it.

**The mark.** Keystore meta ``reconciled_seq`` is the seq up to which the log has been
reconciled with *this* keystore. An open reads only the entries after it and moves it
to the head it verified; a close moves it to the head when no shred is mid-way
(:func:`advance_mark`), so the next open reads almost nothing. An old keys.db put back
carries its own, older mark: its first open reads the log again from there.

**Crashes.** The entries and rows are written first, then the keys destroyed, then the
mark moved; a ``reconcile_pending`` mark in the keystore meanwhile keeps any close
from moving the mark. A crash anywhere leaves the mark where it was, so the next open
finds the same shreds again, sees its own entries among them and does not log twice.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ..keys import KeyStore, fingerprint
from .actor import Actor, system_actor
from .context import Tx, VaultContext
from .errors import AuditChainError, VaultError, keys_errors
from .faults import crash_point
from .lifecycle import LIFECYCLE_KEY
from .log import Event, LogEntry
from .shred import shred_lock
from .store import customers
from .tombstone import scrub_wal, tombstone_window, write_tombstones

__all__ = [
    "PENDING_KEY",
    "RECONCILED_SEQ_KEY",
    "RECONCILE_ACTION",
    "Claim",
    "ClaimScan",
    "Plan",
    "Target",
    "advance_mark",
    "plan_reconcile",
    "read_mark",
    "reconcile",
    "refuse_unconfirmed",
]

#: the entry recording that keys of an already finished shred were destroyed again
RECONCILE_ACTION = "customer.reconcile"
#: keystore meta: the log seq reconciled up to with this keystore
RECONCILED_SEQ_KEY = "reconciled_seq"
#: keystore meta: set while a reconciliation is under way (no close moves the mark then)
PENDING_KEY = "reconcile_pending"

_SHRED = "customer.shred"
_INTENT = "customer.shred-intent"
# A body the vault wrote is canonical JSON, so "action" is its first key: these
# prefixes pick out the candidates in C before any JSON is parsed.
_PREFIXES = tuple(b'{"action":"' + a.encode("ascii") + b'"' for a in (_SHRED, _INTENT))
_RECONCILE_PREFIX = b'{"action":"' + RECONCILE_ACTION.encode("ascii") + b'"'
_TAG_SIZE = 16  # bytes of a subject tag (keys.SUBJECT_TAG_SIZE)


@dataclass(slots=True)
class Claim:
    """What the verified log says, after the mark, about one subject tag."""

    first_seq: int
    fingerprints: set[str] = field(default_factory=set)
    #: seq of the last ``customer.shred`` entry (the shred finished), if any
    shred_seq: int | None = None
    #: seq and detail of the last ``customer.shred-intent`` entry, if any
    intent: tuple[int, dict[str, Any]] | None = None


@dataclass(slots=True)
class ClaimScan:
    """Collects, from entries after seq ``after`` as verification reads them, the
    shreds the log records (by subject tag), and the tags whose recovery entry (or
    unconfirmed-shred entry) the vault already wrote."""

    after: int
    claims: dict[bytes, Claim] = field(default_factory=dict)
    recovered: set[bytes] = field(default_factory=set)
    noted: set[bytes] = field(default_factory=set)

    def observe(self, entry: LogEntry) -> None:
        """Look at one entry (called for every entry verification reads)."""
        if entry.seq <= self.after:
            return
        body = entry.body
        if body.startswith(_PREFIXES):
            parsed = _parse(body)
            if parsed is None or parsed[1] != "ok":
                return
            action, _outcome, tag, detail = parsed
            claim = self.claims.get(tag)
            if claim is None:
                claim = self.claims[tag] = Claim(entry.seq)
            prints = detail.get("key_fingerprints")
            if isinstance(prints, list):
                claim.fingerprints.update(p for p in prints if isinstance(p, str))
            if action == _SHRED:
                claim.shred_seq = entry.seq
                if detail.get("recovered") is True:
                    self.recovered.add(tag)
            else:
                claim.intent = (entry.seq, detail)
        elif body.startswith(_RECONCILE_PREFIX):
            parsed = _parse(body)
            if parsed is not None:
                (self.recovered if parsed[1] == "ok" else self.noted).add(parsed[2])


def _parse(body: bytes) -> tuple[str, str, bytes, dict[str, Any]] | None:
    """(action, outcome, subject tag, detail) of an entry body, or None if it is not
    an entry about a subject. Verified bytes may still be anything a data-store writer
    appended, so nothing is assumed of their shape."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    action, outcome = raw.get("action"), raw.get("outcome")
    subject, detail = raw.get("subject"), raw.get("detail")
    if not (isinstance(action, str) and isinstance(outcome, str)):
        return None
    if not isinstance(subject, str) or not isinstance(detail, dict):
        return None
    try:
        tag = bytes.fromhex(subject)
    except ValueError:
        return None
    return (action, outcome, tag, detail) if len(tag) == _TAG_SIZE else None


@dataclass(frozen=True, slots=True)
class Target:
    """A customer the log says was shredded whose keys (or tag) the keystore holds."""

    customer: str
    tag: bytes
    #: its data-store row's state; None if the row is gone
    state: str | None
    claim: Claim
    #: fingerprints of the wrapped keys the keystore holds for it, by version
    prints: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    """What reconciliation will do: ``confirmed`` customers are erased again;
    ``unconfirmed`` ones keep their keys (the log's word is not enough); ``hold``
    is the seq the mark may not pass (a crashed shred that roll-forward finishes)."""

    confirmed: list[Target] = field(default_factory=list)
    unconfirmed: list[Target] = field(default_factory=list)
    hold: int | None = None


def plan_reconcile(ctx: VaultContext, scan: ClaimScan) -> Plan:
    """Match the recorded shreds against the keystore and the rows (reads only)."""
    out = Plan()
    if not scan.claims:
        return out
    store = ctx.keys.store
    owners = store.customers_for_tags(list(scan.claims))
    if not owners:
        return out
    ids = sorted(owners.values())
    held: dict[str, list[tuple[int, str]]] = {}
    for row in store.deks(ids):
        held.setdefault(row.customer_id, []).append((row.version, fingerprint(row.wrapped)))
    states = {
        str(r.id): str(r.state)
        for r in ctx.read_in(select(customers.c.id, customers.c.state), customers.c.id, ids)
    }
    salted = set(store.receipt_salt_customers())
    for tag, cid in sorted(owners.items(), key=lambda item: item[1]):
        claim = scan.claims[tag]
        state = states.get(cid)
        if state == "shredding" and cid in salted:
            # A shred a crash interrupted, with its receipt salt: roll-forward finishes
            # it and issues the receipt. Until it has, the mark stays before it.
            out.hold = min(claim.first_seq, out.hold or claim.first_seq)
            continue
        prints = tuple(fp for _v, fp in sorted(held.get(cid, [])))
        target = Target(cid, tag, state, claim, prints)
        if not prints or set(prints) & claim.fingerprints:
            out.confirmed.append(target)
        else:
            out.unconfirmed.append(target)
    return out


def refuse_unconfirmed(plan: Plan) -> None:
    """Raise :class:`AuditChainError` if the log records the shred of a customer whose
    row says ``active`` and whose keys the keystore holds, but not the keys that shred
    names: the vault will neither erase on the log's word alone nor serve a customer
    its log says is gone."""
    active = [t for t in plan.unconfirmed if t.state == "active"]
    if active:
        seq = min(t.claim.first_seq for t in active)
        raise AuditChainError(
            f"the access log records the shred of {len(active)} active customer(s) (first at "
            f"seq {seq}) whose keys in the keystore are not the keys that shred names: the "
            "data store was altered, or keys.db was put back from before a key rotation. "
            "The vault refuses to serve; put back the current keys.db or restore a backup "
            "(docs/shredding.md)",
            reason="unconfirmed shred",
            seq=seq,
        )


def reconcile(ctx: VaultContext, scan: ClaimScan, verified_to: int) -> list[str]:
    """Erase again every customer whose shred the log confirms but whose keys the
    keystore still holds; record unconfirmed ones; move the mark to ``verified_to``
    (the head this open verified). Returns the ids of the customers erased again.

    Runs under the shred lock. Raises :class:`AuditChainError` (see
    :func:`refuse_unconfirmed`) or :class:`StorageError`; a crash or a failure leaves
    the mark where it was, so the next open finishes the work, logging nothing twice."""
    with shred_lock(ctx):
        plan = plan_reconcile(ctx, scan)
        refuse_unconfirmed(plan)
        store = ctx.keys.store
        if plan.confirmed or plan.unconfirmed:
            begin = keys_errors("cannot begin reconciling the keystore with the log")
            with begin, store.transaction() as conn:
                store.set_meta(conn, PENDING_KEY, "1")
            actor = system_actor(ctx)
            for target in plan.confirmed:
                _record_recovery(ctx, actor, target, scan)
            if plan.confirmed:
                scrub_wal(ctx.data)
            for target in plan.unconfirmed:
                if target.tag not in scan.noted:
                    _record_unconfirmed(ctx, actor, target)
            crash_point("reconcile:after-entries")
            ids = [t.customer for t in plan.confirmed]
            if ids:
                erase = keys_errors(
                    "the recovery is logged but the keys could not be erased yet "
                    "(open the vault again to finish it)"
                )
                with erase, ctx.keys.scrub_once():
                    ctx.keys.destroy_customers(ids)
            crash_point("reconcile:after-keys")
        upto = verified_to if plan.hold is None else min(verified_to, plan.hold - 1)
        _move_mark(store, upto, clear_pending=True)
        return [t.customer for t in plan.confirmed]


def _record_recovery(ctx: VaultContext, actor: Actor, target: Target, scan: ClaimScan) -> None:
    """The row set to the tombstone and the recovery entry, in one transaction with a
    checkpoint at the entry (as for every shred)."""

    def work(tx: Tx) -> None:
        state = tx.conn.execute(
            select(customers.c.state).where(customers.c.id == target.customer)
        ).scalar()
        if state is not None and state != "shredded":
            write_tombstones(
                tx.conn,
                ctx.data.is_sqlite,
                ctx.keys.row_auth,
                [target.customer],
                tombstone_window(ctx.clock()),
                tx.next_seq(),
            )
        if target.tag not in scan.recovered:
            tx.log(_recovery_event(actor, target, None if state is None else str(state)))

    ctx.transact(work, checkpoint=True)


def _recovery_event(actor: Actor, target: Target, state: str | None) -> Event:
    claim = target.claim
    marks = {"recovered": True, "reason_code": "reconciled"}
    subject = target.tag.hex()
    if claim.shred_seq is None and claim.intent is not None:
        # The shred never finished: this entry finishes it, as roll-forward does, so
        # everything that counts shreds (reports, backup replay) sees it exactly once.
        seq, detail = claim.intent
        return actor.event(_SHRED, subject=subject, detail={**detail, "intent_seq": seq, **marks})
    return actor.event(
        RECONCILE_ACTION,
        subject=subject,
        detail={
            **marks,
            "shred_seq": claim.shred_seq,
            "key_fingerprints": list(target.prints),
            "row_state": state or "missing",
        },
    )


def _record_unconfirmed(ctx: VaultContext, actor: Actor, target: Target) -> None:
    event = actor.event(
        RECONCILE_ACTION,
        outcome="error",
        subject=target.tag.hex(),
        detail={
            "reason_code": "unconfirmed_shred",
            "claim_seq": target.claim.first_seq,
            "row_state": target.state or "missing",
        },
    )
    ctx.transact(lambda tx: tx.log(event))


def read_mark(store: KeyStore) -> int:
    """The log seq reconciled up to with this keystore (0: never, read from the start)."""
    raw = store.get_meta(RECONCILED_SEQ_KEY)
    return int(raw) if raw is not None and raw.isdigit() else 0


def _move_mark(store: KeyStore, seq: int, *, clear_pending: bool) -> None:
    """Move the mark forward to ``seq`` (never back), in one keystore transaction."""
    if seq <= read_mark(store) and not (clear_pending and store.get_meta(PENDING_KEY)):
        return  # nothing to write
    failing = keys_errors("cannot record how far the log is reconciled")
    with failing, store.transaction() as conn:
        if seq > read_mark(store):  # re-read inside the write transaction
            store.set_meta(conn, RECONCILED_SEQ_KEY, str(seq))
        if clear_pending:
            store.delete_meta(conn, PENDING_KEY)


def advance_mark(ctx: VaultContext) -> None:
    """At close: move the mark to the head if no shred is mid-way, so the next open
    reads almost nothing. Best effort (a failure only means more to read next time).

    Safe without the shred lock because of the order: the head is read first, then the
    keystore. A shred draws its receipt salt before its intent is logged and deletes
    it only once its keys are gone, and a reconciliation or a decommission marks the
    keystore before logging; so every shred entry up to that head either belongs to a
    shred whose keys this keystore no longer holds, or left a salt or mark that is
    still there (and then the mark stays)."""
    if ctx.closed or ctx.lifecycle is not None:
        return
    with contextlib.suppress(VaultError), keys_errors():
        head = ctx.head().seq
        store = ctx.keys.store
        if store.get_meta(LIFECYCLE_KEY) is not None or store.get_meta(PENDING_KEY) is not None:
            return
        if store.receipt_salt_customers():
            return
        _move_mark(store, head, clear_pending=False)
