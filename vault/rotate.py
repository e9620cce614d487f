"""Key rotation (DESIGN §3): KEK epochs, per-customer DEK versions, passphrase change,
and the key-age status report. Every step is logged, key events get a checkpoint, and
each can be interrupted at any point and run again to finish.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from ..keys import KdfParams, KeystoreError, SecretBytes, needs_rehash, recommended_params
from .actor import Actor
from .cadence import routine_status
from .clock import format_ts, parse_ts
from .context import Tx, VaultContext
from .errors import (
    LogPendingError,
    SchemaError,
    StorageError,
    VaultError,
    keys_errors,
)
from .faults import crash_point
from .keycopies import backup_key_copies
from .log import Event
from .store import RARE_WHERE, log

__all__ = [
    "KeyPolicy",
    "KeyStatus",
    "change_passphrase",
    "key_status",
    "log_pending_key_event",
    "retire_epoch",
    "rotate_kek",
]

_BATCH = 2000


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Maximum key ages (days) that ``keys status`` checks."""

    max_kek_age_days: int = 365
    max_dek_age_days: int = 730


@dataclass(frozen=True, slots=True)
class KeyStatus:
    active_epoch: int
    active_epoch_created: str
    active_epoch_age_days: float
    deks_per_epoch: dict[int, int]
    oldest_dek_created: str | None
    oldest_dek_age_days: float | None
    key_source: str
    kdf: dict[str, int] | None
    kdf_recommended: dict[str, int]
    rehash_due: bool
    last_rotation: str | None
    violations: list[str] = field(default_factory=list)
    #: The key-copy clock: over unexpired recorded backups, customers shredded after
    #: the backup was taken whose keys that copy still holds.
    backup_key_copies: int = 0
    #: If this vault was restored from a backup with a window of unknown shreds
    #: accepted (docs/backup.md): ``{"from_seq", "from_head", "from_ts", "to"}`` of the
    #: last restore. Customers shredded in that window elsewhere may be readable here.
    unreplayed_window: dict[str, Any] | None = None
    #: restore drills and access reviews against their intervals (vault/routine.py),
    #: with ``warnings`` for each that is overdue (apart from the key ``violations``)
    routine: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "active_epoch": self.active_epoch,
            "active_epoch_created": self.active_epoch_created,
            "active_epoch_age_days": round(self.active_epoch_age_days, 2),
            "deks_per_epoch": {str(k): v for k, v in self.deks_per_epoch.items()},
            "oldest_dek_created": self.oldest_dek_created,
            "oldest_dek_age_days": None
            if self.oldest_dek_age_days is None
            else round(self.oldest_dek_age_days, 2),
            "key_source": self.key_source,
            "kdf": self.kdf,
            "kdf_recommended": self.kdf_recommended,
            "rehash_due": self.rehash_due,
            "last_rotation": self.last_rotation,
            "backup_key_copies": self.backup_key_copies,
            "unreplayed_window": self.unreplayed_window,
            "routine": self.routine,
            "violations": list(self.violations),
        }


def _days(delta: timedelta) -> float:
    return delta.total_seconds() / 86400


