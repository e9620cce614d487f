"""The keystore's SQLite connection and the guarantees that rest on it (docs/keys.md).

Every connection to ``keys.db`` sets ``secure_delete``, WAL, ``synchronous=FULL`` and
in-memory temporary storage; every write is one ``BEGIN IMMEDIATE`` transaction whose
SQLite errors surface as :class:`~keys.errors.KeystoreError`; and a *scrub* makes
deleted key bytes leave both the database file and its WAL. :class:`~keys.store.KeyStore`
holds the connection and calls these; the tables and their SQL live there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFaultError, KeystoreError, disk_fault, disk_fault_message

__all__ = [
    "BUSY_TIMEOUT_S",
    "TRUNCATE_DEADLINE_S",
    "ThreadConnections",
    "connect",
    "keystore_error",
    "scrub_deleted",
    "truncate_wal",
    "write_transaction",
]

BUSY_TIMEOUT_S = 30.0
TRUNCATE_DEADLINE_S = 10.0


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the keystore at ``path`` with the keystore's pragmas set."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA secure_delete=ON")
    # VACUUM (see scrub_deleted) builds the new file in a temporary database: keep it
    # in memory, never in a temp file on disk.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class ThreadConnections:
    """One keystore connection per thread, so a keystore shared by threads keeps each
    thread's transaction its own, as separate processes do (SQLite's locks and busy
    timeout order them; with one shared connection a second thread's write joined the
    first's transaction and vanished with its rollback). A thread's connection closes
    when the thread ends; :meth:`close` closes them all."""

    def __init__(self, path: Path, first: sqlite3.Connection) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: set[sqlite3.Connection] = set()
        self._guard = threading.Lock()
        self._closed = False
        self._adopt(first)  # the opening thread's

    def current(self) -> sqlite3.Connection:
        """This thread's connection, made with the keystore's pragmas on first use."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            return held.conn
        if self._closed:
            raise KeystoreError("the keystore is closed")
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            raise keystore_error(None, exc, "cannot open the keystore", self.path) from None
        return self._adopt(conn)

    def _adopt(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        held = _Held(conn)
        opened, guard = self._opened, self._guard

        def release() -> None:  # the thread ended: close its connection
            with guard:
                if conn not in opened:
                    return  # close() has it
                opened.discard(conn)
            conn.close()

        with guard:
            if self._closed:
                conn.close()
                raise KeystoreError("the keystore is closed")
            opened.add(conn)
        weakref.finalize(held, release)
        self._local.held = held
        return conn

    def close(self) -> None:
        """Close every thread's connection; later use raises :class:`KeystoreError`."""
        with self._guard:
            self._closed = True
            opened = list(self._opened)
            self._opened.clear()
        for conn in opened:
            conn.close()


class _Held:
    """One thread's connection; only that thread's local storage refers to it, so it
    is dropped (and the connection closed) when the thread ends."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``); rolled back on any error. Inside
    another, it joins it (the outer one commits)."""
    try:
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            own = True
        else:
            own = False
    except sqlite3.OperationalError as exc:
        raise keystore_error(conn, exc, "keystore is busy or unwritable") from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise keystore_error(conn, exc, "keystore write failed") from None
    except BaseException:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if own:
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise keystore_error(conn, exc, "keystore commit failed") from None


def keystore_error(
    conn: sqlite3.Connection | None, exc: sqlite3.Error, doing: str, path: Path | None = None
) -> KeystoreError:
    """The error for an SQLite failure of the keystore: a :class:`DiskFaultError` when
    the disk is full or read-only (nothing was written), else a :class:`KeystoreError`."""
    if path is None and conn is not None:
        try:
            path = Path(conn.execute("PRAGMA database_list").fetchone()[2])
        except (sqlite3.Error, TypeError):
            path = None
    fault = disk_fault(exc, path)
    if fault is not None:
        return DiskFaultError(
            f"{doing}: {disk_fault_message(fault)} ({exc}); nothing was written", fault=fault
        )
    return KeystoreError(f"{doing}: {exc}")


def scrub_deleted(conn: sqlite3.Connection, deadline_s: float = TRUNCATE_DEADLINE_S) -> None:
    """Make deleted key bytes leave the keystore's files: rewrite every page from
    the live rows (``VACUUM``), then truncate the WAL (:func:`truncate_wal`).

    ``secure_delete`` zeroes the cell of a deleted row, but SQLite moves rows between
    pages when it rebalances a B-tree and does not clear the space a moved row left
    behind; a row deleted later can survive there as a stale copy (seen: a destroyed
    customer's subject tag in a live index page, about one shred in thirty among
    2,000 customers). Rebuilding the file from live rows leaves no such copy. Cost
    grows with the keystore's size (~17 ms at 10,000 customers), not with records.
    Raises :class:`KeystoreError` if the keystore stays busy or cannot be written.
    """
    try:
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        raise KeystoreError(
            f"could not rewrite the keystore to erase deleted key bytes: {exc}"
        ) from None
    truncate_wal(conn, deadline_s)


def truncate_wal(conn: sqlite3.Connection, deadline_s: float = TRUNCATE_DEADLINE_S) -> None:
    """Copy the WAL into the file and truncate it, so deleted key bytes leave the WAL.

    A reader in another process can hold the WAL open; retry with a short busy
    wait until ``deadline_s``, then raise :class:`KeystoreError` rather than claim
    an erasure that did not reach disk (the deleted rows stay deleted; a later
    truncation finishes the job).
    """
    deadline = time.monotonic() + deadline_s
    conn.execute("PRAGMA busy_timeout=200")
    try:
        while True:
            try:
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError:
                busy = 1
            if busy == 0:
                return
            if time.monotonic() >= deadline:
                raise KeystoreError(
                    "could not truncate the keystore WAL: another process holds it open"
                )
            time.sleep(0.02)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
