"""Tombstones that do not link (issue 16, item 5; docs/shredding.md, "Unlinkability").

A shredded customer's row — its tombstone — must not lead from the customer id back to
the subject tag that names it in the old log entries. This module is the one place that
writes tombstones (:func:`write_tombstones`) and the one place that decides what a
tombstone keeps (:func:`tombstone_values`), and it owns the physical side of the same
promise: the order rows sit in.

* **Dates.** A tombstone keeps no time finer than its *window*, the UTC day of the
  shred: ``shredded`` is that day and ``created`` is set to it too (the creation day,
  intersected with the shred day, named the customer's ``customer.add`` entry).
* **Record rows.** They go in the same transaction (their ids are named in the old
  entries next to the subject tag, and each row named the customer id).
* **Row order.** On SQLite ``sv_customers`` is a ``WITHOUT ROWID`` table keyed by the
  random id, so neither a rowid nor an unordered ``SELECT`` follows the order of the
  ``customer.add`` entries (:func:`rebuild_without_rowid` converts an older table).
  Where a written row lands still follows the order of the writes (SQLite: its cell in
  the page; PostgreSQL: its tuple, i.e. its ctid and the order of an unordered
  ``SELECT``), so each tombstone write rewrites every tombstone of the window in id
  order (:func:`relocate_window`), and ``compact`` rewrites the store in key order
  (:func:`rewrite_physical`).
* **Residue.** The data store runs with ``secure_delete`` on SQLite and its WAL is
  truncated after tombstones are written (:func:`scrub_wal`), so the row's earlier
  version and the deleted record rows do not stay readable in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
)

from ..keys.rowauth import RowAuth
from .blindindex import drop_customers
from .clock import format_ts
from .errors import StorageError
from .routine_tables import consents, notices, requests
from .rowauth import check_rows, update_rows
from .store import DataStore, customers, records

__all__ = [
    "TOMBSTONES_FORMAT",
    "TOMBSTONES_KEY",
    "TOMBSTONE_WINDOW",
    "coarsen_tombstones",
    "has_rowid",
    "rebuild_without_rowid",
    "relocate_window",
    "rewrite_physical",
    "scrub_wal",
    "tombstone_values",
    "tombstone_window",
    "unlink_routine_rows",
    "write_tombstones",
]

# The finest time a tombstone keeps. Anyone holding the data store can tell apart
# tombstones of different windows, no better: see docs/shredding.md.
TOMBSTONE_WINDOW = "UTC day"
# sv_meta: set when a data store's tombstones are in this form (a new vault's from its
# creation, an older one's after its upgrade at open), so an open checks one row.
TOMBSTONES_KEY = "tombstones"
TOMBSTONES_FORMAT = "unlinked-v1"

_TABLE = customers.name
_SCRUB_WAIT_MS = 500
_STAGING = f"{_TABLE}_rowid"
_RELOCATE = text(
    f"WITH moved AS (DELETE FROM {_TABLE} AS c WHERE c.state = 'shredded' "
    f"AND c.shredded = :window AND NOT EXISTS "
    f"(SELECT 1 FROM {records.name} AS r WHERE r.customer_id = c.id) RETURNING c.*) "
    f"INSERT INTO {_TABLE} SELECT * FROM moved ORDER BY id"
)


def tombstone_window(now: datetime) -> str:
    """The window a shred at ``now`` falls in: its UTC day, ``YYYY-MM-DD``."""
    return format_ts(now)[:10]


def tombstone_values(window: str) -> dict[str, Any]:
    """What a shredded customer's row keeps. Nothing that was logged exactly
    (ref, retention, consent, the creation time) stays, and both dates are the
    shred's window, so the row says only "shredded in this window"."""
    return {
        "state": "shredded",
        "ref": None,
        "legal_hold": False,
        "retain_until": None,
        "consent": "{}",
        "created": window,
        "shredded": window,
        "shred_intent_seq": None,
    }


def write_tombstones(
    conn: Connection,
    sqlite: bool,
    auth: RowAuth,
    ids: Sequence[str],
    window: str,
    seqs: Mapping[str, int] | int,
    *,
    drop_records: bool = True,
    relocate: bool = True,
) -> int:
    """Turn the rows of ``ids`` into tombstones of ``window`` (:func:`tombstone_window`)
    inside the caller's transaction (the one that logs the shred, so a crash leaves
    all of it or none), each stamped with its seq in ``seqs`` (one for all, or per id:
    the entry that records the change) and authenticated (vault/rowauth.py). What a
    row held before is overwritten, so it is not checked first (a forged row becomes an
    authentic tombstone: nothing to serve). Returns how many record rows were deleted.

    ``drop_records``: delete the customers' record rows too (every shred; a
    decommission keeps them for its own logged ``compact`` step, which follows at
    once and which its certificate counts). ``relocate``: rewrite the window's
    tombstones in id order (:func:`relocate_window`); a batch of shreds (``shred
    --expired``) passes False and relocates once at its end, so its cost stays linear."""
    if not ids:
        return 0
    wanted = {"ids": list(ids)}
    dropped = 0
    drop_customers(conn, ids)  # their blind-index entries, with or without drop_records
    if drop_records:
        dropped = conn.execute(
            delete(records).where(records.c.customer_id.in_(bindparam("ids", expanding=True))),
            wanted,
        ).rowcount
    values = tombstone_values(window)
    update_rows(conn, auth, customers.name, {cid: values for cid in ids}, seqs, verify=False)
    unlink_routine_rows(conn, auth, ids, seqs)
    if relocate:
        relocate_window(conn, sqlite, window)
    return int(dropped or 0)


