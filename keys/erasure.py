"""Erasure in place: how ``keys.db`` loses a customer's keys in time independent of its
size (docs/keys.md, "Erasure in place").

No cell holding key material ever moves: no index holds a subject tag, rows are only
appended, and destroyed rows are overwritten with filler of the same size (SQLite
rewrites an equal-sized record in its own cell), then the WAL is truncated. The filler
rows go when the keystore's *scrub epoch* closes (:func:`close_scrub_epoch`: the rows
deleted, the file rebuilt, the WAL truncated), once per :func:`scrub_every` shreds.
:class:`~keys.store.KeyStore` calls these; the SQL of its other tables lives there.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .connection import scrub_deleted, truncate_wal, write_transaction

__all__ = [
    "KEYS_PER_SHRED",
    "LAYOUT",
    "LAYOUT_KEY",
    "LIVE",
    "SCRUB_DUE",
    "SCRUB_EPOCH",
    "SCRUB_EVERY_MAX",
    "SCRUB_PENDING",
    "ScrubState",
    "close_scrub_epoch",
    "convert_layout",
    "get_meta",
    "note_destroyed",
    "overwrite_deks",
    "overwrite_tag",
    "purge_epoch",
    "scrub_every",
    "scrub_state",
]

# LAYOUT marks a keystore whose key cells never move (keystore meta LAYOUT_KEY).
LAYOUT_KEY = "layout"
LAYOUT = "in-place-v1"
SCRUB_DUE = "scrub_due"  # a scrub was begun or is owed (a crash left it): finish it
SCRUB_EPOCH = "scrub_epoch"  # the open scrub epoch: the next scrub closes it
SCRUB_PENDING = "scrub_pending"  # customers destroyed in the open epoch
# A destroyed row's customer id becomes '~' and its rowid in hex, padded with '~' to
# the id's own length: '~' sorts after every real id, so live rows are ``< '~'``.
LIVE = "customer_id < '~'"
_DESTROYED = "customer_id >= '~'"
_MARKER = f"substr('{'~' * 40}' || printf('%x', rowid), -length(customer_id))"
_FILLER_TS = f"substr('0000-00-00T00:00:00.000000Z{'~' * 40}', 1, length(created))"
_DEK_COLUMNS = "customer_id, version, epoch, wrapped, created"

# An epoch closes after one shred per KEYS_PER_SHRED keys held (1 to SCRUB_EVERY_MAX):
# the rebuild, whose cost grows with the keystore, then costs each shred about as much
# as rewriting that many keys, whatever the size.
KEYS_PER_SHRED = 400
SCRUB_EVERY_MAX = 1024


def scrub_every(keys: int) -> int:
    """How many customers destroyed in place close a scrub epoch, in a keystore that
    holds about ``keys`` customers' keys: 1 up to 800 keys, then one per 400 keys, at
    most :data:`SCRUB_EVERY_MAX`."""
    return max(1, min(SCRUB_EVERY_MAX, keys // KEYS_PER_SHRED))


@dataclass(frozen=True, slots=True)
class ScrubState:
    """Where the keystore's scrub epoch stands."""

    epoch: int  # the open epoch (1 for a keystore that never closed one)
    pending: int  # customers destroyed in place in it
    due: bool  # a scrub was begun and not finished (a crash, a bulk operation)
    keys: int  # about how many customers' keys the keystore holds

    @property
    def owed(self) -> bool:
        """Whether a scrub was begun and not finished, or filler rows wait for one."""
        return self.due or self.pending > 0

    @property
    def full(self) -> bool:
        """Whether the open epoch has its share of destroyed customers (:func:`scrub_every`)."""
        return self.pending >= scrub_every(self.keys)


def scrub_state(conn: sqlite3.Connection) -> ScrubState:
    """The scrub epoch's state; the key count is the newest rowid of the subject tags
    (O(log n), counting rows destroyed since the last scrub)."""
    (keys,) = conn.execute("SELECT max(rowid) FROM subject_tags").fetchone()
    return ScrubState(
        epoch=int(get_meta(conn, SCRUB_EPOCH) or 1),
        pending=int(get_meta(conn, SCRUB_PENDING) or 0),
        due=get_meta(conn, SCRUB_DUE) is not None,
        keys=int(keys or 0),
    )


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))


