"""Backups that never resurrect a shredded customer (DESIGN §7a).

An archive is an uncompressed tar of four members::

    manifest.json   canonical JSON: vault, backup id, seq and head at the snapshot,
                    SHA-256 and size of each store snapshot, created, expires
    manifest.sig    Ed25519 signature of manifest.json by the vault's key (hex)
    data.db         a SQLite snapshot of the data store (from PostgreSQL too)
    keys.db         a SQLite snapshot of the keystore

The snapshots are taken inside a logged transaction that holds the log-head lock, so
no writer moves while both stores are copied; the ``backup.create`` entry commits with
it. Restoring verifies the archive, writes the stores into an empty target marked
*incomplete*, then replays every shred recorded after the snapshot (restore.py) before
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
from .files import check_absent, create_empty, create_file
from .inputs import check_backup_id, check_days
from .keycopies import backup_states, shredded_since
from .layout import DATA_FILE, KEYS_FILE
from .store import (
    DataStore,
    backup_state,
    backups,
    ensure_ref_index,
    log,
    metadata,
    tables_in,
)

__all__ = [
    "STDOUT",
    "BackupInfo",
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

        def snapshot(tx: Tx) -> dict[str, Any]:
            # Holding the log head: no writer can commit while both stores are copied.
            # A backup copies every kind and field: a role limited to some is refused.
            actor.gate(tx.conn, "export", "backup.create", whole_vault=True)
            _copy_keystore(ctx.keys.store.path, work_dir / KEYS_FILE)
            _copy_data(ctx.data, tx.conn, work_dir / DATA_FILE, progress, tx.head.seq)
            manifest = {
                "v": 1,
                "type": "backup",
                "vault": ctx.vault_id,
                "backup": backup_id,
                "seq": tx.head.seq,
                "head": tx.head.hash,
                "created": format_ts(now),
                "expires": expires,
                "members": {name: file_digest(work_dir / name) for name in MEMBERS},
            }
            tx.conn.execute(
                insert(backups).values(
                    id=backup_id,
                    seq=tx.head.seq,
                    head=tx.head.hash,
                    created=format_ts(now),
                    expires=expires,
                )
            )
            ctx.data.ensure_additive_tables(tx.conn)
            tx.conn.execute(insert(backup_state).values(id=backup_id, path=recorded_path))
            tx.log(
                actor.event(
                    "backup.create",
                    detail={"backup": backup_id, "seq": tx.head.seq, "expires": expires},
                )
            )
            tx.checkpoint = True
            return manifest

        manifest = ctx.transact(snapshot)
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


def _copy_keystore(source: Path, dest: Path) -> None:
    create_empty(dest)  # owner-only from the start, like every file we write
    src = sqlite3.connect(source)
    dst = sqlite3.connect(dest)
    try:
        with disk_faults(dest, "backup stopped"):
            src.backup(dst)
    finally:
        dst.close()
        src.close()


def _copy_data(
    data: DataStore,
    conn: Connection,
    dest: Path,
    progress: Callable[[int], None] | None,
    entries: int,
) -> None:
    """A SQLite snapshot of the data store, read through ``conn`` (which holds the log
    head, so the tables do not move). From SQLite: the online backup API; from any
    other database: the vault's tables streamed in batches into a SQLite file.

    ``progress`` counts log entries (``entries`` in all): rows as they are streamed,
    or, for the SQLite page copy, the share of pages copied scaled to ``entries``."""
    create_empty(dest)  # owner-only from the start, like every file we write
    if data.is_sqlite:
        # The backup API cannot read through the connection holding the write lock; a
        # second connection can (WAL readers never wait) and, since nobody else may
        # commit while we hold the lock, it sees exactly the locked state.
        source = data.engine.url.database
        assert source is not None
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(dest)
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
                src.backup(dst, pages=_BACKUP_PAGES, progress=pages_done)
        finally:
            dst.close()
            src.close()
        return
    engine = create_engine(f"sqlite:///{dest}")
    try:
        metadata.create_all(engine)
        present = tables_in(conn)
        with engine.begin() as out:
            for table in metadata.sorted_tables:
                if table.name not in present:
                    continue  # an additive table this older data store does not have yet
                # Per statement: Connection.execution_options() would switch the locked
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
