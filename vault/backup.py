"""Backups that never resurrect a shredded customer (DESIGN §7a).

An archive is an uncompressed tar of four members::

    manifest.json   canonical JSON: vault, backup id, seq and head at the snapshot,
                    SHA-256 and size of each store snapshot, created, expires
    manifest.sig    Ed25519 signature of manifest.json by the vault's key (hex)
    data.db         a SQLite snapshot of the data store (from PostgreSQL too)
    keys.db         a SQLite snapshot of the keystore

Both stores' read snapshots begin while a transaction holds the log-head lock, so they
show one head; the copies are then made from the snapshots while writers go on
(:class:`Snapshot`), and the ``backup.create`` entry commits after them. Restoring
verifies the archive, writes the stores into an empty target marked *incomplete*, then
replays every shred recorded after the snapshot (restore.py) before
the marker goes and the vault serves. ``backup forget`` retires an archive from the
key-copy clock; archives can be written to (and read from) a stream, for pipes.
"""

from __future__ import annotations

import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection, create_engine, insert, select, update

from . import ids
from .actor import Actor
from .archive import (
    MANIFEST,
    MEMBERS,
    SIGNATURE,
    file_digest,
)
from .canonical import canonical
from .clock import format_ts
from .context import Refusal, Tx, VaultContext
from .errors import NotFoundError, StorageError, disk_faults
from .faults import crash_point
from .files import check_absent, create_empty, create_file
from .inputs import check_backup_id, check_days
from .keycopies import backup_states, shredded_since
from .layout import DATA_FILE, KEYS_FILE
from .log import GENESIS
from .store import (
    LogHead,
    backup_state,
    backups,
    ensure_ref_index,
    log,
    log_head,
    metadata,
    tables_in,
)

__all__ = [
    "STDOUT",
    "BackupInfo",
    "Snapshot",
    "backup_list",
    "create_backup",
    "forget_backup",
]

#: what ``sv_backup_state.path`` holds for an archive written to a stream (stdout)
STDOUT = "-"

COPY_BATCH = 5000  # rows per batch when a data store is copied table by table
_BACKUP_PAGES = 256  # pages per step of the SQLite backup API (progress between steps)


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A recorded backup and its key-copy clock: customers shredded since it was
    taken, whose keys the copy still holds until it is destroyed or expires."""

    id: str
    seq: int
    created: str
    expires: str | None
    expired: bool
    shredded_since: int
    #: where it was written (``-``: to a stream, stdout), None if not recorded (a
    #: backup made before paths were)
    path: str | None = None
    #: when ``backup forget`` retired it: it no longer counts on the key-copy clock
    forgotten: str | None = None

    @property
    def state(self) -> str:
        """``forgotten``, ``expired`` or ``held`` (counts on the key-copy clock)."""
        if self.forgotten is not None:
            return "forgotten"
        return "expired" if self.expired else "held"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "created": self.created,
            "expires": self.expires,
            "expired": self.expired,
            "shredded_since": self.shredded_since,
            "path": self.path,
            "forgotten": self.forgotten,
            "state": self.state,
        }


# -- create -------------------------------------------------------------------------------


def create_backup(
    ctx: VaultContext,
    actor: Actor,
    out: str | os.PathLike[str] | BinaryIO,
    *,
    expires_days: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write one archive at ``out`` (a new file: refuses to overwrite; or a binary
    stream such as stdout, written in one pass, for a pipe into age/gpg/restic) and
    return its manifest."""
    if expires_days is not None:
        expires_days = check_days(expires_days, what="expires_days")
    stream = None if isinstance(out, (str, os.PathLike)) else out
    target = Path(out) if isinstance(out, (str, os.PathLike)) else None
    if target is not None:
        check_absent(target)
    actor.authorize("export", "backup.create")
    backup_id = ids.new_id("bak_")
    now = ctx.clock()
    expires = format_ts(now + timedelta(days=expires_days)) if expires_days else None
    # Staged beside the archive, not in the system temp folder: a killed run must not
    # leave a copy of keys.db somewhere nobody looks (it sits, owner-only, next to the
    # archive it was meant for, under a hidden name that says what it is). An archive
    # streamed out is staged beside the keystore it copies.
    staging_dir = target.parent if target is not None else ctx.keys.store.path.parent
    name = target.name if target is not None else "stdout-backup"
    recorded_path = STDOUT if target is None else os.path.abspath(target)
    with tempfile.TemporaryDirectory(prefix=f".{name}.shredvault-staging-", dir=staging_dir) as tmp:
        work_dir = Path(tmp)
        with Snapshot(ctx) as snapshot:

            def begin(tx: Tx) -> LogHead:
                # A backup copies every kind and field: a role limited to some is refused.
                actor.gate(tx.conn, "export", "backup.create", whole_vault=True)
                # Holding the log head (no writer commits meanwhile), both stores'
                # read snapshots begin: they show exactly this head. Then it is let go.
                snapshot.begin(tx.head)
                return tx.head

            head = ctx.transact(begin)
            snapshot.copy_keystore(work_dir / KEYS_FILE)
            crash_point("backup:after-snapshot")
            snapshot.copy_data(work_dir / DATA_FILE, progress, head.seq)
        manifest = {
            "v": 1,
            "type": "backup",
            "vault": ctx.vault_id,
            "backup": backup_id,
            "seq": head.seq,
            "head": head.hash,
            "created": format_ts(now),
            "expires": expires,
            "members": {name: file_digest(work_dir / name) for name in MEMBERS},
        }

        def record(tx: Tx) -> None:
            # Asked again: a role revoked during the copy gets no archive.
            actor.gate(tx.conn, "export", "backup.create", whole_vault=True)
            tx.conn.execute(
                insert(backups).values(
                    id=backup_id,
                    seq=head.seq,
                    head=head.hash,
                    created=format_ts(now),
                    expires=expires,
                )
            )
            ctx.data.ensure_additive_tables(tx.conn)
            tx.conn.execute(insert(backup_state).values(id=backup_id, path=recorded_path))
            tx.log(
                actor.event(
                    "backup.create",
                    detail={"backup": backup_id, "seq": head.seq, "expires": expires},
                )
            )
            tx.checkpoint = True

        ctx.transact(record)
        body = canonical(manifest)
        signature = ctx.keys.signer.sign(body)
        if target is not None:
            with create_file(target) as handle:
                _write_archive(handle, body, signature, work_dir)
        else:
            assert stream is not None
            _write_archive(stream, body, signature, work_dir)
            stream.flush()
    return manifest


