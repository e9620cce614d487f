"""Upgrading a vault made before key separation, at its first open (issue 16).

Before, the root key itself wrapped the KEK epochs and signing seed and made the
key-check value (keystore schema 1), and principals' tokens were stored as plain
SHA-256 (data store schema 1), so anyone able to write ``sv_principals`` could add a
token of their choosing. Now the root key only gives subkeys, and a token's stored
verifier is ``HMAC(token-MAC key, SHA-256(token))`` (keys/subkeys.py, keys/tokenmac.py),
which an old row can be turned into without its token.

The upgrade, in this order (docs/decisions.md says why):

1. read the data store's principals and compute each one's new verifier from its
   stored SHA-256 (under the MAC seed the keystore is about to store);
2. ONE keystore transaction: re-wrap under the wrap subkey, store the MAC seed, the new
   key-check value and schema 2, and keep step 1's verifiers, by lookup id, as the
   pending upgrade. Only the keystore decides that a conversion is due, and only for
   the rows it saw here: a row written into the data store later is never converted;
3. ONE data-store transaction: set those verifiers, data schema 2, and log one
   ``vault.migrate`` entry (counts only) with the upgrade's event id;
4. clear the pending upgrade in the keystore.

A crash anywhere leaves each store in exactly one scheme, and the next open finishes
from the pending upgrade: step 3 is skipped when its entry (found by event id) already
exists, so it is logged once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from ..keys import KeystoreError
from .actor import ADMIN
from .context import Tx, VaultContext
from .errors import StorageError, keys_errors
from .faults import crash_point
from .log import Event
from .store import log, log_head, meta, principals
from .tombstone import (
    TOMBSTONES_FORMAT,
    TOMBSTONES_KEY,
    coarsen_tombstones,
    rebuild_without_rowid,
    scrub_wal,
)

__all__ = ["MIGRATE_ACTION", "unlink_tombstones", "upgrade_stores"]

MIGRATE_ACTION = "vault.migrate"
#: the data schema this upgrade brings a store to (token verifiers as MACs); schema 3
#: (authenticated rows) follows in vault/rowmigrate.py
TOKEN_SCHEMA = 2
_DIGEST_HEX = 64


def upgrade_stores(ctx: VaultContext) -> bool:
    """Upgrade a vault's stores from before key separation, or finish an upgrade a
    crash cut short; nothing to do for a vault made or upgraded already. Returns
    whether a ``vault.migrate`` entry was written. Raises :class:`StorageError` when a
    store cannot be written (the next open tries again)."""
    keys = ctx.keys
    if keys.upgrade_due:
        note = ctx.data.read(lambda conn: _conversion_note(ctx, conn))
        with keys_errors("the keystore could not be upgraded"):
            keys.upgrade_keystore(json.dumps(note, sort_keys=True), ctx.now())
        crash_point("migrate:after-keystore")
    with keys_errors():
        pending = keys.upgrade_pending()
    if pending is None:
        return False
    try:
        note = json.loads(pending.note)
        event, after, data_from = str(note["event"]), int(note["after"]), int(note["data_from"])
        verifiers = {str(k): str(v) for k, v in dict(note["verifiers"]).items()}
    except (ValueError, KeyError, TypeError):
        raise StorageError("the keystore's pending upgrade note is damaged") from None
    keystore = {
        "from": pending.from_schema,
        "to": pending.to_schema,
        "kek_epochs": pending.kek_epochs,
        "signing_seeds": pending.signing_seeds,
    }

    def work(tx: Tx) -> bool:
        if _logged(tx.conn, event, after):
            return False  # an earlier open did this, then died before step 4
        present = set(tx.conn.execute(select(principals.c.lookup)).scalars())
        rows = [{"lk": k, "mac": v} for k, v in sorted(verifiers.items()) if k in present]
        if rows:
            tx.conn.execute(
                update(principals)
                .where(principals.c.lookup == bindparam("lk"))
                .values(token_hash=bindparam("mac")),
                rows,
            )
        if data_from < TOKEN_SCHEMA:
            tx.conn.execute(
                update(meta).where(meta.c.k == "schema_version").values(v=str(TOKEN_SCHEMA))
            )
        detail: dict[str, Any] = {
            "event": event,
            "keystore": keystore,
            "data": {"from": data_from, "to": max(data_from, TOKEN_SCHEMA)},
            "principals": {"converted": len(rows), "not_converted": len(present) - len(rows)},
        }
        tx.log(Event(ADMIN, ADMIN, MIGRATE_ACTION, detail=detail))
        return True

    wrote = ctx.transact(work, checkpoint=True)
    crash_point("migrate:after-data")
    # Logged already: if forgetting fails, the next open finds the entry and forgets.
    with contextlib.suppress(KeystoreError):
        keys.clear_upgrade_pending()
    return wrote


def _conversion_note(ctx: VaultContext, conn: Connection) -> dict[str, Any]:
    """What the keystore keeps for step 3: each principal's new verifier by lookup id
    (from the SHA-256 its row holds now), the data store's schema and log head."""
    version = conn.execute(select(meta.c.v).where(meta.c.k == "schema_version")).scalar()
    data_from = int(version or 0)
    head = conn.execute(select(log_head.c.seq).where(log_head.c.id == 1)).scalar()
    verifiers: dict[str, str] = {}
    if data_from < TOKEN_SCHEMA:  # a data store already upgraded holds MACs: keep them
        for lookup, stored in conn.execute(select(principals.c.lookup, principals.c.token_hash)):
            digest = _sha256_hex(str(stored))
            if digest is not None:  # a damaged value stays as it is: it matches no token
                verifiers[str(lookup)] = ctx.keys.token_mac_of_digest(digest)
    return {
        "event": secrets.token_hex(8),
        "after": int(head or 0),
        "data_from": data_from,
        "verifiers": verifiers,
    }