def rotate_kek(
    ctx: VaultContext,
    actor: Actor,
    *,
    retire: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Make a new KEK epoch and re-wrap every DEK under it in batches (or finish an
    interrupted rotation); with ``retire``, delete the epochs no DEK uses any more."""
    actor.authorize("admin", "keys.rotate-kek")
    keyring = ctx.keys
    with keys_errors("KEK rotation could not start"):
        epoch, new = keyring.epochs.begin_kek_rotation(ctx.now())
    _log(ctx, actor, "keys.rotate-kek.start", {"epoch": epoch, "resumed": not new}, checkpoint=True)
    total = 0
    while True:
        with keys_errors("KEK rotation stopped (run it again to finish)"):
            n = keyring.epochs.rewrap_batch(_BATCH)
        if n == 0:
            break
        total += n
        _log(ctx, actor, "keys.rotate-kek.batch", {"epoch": epoch, "deks": n})
        crash_point("rotate-kek:batch")
        if progress is not None:
            progress(n)
    _log(ctx, actor, "keys.rotate-kek.done", {"epoch": epoch, "deks": total}, checkpoint=True)
    keyring.epochs.finish_kek_rotation()
    retired = (
        [retire_epoch(ctx, actor, e) for e in keyring.epochs.retirable_epochs()] if retire else []
    )
    return {"epoch": epoch, "new_epoch": new, "rewrapped": total, "retired": retired}


def retire_epoch(ctx: VaultContext, actor: Actor, epoch: int) -> int:
    """Delete one unused, inactive KEK epoch (its bytes leave keys.db and its WAL)."""
    actor.authorize("admin", "keys.retire-epoch")
    keyring = ctx.keys
    pending, event_id = _pending(ctx, actor, "keys.retire-epoch", {"epoch": epoch})
    with keys_errors(bad_key=StorageError):
        fp = keyring.retire_epoch(epoch, pending_event=pending)
    crash_point("retire-epoch:after-keys")
    # The deletion is committed: record it before anything else can fail.
    truncated = _truncate(keyring)
    detail = {"epoch": epoch, "key_fingerprint": fp, "wal_truncated": truncated, "event": event_id}
    _log_committed(ctx, actor, "keys.retire-epoch", detail, f"epoch {epoch} was deleted")
    _clear_pending(keyring)
    if not truncated:
        raise StorageError(
            f"epoch {epoch} is deleted but the keystore WAL could not be truncated yet "
            "(another process holds it open); its bytes leave the WAL at the next truncation"
        )
    return epoch


def _truncate(keyring: Any) -> bool:
    try:
        keyring.store.scrub()
    except KeystoreError:
        return False
    return True


def change_passphrase(
    ctx: VaultContext,
    actor: Actor,
    *,
    passphrase: bytes | None = None,
    keyfile_key: SecretBytes | None = None,
    params: KdfParams | None = None,
) -> None:
    """Re-wrap the KEK epochs, signing seed and MAC seed under a new passphrase (or
    keyfile): O(epochs); principals' tokens keep working. The old secret stops working
    at once; a crash leaves exactly one of them working (one keystore transaction)."""
    actor.authorize("admin", "keys.change-passphrase")
    source = "passphrase" if passphrase is not None else "keyfile"
    detail = {"key_source": source}
    pending, event_id = _pending(ctx, actor, "keys.change-passphrase", detail)
    # A new secret that cannot be used (e.g. empty) is bad input, not a failed unlock;
    # a wrong-key error means another process changed the secret meanwhile.
    with keys_errors("the passphrase could not be changed", bad_key=SchemaError):
        ctx.keys.change_root(
            passphrase=passphrase, keyfile_key=keyfile_key, params=params, pending_event=pending
        )
    crash_point("change-passphrase:after-keys")
    _log_committed(
        ctx,
        actor,
        "keys.change-passphrase",
        {**detail, "event": event_id},
        f"the vault's {source} WAS changed: only the new one opens it",
    )
    _clear_pending(ctx.keys)


def key_status(ctx: VaultContext, actor: Actor, policy: KeyPolicy | None = None) -> KeyStatus:
    """Key ages, DEKs per epoch, KDF parameters against today's recommendation, the
    last rotation and policy violations. Logged as ``keys.status``."""
    policy = policy or KeyPolicy()
    actor.authorize("audit", "keys.status")
    store = ctx.keys.store
    now = ctx.clock()
    active = ctx.keys.active_epoch
    created = {e: c for e, c, _n in store.epoch_rows()}
    epoch_age = _days(now - parse_ts(created[active]))
    oldest = store.oldest_dek()
    oldest_age = None if oldest is None else _days(now - parse_ts(oldest))
    kdf = ctx.keys.kdf_params
    rec = recommended_params()
    last = ctx.data.read(
        lambda conn: conn.execute(
            select(log.c.ts)
            .where(RARE_WHERE, log.c.action.in_(["keys.rotate-kek.done", "keys.rotate-dek"]))
            .order_by(log.c.seq.desc())
            .limit(1)
        ).scalar()
    )
    violations = []
    if epoch_age > policy.max_kek_age_days:
        violations.append(
            f"active KEK epoch is {epoch_age:.0f} days old (policy {policy.max_kek_age_days})"
        )
    if oldest_age is not None and oldest_age > policy.max_dek_age_days:
        violations.append(
            f"oldest DEK is {oldest_age:.0f} days old (policy {policy.max_dek_age_days})"
        )
    rehash = kdf is not None and needs_rehash(kdf)
    if rehash:
        violations.append("KDF parameters are below today's recommendation: change the passphrase")
    copies = ctx.data.read(lambda conn: backup_key_copies(conn, format_ts(now)))
    restored = ctx.data.read(
        lambda conn: conn.execute(
            select(log.c.body)
            .where(RARE_WHERE, log.c.action == "vault.restore")
            .order_by(log.c.seq.desc())
            .limit(1)
        ).scalar()
    )
    window = None if restored is None else json.loads(restored)["detail"].get("unreplayed_window")
    routine = routine_status(ctx)
    _log(ctx, actor, "keys.status", {"violations": len(violations)}, gate="audit")
    return KeyStatus(
        active_epoch=active,
        active_epoch_created=created[active],
        active_epoch_age_days=epoch_age,
        deks_per_epoch=store.dek_counts(),
        oldest_dek_created=oldest,
        oldest_dek_age_days=oldest_age,
        key_source=ctx.keys.key_source,
        kdf=None if kdf is None else kdf.to_dict(),
        kdf_recommended=rec.to_dict(),
        rehash_due=rehash,
        last_rotation=last,
        violations=violations,
        backup_key_copies=copies,
        unreplayed_window=window,
        routine={**routine.to_json(), "warnings": routine.warnings()},
    )


def _log(
    ctx: VaultContext,
    actor: Actor,
    action: str,
    detail: dict[str, Any],
    *,
    checkpoint: bool = False,
    gate: str | None = None,
) -> None:
    """Log one key event; with ``gate``, the actor is checked for that action in the
    same transaction (what the call returns is only returned once that holds)."""

    def work(tx: Tx) -> None:
        if gate is not None:
            actor.gate(tx.conn, gate, action)
        tx.log(actor.event(action, detail=detail))

    ctx.transact(work, checkpoint=checkpoint)


def _log_committed(
    ctx: VaultContext, actor: Actor, action: str, detail: dict[str, Any], what: str
) -> None:
    """Log a key event whose keystore change has committed (and cannot be undone): if
    the entry cannot be written now, :class:`LogPendingError` says the change stands
    (the keystore keeps the entry, and the next open writes it)."""
    try:
        _log(ctx, actor, action, detail, checkpoint=True)
    except VaultError as error:
        raise LogPendingError(
            f"{what}; its log entry could not be written yet ({error}) and will be written "
            "at the vault's next open"
        ) from None


# -- key events the keystore committed but the log may not have --------------------------


def _pending(
    ctx: VaultContext, actor: Actor, action: str, detail: dict[str, Any]
) -> tuple[str, str]:
    """The log entry a keystore change owes, kept in the keystore in the same
    transaction as the change: if the process dies before logging it, the next open
    logs it (:func:`log_pending_key_event`). Returns (its text, its event id)."""
    event_id = secrets.token_hex(8)
    text = json.dumps(
        {
            "action": action,
            "actor": actor.name,
            "role": actor.role.name,
            "after": ctx.head().seq,
            "detail": {**detail, "event": event_id},
        },
        sort_keys=True,
    )
    return text, event_id


def _clear_pending(keyring: Any) -> None:
    # Logged already: if clearing fails, the next open finds the entry and clears it.
    with contextlib.suppress(KeystoreError):
        keyring.epochs.clear_pending_event()


def log_pending_key_event(ctx: VaultContext) -> bool:
    """At open: log a key event whose keystore change committed but whose log entry a
    crash prevented (once: an entry with its event id after its seq counts as logged).
    Returns whether an entry was written."""
    raw = ctx.keys.epochs.pending_event()
    if raw is None:
        return False
    pending = json.loads(raw)
    event_id = pending["detail"]["event"]

    def logged(conn: Connection) -> bool:
        rows = conn.execute(
            select(log.c.body).where(
                log.c.seq > int(pending["after"]), log.c.action == pending["action"]
            )
        )
        return any(json.loads(body)["detail"].get("event") == event_id for (body,) in rows)

    wrote = False
    if not ctx.data.read(logged):

        def work(tx: Tx) -> None:
            detail = {**pending["detail"], "recovered": True}
            tx.log(Event(pending["actor"], pending["role"], pending["action"], detail=detail))

        ctx.transact(work, checkpoint=True)
        wrote = True
    _clear_pending(ctx.keys)
    return wrote