def unlink_routine_rows(
    conn: Connection, auth: RowAuth, ids: Sequence[str], seqs: Mapping[str, int] | int
) -> None:
    """What the privacy routine keeps of shredded customers (docs/requests.md): their
    consent history and change notices go (they named the customer beside exact times
    that the log's entries repeat under the subject tag); their requests stay as
    tombstones, the customer id cleared (the outcome, dates and receipt stay; the note
    stays sealed under a key that no longer exists). A request row that fails its check
    is unlinked too but not re-authenticated, so ``request list`` still refuses it."""
    wanted = {"ids": list(ids)}
    among: Any = bindparam("ids", expanding=True)
    for table in (consents, notices):
        conn.execute(delete(table).where(table.c.customer_id.in_(among)), wanted)
    rows = [
        r._mapping
        for r in conn.execute(select(requests).where(requests.c.customer_id.in_(among)), wanted)
    ]
    if not rows:
        return
    bad = {b.row for b in check_rows(conn, auth, requests.name, rows)}
    good = [r for r in rows if str(r["id"]) not in bad]
    per = (
        seqs if isinstance(seqs, int) else {str(r["id"]): seqs[str(r["customer_id"])] for r in good}
    )
    changes = {str(r["id"]): {"customer_id": None} for r in good}
    update_rows(conn, auth, requests.name, changes, per, verify=False)
    if bad:
        conn.execute(
            requests.update()
            .where(requests.c.id.in_(bindparam("bad", expanding=True)))
            .values(customer_id=None),
            {"bad": sorted(bad)},
        )


def relocate_window(conn: Connection, sqlite: bool, window: str) -> None:
    """Write every tombstone of the window again, in id order, so where they sit
    follows their random ids and not the order of the ``customer.shred`` entries: an
    UPDATE puts the new version where the page has room (SQLite: the cell's bytes;
    PostgreSQL: a new tuple beside the old one or after the shreds before it, which is
    its ctid and the order of an unordered SELECT). Tombstones that still have record
    rows (a decommission's, until its compact step) stay: the foreign key holds them,
    and their records link them anyway until that step. Cost: one statement each way,
    rows in proportion to the window's shreds so far."""
    if not sqlite:
        # PostgreSQL stores an INSERT ... SELECT's rows in the order the SELECT gives.
        conn.execute(_RELOCATE, {"window": window})
        return
    movable = (
        customers.c.state == "shredded",
        customers.c.shredded == window,
        ~exists().where(records.c.customer_id == customers.c.id),
    )
    rows = [
        dict(r._mapping)
        for r in conn.execute(select(customers).where(*movable).order_by(customers.c.id))
    ]
    if rows:
        conn.execute(delete(customers).where(*movable))
        conn.execute(insert(customers), rows)  # one executemany, in the order given


def scrub_wal(data: DataStore) -> bool:
    """SQLite: move the WAL into the file and truncate it, so earlier versions of
    tombstoned rows and deleted record rows (zeroed in the file by ``secure_delete``)
    leave the WAL too. Returns False when a reader kept the checkpoint from finishing
    (the frames are then overwritten later; ``compact`` tries again). PostgreSQL: a
    no-op (its WAL and dead tuples are the server's; see docs/shredding.md)."""
    if not data.is_sqlite:
        return True
    raw = data.engine.raw_connection()
    try:
        cursor = raw.cursor()
        # A long reader (an export in another process) must not hold the shred up for
        # the whole busy timeout: wait briefly, then leave the truncation to later.
        cursor.execute(f"PRAGMA busy_timeout={_SCRUB_WAIT_MS}")
        try:
            row = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except _driver_error(data):
            row = None  # busy: the frames are overwritten later, compact truncates
        finally:
            cursor.execute(f"PRAGMA busy_timeout={int(data.busy_timeout * 1000)}")
    finally:
        raw.close()
    return row is not None and int(row[0]) == 0