def note_destroyed(conn: sqlite3.Connection) -> None:
    """Count one more customer destroyed in the open scrub epoch."""
    _set_meta(conn, SCRUB_PENDING, str(int(get_meta(conn, SCRUB_PENDING) or 0) + 1))


def overwrite_deks(
    conn: sqlite3.Connection, where: str, params: tuple[object, ...]
) -> list[tuple[str, int, int, bytes, str]]:
    """Overwrite the DEK rows ``where`` selects in place (inside the caller's write
    transaction): every byte of the wrapped key becomes zero, the customer id a marker
    of the same length, the creation time filler of the same length. A record of the
    same size is rewritten in its own cell, so no copy is left where it was; deleting
    it instead could rebalance the page and leave copies of its neighbours in
    unallocated space. Returns the rows as they were; counts the customer once."""
    rows = [
        (str(c), int(v), int(e), bytes(w), str(t))
        for c, v, e, w, t in conn.execute(f"SELECT {_DEK_COLUMNS} FROM deks WHERE {where}", params)
    ]
    if rows:
        conn.execute(
            f"UPDATE deks SET customer_id = {_MARKER}, wrapped = zeroblob(length(wrapped)), "
            f"created = {_FILLER_TS} WHERE {where}",
            params,
        )
    return rows


def overwrite_tag(conn: sqlite3.Connection, customer_id: str) -> bool:
    """Overwrite a customer's subject-tag row in place (marker id, zero tag)."""
    done = conn.execute(
        f"UPDATE subject_tags SET customer_id = {_MARKER}, tag = zeroblob(length(tag)) "
        "WHERE customer_id = ?",
        (customer_id,),
    )
    return done.rowcount > 0


def close_scrub_epoch(conn: sqlite3.Connection, deadline_s: float) -> None:
    """Delete the filler rows, rebuild the file (``VACUUM``) and truncate the WAL
    (:func:`~keys.connection.scrub_deleted`), then open the next epoch. The mark set
    first stays until the rebuild is done: a crash between leaves a scrub that the next
    unlock finishes. Raises :class:`KeystoreError` if the keystore stays busy."""
    with write_transaction(conn):
        conn.execute(f"DELETE FROM deks WHERE {_DESTROYED}")
        conn.execute(f"DELETE FROM subject_tags WHERE {_DESTROYED}")
        _set_meta(conn, SCRUB_DUE, "1")
    scrub_deleted(conn, deadline_s)
    with write_transaction(conn):
        epoch = int(get_meta(conn, SCRUB_EPOCH) or 1)
        conn.execute("DELETE FROM meta WHERE k IN (?, ?)", (SCRUB_DUE, SCRUB_PENDING))
        _set_meta(conn, SCRUB_EPOCH, str(epoch + 1))
    truncate_wal(conn, deadline_s)


def purge_epoch(conn: sqlite3.Connection, epoch: int) -> None:
    """Delete the filler rows of a KEK epoch about to be deleted (its foreign key)."""
    conn.execute(f"DELETE FROM deks WHERE epoch = ? AND {_DESTROYED}", (epoch,))


def convert_layout(conn: sqlite3.Connection, deadline_s: float) -> None:
    """A keystore from before in-place erasure: its subject tags had a UNIQUE index,
    whose B-tree moves tags between pages as it grows and leaves stale copies behind.
    Rebuild that table without it (one transaction), then close a scrub epoch, so from
    here on no key cell ever moves."""
    with write_transaction(conn):
        if get_meta(conn, LAYOUT_KEY) == LAYOUT:
            return  # another process converted it first
        conn.execute(
            "CREATE TABLE subject_tags_in_place (customer_id TEXT PRIMARY KEY, tag BLOB NOT NULL)"
        )
        conn.execute(
            "INSERT INTO subject_tags_in_place (customer_id, tag) "
            "SELECT customer_id, tag FROM subject_tags ORDER BY rowid"
        )
        conn.execute("DROP TABLE subject_tags")
        conn.execute("ALTER TABLE subject_tags_in_place RENAME TO subject_tags")
        _set_meta(conn, LAYOUT_KEY, LAYOUT)
        if get_meta(conn, SCRUB_EPOCH) is None:
            _set_meta(conn, SCRUB_EPOCH, "1")
    close_scrub_epoch(conn, deadline_s)