class Snapshot:
    """Read snapshots of both stores, begun at one log head, copied without holding it.

    :meth:`begin` is called while the caller holds the log-head lock: the data store's
    snapshot (SQLite: a read transaction on a second, read-only connection, which WAL
    serves from its own frame mark; PostgreSQL: a ``REPEATABLE READ`` read-only
    transaction on a second connection, its snapshot taken by a first query) and the
    keystore's (a read transaction on a second connection) then show exactly the
    locked state, and stay on it while writers go on after the lock is released.
    The keystore, small, is copied first and its snapshot let go at once (a held one
    would keep a shred's scrub from truncating the keystore's WAL)."""

    def __init__(self, ctx: VaultContext) -> None:
        self._ctx = ctx
        self._keys: sqlite3.Connection | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Connection | None = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_keys()
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()

    def _close_keys(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None

    def begin(self, head: LogHead) -> None:
        """Begin both read snapshots (under the caller's log-head lock) and check the
        data snapshot's head is ``head``."""
        data = self._ctx.data
        try:
            self._keys = sqlite3.connect(self._ctx.keys.store.path, isolation_level=None)
            self._keys.execute("BEGIN")
            self._keys.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error as error:
            raise StorageError(f"cannot read the keystore for a backup: {error}") from None
        if data.is_sqlite:
            source = data.engine.url.database
            assert source is not None
            try:
                self._sqlite = sqlite3.connect(
                    f"file:{source}?mode=ro", uri=True, isolation_level=None
                )
                self._sqlite.execute("BEGIN")
                row = self._sqlite.execute("SELECT seq, hash FROM sv_log_head").fetchone()
            except sqlite3.Error as error:
                raise StorageError(f"cannot read the data store for a backup: {error}") from None
        else:
            conn = data.engine.connect().execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self._pg = conn
            conn.begin()
            row = conn.execute(select(log_head.c.seq, log_head.c.hash)).first()
        seen = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
        if seen != (head.seq, head.hash):
            raise StorageError("the data store's snapshot is not at the locked head")

    def copy_keystore(self, dest: Path) -> None:
        """The keystore's snapshot into a new SQLite file at ``dest``; then let go."""
        assert self._keys is not None
        create_empty(dest)  # owner-only from the start, like every file we write
        out = sqlite3.connect(dest)
        try:
            with disk_faults(dest, "backup stopped"):
                self._keys.backup(out)
        finally:
            out.close()
            self._close_keys()

    def copy_data(self, dest: Path, progress: Callable[[int], None] | None, entries: int) -> None:
        """The data store's snapshot into a new SQLite file at ``dest``: from SQLite
        by the online backup API in steps (reading the snapshot, so writers never
        restart it), from PostgreSQL the vault's tables streamed in batches.
        ``progress`` counts log entries (``entries`` in all)."""
        create_empty(dest)  # owner-only from the start, like every file we write
        if self._sqlite is not None:
            _copy_pages(self._sqlite, dest, progress, entries)
        else:
            assert self._pg is not None
            _copy_tables(self._pg, dest, progress)


def _copy_pages(
    src: sqlite3.Connection, dest: Path, progress: Callable[[int], None] | None, entries: int
) -> None:
    """The SQLite page copy; ``progress`` gets the share of pages copied scaled to
    ``entries``."""
    out = sqlite3.connect(dest)
    reported = 0

    def pages_done(_status: int, remaining: int, total: int) -> None:
        nonlocal reported
        if progress is not None and total:
            now = entries * (total - remaining) // total
            if now > reported:
                progress(now - reported)
                reported = now

    try:
        with disk_faults(dest, "backup stopped"):
            src.backup(out, pages=_BACKUP_PAGES, progress=pages_done)
    finally:
        out.close()


def _copy_tables(conn: Connection, dest: Path, progress: Callable[[int], None] | None) -> None:
    """Every vault table read through ``conn`` streamed into a SQLite file at ``dest``;
    ``progress`` counts the log rows."""
    engine = create_engine(f"sqlite:///{dest}")
    try:
        metadata.create_all(engine)
        present = tables_in(conn)
        with engine.begin() as out:
            for table in metadata.sorted_tables:
                if table.name not in present:
                    continue  # an additive table this older data store does not have yet
                # Per statement: Connection.execution_options() would switch the
                # connection itself to server-side cursors for everything after.
                result = conn.execute(select(table), execution_options={"stream_results": True})
                while True:
                    rows = result.fetchmany(COPY_BATCH)
                    if not rows:
                        break
                    out.execute(insert(table), [dict(r._mapping) for r in rows])
                    if progress is not None and table is log:
                        progress(len(rows))
            ensure_ref_index(out)
    finally:
        engine.dispose()


def _write_archive(out: BinaryIO, body: bytes, signature: bytes, work_dir: Path) -> None:
    """The tar, in the order verification reads: manifest, signature, then the stores.
    A file is written directly; a pipe through tar's stream mode (never seeks back)."""
    if out.seekable():
        tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed by the with below
    else:
        tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    with tar:
        _add_bytes(tar, MANIFEST, body)
        _add_bytes(tar, SIGNATURE, signature.hex().encode("ascii"))
        for name in MEMBERS:
            tar.add(work_dir / name, arcname=name)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


# -- list -----------------------------------------------------------------------------------


def backup_list(ctx: VaultContext, actor: Actor) -> list[BackupInfo]:
    """Recorded backups with where they were written, their state and their key-copy
    clock. Logged as ``backup.list``."""
    now = ctx.now()

    def work(tx: Tx) -> list[BackupInfo]:
        actor.gate(tx.conn, "audit", "backup.list")
        states = backup_states(tx.conn)
        rows = tx.conn.execute(select(backups).order_by(backups.c.seq)).all()
        out = [_info(tx.conn, row, states, now) for row in rows]
        tx.log(actor.event("backup.list", detail={"count": len(out)}))
        return out

    return ctx.transact(work)


def _info(
    conn: Connection, row: Any, states: dict[str, tuple[str | None, str | None]], now: str
) -> BackupInfo:
    path, forgotten = states.get(str(row.id), (None, None))
    return BackupInfo(
        str(row.id),
        int(row.seq),
        str(row.created),
        row.expires,
        row.expires is not None and now >= row.expires,
        shredded_since(conn, int(row.seq)),
        path,
        forgotten,
    )


# -- forget ---------------------------------------------------------------------------------


def forget_backup(ctx: VaultContext, actor: Actor, backup_id: str) -> BackupInfo:
    """Record that an archive was destroyed (retired): it stops counting on the key-copy
    clock. Admin only, logged as ``backup.forget``. The archive file itself is not
    touched (it may be anywhere); whoever forgets it states that it no longer exists.

    Raises NotFoundError for an unknown id, StorageError if it was already forgotten."""
    check_backup_id(backup_id)

    def work(tx: Tx) -> BackupInfo:
        actor.gate(tx.conn, "admin", "backup.forget")
        row = tx.conn.execute(select(backups).where(backups.c.id == backup_id)).first()
        if row is None:
            ev = actor.event(
                "backup.forget", outcome="error", detail={"reason_code": "backup_not_found"}
            )
            raise Refusal(NotFoundError(f"no backup {backup_id} is recorded"), ev)
        ctx.data.ensure_additive_tables(tx.conn)
        state = tx.conn.execute(
            select(backup_state.c.forgotten).where(backup_state.c.id == backup_id)
        ).first()
        if state is not None and state.forgotten is not None:
            ev = actor.event(
                "backup.forget",
                outcome="error",
                detail={"backup": backup_id, "reason_code": "already_forgotten"},
            )
            raise Refusal(
                StorageError(f"backup {backup_id} was already forgotten ({state.forgotten})"), ev
            )
        when = ctx.now()
        if state is None:
            tx.conn.execute(insert(backup_state).values(id=backup_id, forgotten=when))
        else:
            tx.conn.execute(
                update(backup_state).where(backup_state.c.id == backup_id).values(forgotten=when)
            )
        info = _info(tx.conn, row, backup_states(tx.conn), when)
        tx.log(
            actor.event(
                "backup.forget",
                detail={
                    "backup": backup_id,
                    "seq": info.seq,
                    "shredded_since": info.shredded_since,
                },
            )
        )
        return info

    return ctx.transact(work)