def rewrite_physical(data: DataStore) -> None:
    """``compact``'s last step: rewrite the data store so no physical order is left
    that follows log order. SQLite: ``VACUUM`` (every table rebuilt in key order, free
    space gone) and a truncated WAL. PostgreSQL: ``CLUSTER`` of the customer table on
    its primary key (a new file in id order, without dead tuples).

    Raises :class:`StorageError` if the database refuses (nothing logical changes)."""
    raw = data.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if data.is_sqlite:
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            cursor.execute(f"CLUSTER {_TABLE} USING {_TABLE}_pkey")
            raw.commit()
    except _driver_error(data) as error:
        raw.rollback()
        raise StorageError(
            f"compact could not rewrite the data store: {_first_line(error)}"
        ) from None
    finally:
        raw.close()


def _driver_error(data: DataStore) -> type[Exception]:
    """The DBAPI's base error class (sqlite3.Error, psycopg.Error): raw connections
    bypass SQLAlchemy's wrapping, and nothing else may be caught."""
    error: type[Exception] = data.engine.dialect.loaded_dbapi.Error
    return error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def has_rowid(data: DataStore) -> bool:
    """Whether ``sv_customers`` is still an SQLite table with a rowid (False on
    PostgreSQL, which has none to remove)."""
    if not data.is_sqlite:
        return False
    sql = data.read(
        lambda conn: conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
        ).scalar()
    )
    return sql is not None and not re.search(r"\)\s*WITHOUT\s+ROWID\s*$", str(sql), re.I)


def rebuild_without_rowid(data: DataStore) -> bool:
    """Rebuild an SQLite ``sv_customers`` that has a rowid (a vault made before this
    change) as ``WITHOUT ROWID``, rows copied in id order, in one transaction: a crash
    leaves the old table or the new one. Its own columns and indexes are kept as they
    are (their SQL is taken from the file), so a column another upgrade added stays.
    Returns whether it rebuilt anything. Raises :class:`StorageError` if the copy
    would break a foreign key (nothing changes then)."""
    if not has_rowid(data):
        return False
    try:
        _rebuild(data)
    except _driver_error(data) as error:
        raise StorageError(
            f"the customer table could not be rebuilt (nothing was changed): {_first_line(error)}"
        ) from None
    scrub_wal(data)
    return True


def _rebuild(data: DataStore) -> None:
    raw = data.engine.raw_connection()
    try:
        cursor = raw.cursor()
        # Outside a transaction, as SQLite requires for both: keep child tables'
        # REFERENCES sv_customers as they are while the table is swapped.
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.execute("PRAGMA legacy_alter_table=ON")
        cursor.execute("BEGIN IMMEDIATE")
        try:
            table_sql = cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
            ).fetchone()[0]
            index_sql = [
                (str(name), str(sql))
                for name, sql in cursor.execute(
                    "SELECT name, sql FROM sqlite_master "
                    "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (_TABLE,),
                ).fetchall()
            ]
            for name, _sql in index_sql:
                cursor.execute(f'DROP INDEX "{name}"')
            cursor.execute(f"ALTER TABLE {_TABLE} RENAME TO {_STAGING}")
            cursor.execute(str(table_sql).rstrip().rstrip(";") + " WITHOUT ROWID")
            cursor.execute(f"INSERT INTO {_TABLE} SELECT * FROM {_STAGING} ORDER BY id")
            cursor.execute(f"DROP TABLE {_STAGING}")
            for _name, sql in index_sql:
                cursor.execute(sql)
            broken = cursor.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StorageError(
                    f"the customer table cannot be rebuilt: {len(broken)} row(s) elsewhere "
                    "name customers it does not hold; nothing was changed"
                )
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.execute("PRAGMA legacy_alter_table=OFF")
            cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        raw.close()


def coarsen_tombstones(conn: Connection, sqlite: bool, auth: RowAuth, seq: int) -> int:
    """Tombstones written before this change kept their creation day (and older ones
    a finer shred time): rewrite each through :func:`write_tombstones` with its own
    shred day as the window, stamped with ``seq`` (the entry that logs the upgrade).
    Their record rows are left to ``compact`` (logged per batch). Returns how many
    tombstones were rewritten; 0 once done (idempotent)."""
    day = func.substr(customers.c.shredded, 1, 10)
    stale = conn.execute(
        select(customers.c.id, day.label("day")).where(
            customers.c.state == "shredded",
            customers.c.shredded.is_not(None),
            or_(customers.c.created != day, customers.c.shredded != day),
        )
    ).all()
    by_day: dict[str, list[str]] = {}
    for row in stale:
        by_day.setdefault(str(row.day), []).append(str(row.id))
    for window, ids in sorted(by_day.items()):
        write_tombstones(conn, sqlite, auth, ids, window, seq, drop_records=False)
    return len(stale)