def _sha256_hex(text: str) -> bytes | None:
    if len(text) != _DIGEST_HEX:
        return None
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        return None
    return digest if len(digest) * 2 == _DIGEST_HEX else None


def _logged(conn: Connection, event: str, after: int) -> bool:
    """Whether a ``vault.migrate`` entry with this event id follows seq ``after``."""
    rows = conn.execute(select(log.c.body).where(log.c.seq > after, log.c.action == MIGRATE_ACTION))
    for (body,) in rows:
        try:
            if json.loads(body)["detail"]["event"] == event:
                return True
        except (ValueError, KeyError, TypeError):
            continue  # not an entry this code wrote: it does not count
    return False


def unlink_tombstones(ctx: VaultContext) -> bool:
    """Bring an older data store's tombstones up to docs/shredding.md ("Unlinkability"),
    at open, once: on SQLite rebuild ``sv_customers`` without its rowid (rows in id
    order), and rewrite every tombstone with its shred day as both dates. One
    ``vault.migrate`` entry (``detail.step = "tombstones"``, counts only) and the
    ``tombstones`` mark in ``sv_meta`` commit together; a data store with the mark (every
    vault made since) costs one row read. Returns whether it upgraded. Record rows of
    customers shredded before are left to ``compact`` (logged batches). Raises
    :class:`StorageError` if a store refuses (the next open tries again; the rebuild is
    one transaction, and repeating it finds it done)."""
    if ctx.data.read(_tombstones_marked):
        return False
    rebuilt = rebuild_without_rowid(ctx.data)

    def work(tx: Tx) -> bool:
        if _tombstones_marked(tx.conn):  # another process upgraded it meanwhile
            return False
        coarsened = coarsen_tombstones(
            tx.conn, ctx.data.is_sqlite, ctx.keys.row_auth, tx.next_seq()
        )
        tx.conn.execute(insert(meta).values(k=TOMBSTONES_KEY, v=TOMBSTONES_FORMAT))
        detail = {"step": "tombstones", "rebuilt_without_rowid": rebuilt, "tombstones": coarsened}
        tx.log(Event(ADMIN, ADMIN, MIGRATE_ACTION, detail=detail))
        return True

    wrote = ctx.transact(work)
    if wrote:
        scrub_wal(ctx.data)
    return wrote


def _tombstones_marked(conn: Connection) -> bool:
    """Whether the data store's tombstones are already in a form this code wrote (any
    mark: a newer form is a newer code's business)."""
    return conn.execute(select(meta.c.v).where(meta.c.k == TOMBSTONES_KEY)).scalar() is not None
