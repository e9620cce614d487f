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
*incomplete*, then replays every ``customer.shred`` recorded after the snapshot (from
the live vault, an exported log, or receipts) before the marker goes and the vault
serves. Without a newer source it refuses unless told to accept the risk, and logs that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, create_engine, exc, func, insert, inspect, select

from ..keys import verify_signature
from . import ids
from .audit import Auditor, format_public_key, read_export_entries
from .canonical import canonical
from .clock import format_ts
from .errors import StorageError, VaultError, VerificationError
from .faults import crash_point
from .files import check_absent, create_empty, create_file, move_into_place, write_file
from .log import Event
from .receipt import load_receipt, verify_receipt
from .store import DataStore, backups, customers, describe_error, log, metadata
from .vault import DATA_FILE, KEYS_FILE, RESTORE_MARKER, Vault

if TYPE_CHECKING:
    from .session import Session
    from .vault import Tx

__all__ = [
    "BackupInfo",
    "BackupReport",
    "ShredSource",
    "backup_list",
    "create_backup",
    "restore_backup",
    "verify_backup",
]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MEMBERS = (DATA_FILE, KEYS_FILE)
_CHUNK = 1 << 20
_BACKUP_PAGES = 256  # pages per step of the SQLite backup API (progress between steps)
_COPY_BATCH = 5000


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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "created": self.created,
            "expires": self.expires,
            "expired": self.expired,
            "shredded_since": self.shredded_since,
        }


# -- create -------------------------------------------------------------------------------


def create_backup(
    session: Session,
    out: str | os.PathLike[str],
    *,
    expires_days: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write one archive at ``out`` (refuses to overwrite) and return its manifest."""
    vault = session._vault
    target = Path(out)
    check_absent(target)
    session._authorize("export", "backup.create")
    backup_id = ids.new_id("bak_")
    now = vault._clock()
    expires = format_ts(now + timedelta(days=expires_days)) if expires_days else None
    with tempfile.TemporaryDirectory(prefix="shredvault-backup-") as tmp:
        work_dir = Path(tmp)

        def snapshot(tx: Tx) -> dict[str, Any]:
            # Holding the log head: no writer can commit while both stores are copied.
            session._gate(tx.conn, "export", "backup.create")
            _copy_keystore(vault._keys.store.path, work_dir / KEYS_FILE)
            _copy_data(vault._data, tx.conn, work_dir / DATA_FILE, progress, tx.head.seq)
            manifest = {
                "v": 1,
                "type": "backup",
                "vault": vault.vault_id,
                "backup": backup_id,
                "seq": tx.head.seq,
                "head": tx.head.hash,
                "created": format_ts(now),
                "expires": expires,
                "members": {name: _file_digest(work_dir / name) for name in MEMBERS},
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
            tx.log(
                Event(
                    session.actor,
                    session.role,
                    "backup.create",
                    detail={"backup": backup_id, "seq": tx.head.seq, "expires": expires},
                )
            )
            tx.checkpoint = True
            return manifest

        manifest = vault._transact(snapshot)
        body = canonical(manifest)
        signature = vault._keys.signer.sign(body)
        _write_archive(target, body, signature, work_dir)
    return manifest


def _copy_keystore(source: Path, dest: Path) -> None:
    create_empty(dest)  # owner-only from the start, like every file we write
    src = sqlite3.connect(source)
    dst = sqlite3.connect(dest)
    try:
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
            src.backup(dst, pages=_BACKUP_PAGES, progress=pages_done)
        finally:
            dst.close()
            src.close()
        return
    engine = create_engine(f"sqlite:///{dest}")
    try:
        metadata.create_all(engine)
        present = _tables_in(conn)
        with engine.begin() as out:
            for table in metadata.sorted_tables:
                if table.name not in present:
                    continue  # an additive table this older data store does not have yet
                # Per statement: Connection.execution_options() would switch the locked
                # connection itself to server-side cursors for everything after.
                result = conn.execute(select(table), execution_options={"stream_results": True})
                while True:
                    rows = result.fetchmany(_COPY_BATCH)
                    if not rows:
                        break
                    out.execute(insert(table), [dict(r._mapping) for r in rows])
                    if progress is not None and table is log:
                        progress(len(rows))
    finally:
        engine.dispose()


def _tables_in(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def _write_archive(target: Path, body: bytes, signature: bytes, work_dir: Path) -> None:
    with (
        create_file(target) as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
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


def backup_list(session: Session) -> list[BackupInfo]:
    """Recorded backups with their key-copy clock. Logged as ``backup.list``."""
    vault = session._vault
    now = format_ts(vault._clock())

    def work(tx: Tx) -> list[BackupInfo]:
        session._gate(tx.conn, "audit", "backup.list")
        out = []
        for row in tx.conn.execute(select(backups).order_by(backups.c.seq)).all():
            since = shredded_since(tx.conn, int(row.seq))
            expired = row.expires is not None and now >= row.expires
            out.append(
                BackupInfo(
                    str(row.id), int(row.seq), str(row.created), row.expires, expired, int(since)
                )
            )
        tx.log(Event(session.actor, session.role, "backup.list", detail={"count": len(out)}))
        return out

    return vault._transact(work)


def shredded_since(conn: Connection, seq: int) -> int:
    """Customers shredded after seq ``seq`` whose keys a copy taken at ``seq`` holds:
    those with a log entry at or before ``seq`` (a customer is created with one), so
    customers created after the copy do not count."""
    before = log.alias("before")
    held_then = (
        select(before.c.seq)
        .where(before.c.subject == log.c.subject, before.c.seq <= seq)
        .limit(1)
        .exists()
    )
    count = conn.execute(
        select(func.count())
        .select_from(log)
        .where(
            log.c.seq > seq,
            log.c.action == "customer.shred",
            log.c.outcome == "ok",
            held_then,
        )
    ).scalar_one()
    return int(count)


# -- verify ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupReport:
    ok: bool
    reason: str | None
    message: str
    manifest: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "manifest": self.manifest,
        }


@contextmanager
def _opened(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - closed in the finally below
    except (OSError, tarfile.TarError) as error:
        raise VerificationError(
            f"not a readable backup archive: {error}", reason="malformed"
        ) from None
    try:
        yield tar
    finally:
        tar.close()


def _member_bytes(tar: tarfile.TarFile, name: str, limit: int = 1 << 20) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise VerificationError(f"the archive has no {name}", reason="malformed") from None
    if not info.isfile() or info.size > limit:
        raise VerificationError(f"{name} in the archive is not a small file", reason="malformed")
    handle = tar.extractfile(info)
    assert handle is not None
    return handle.read()


def verify_backup(
    archive: str | os.PathLike[str],
    *,
    public_key: bytes | None = None,
    extract_to: Path | None = None,
) -> BackupReport:
    """Check an archive offline: manifest signature, every member's hash and size, and
    the access log inside (chain, checkpoints, head at the snapshot). With
    ``extract_to``, the verified stores are left there. Never raises for bad input."""
    try:
        with _opened(Path(archive)) as tar:
            body = _member_bytes(tar, MANIFEST)
            signature = bytes.fromhex(_member_bytes(tar, SIGNATURE).decode("ascii").strip())
            manifest = json.loads(body)
            if (
                manifest.get("type") != "backup"
                or manifest.get("v") != 1
                or canonical(manifest) != body
            ):
                return BackupReport(False, "malformed", "not a v1 shredvault backup manifest")
            with tempfile.TemporaryDirectory(prefix="shredvault-verify-") as tmp:
                where = extract_to or Path(tmp)
                for name in MEMBERS:
                    _extract_checked(tar, name, where / name, manifest["members"][name])
                embedded = _keystore_public_key(where / KEYS_FILE)
                key = public_key if public_key is not None else embedded
                if not verify_signature(key, body, signature):
                    return BackupReport(
                        False, "bad signature", "the manifest signature does not verify", manifest
                    )
                # The snapshot's data is always the SQLite file beside it, wherever the
                # live vault kept its data (its keystore may say "external").
                with Auditor.open(where, data_url=f"sqlite:///{where / DATA_FILE}") as auditor:
                    if auditor.vault_id != manifest["vault"]:
                        return BackupReport(
                            False,
                            "foreign vault",
                            "the data snapshot belongs to another vault",
                            manifest,
                        )
                    report = auditor.verify(public_key=key)
                    head = auditor.head
                if not report.ok:
                    return BackupReport(
                        False, report.reason, f"the log inside fails: {report.message}", manifest
                    )
                if (head.seq, head.hash) != (manifest["seq"], manifest["head"]):
                    return BackupReport(
                        False, "modified", "the log head differs from the manifest", manifest
                    )
    except VerificationError as error:
        return BackupReport(False, error.reason, str(error))
    except (ValueError, KeyError, TypeError, OSError, tarfile.TarError, VaultError) as error:
        return BackupReport(False, "malformed", f"the archive is damaged: {error}")
    note = "" if public_key is not None else " (signature checked with the key inside the archive)"
    return BackupReport(
        True,
        None,
        f"backup {manifest['backup']} of {manifest['vault']} at seq {manifest['seq']} "
        f"verifies{note}",
        manifest,
    )


def _extract_checked(tar: tarfile.TarFile, name: str, dest: Path, expected: dict[str, Any]) -> None:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise VerificationError(f"the archive has no {name}", reason="malformed") from None
    source = tar.extractfile(info) if info.isfile() else None
    if source is None:
        raise VerificationError(f"{name} in the archive is not a file", reason="malformed")
    h = hashlib.sha256()
    size = 0
    with create_file(dest) as out:
        while chunk := source.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if h.hexdigest() != expected["sha256"] or size != expected["size"]:
        raise VerificationError(
            f"{name} does not match the manifest (altered or swapped)", reason="modified"
        )


def _keystore_public_key(path: Path) -> bytes:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT public_key FROM signing ORDER BY generation DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        raise VerificationError("the keystore snapshot holds no public key", reason="malformed")
    return bytes(row[0])


# -- restore --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShredSource:
    """Where to learn of shreds made after the snapshot: a live vault directory (and its
    data URL), an exported log, or a directory of receipts."""

    vault_dir: Path | None = None
    vault_data_url: str | None = None
    log_export: Path | None = None
    receipts_dir: Path | None = None

    @property
    def given(self) -> bool:
        return any(x is not None for x in (self.vault_dir, self.log_export, self.receipts_dir))

    def describe(self) -> str:
        if self.vault_dir is not None:
            return "live vault"
        if self.log_export is not None:
            return "exported log"
        if self.receipts_dir is not None:
            return "receipts"
        return "none"


def _newer_shreds(
    manifest: dict[str, Any], source: ShredSource, public_key: bytes
) -> tuple[dict[str, str], int, str]:
    """Shreds after the snapshot: ``({subject tag: reason}, seq and hash of the head
    replayed from)``,
    plus customer ids from receipts keyed as ``"id:<customer>"``. The source must
    continue the snapshot's history (same hash at the snapshot's seq)."""
    seq, head = int(manifest["seq"]), str(manifest["head"])
    found: dict[str, str] = {}
    if source.vault_dir is not None:
        with Auditor.open(source.vault_dir, data_url=source.vault_data_url) as auditor:
            if auditor.vault_id != manifest["vault"]:
                raise VerificationError(
                    "the replay source is another vault", reason="foreign vault"
                )
            report = auditor.verify(public_key=public_key)
            if not report.ok:
                raise VerificationError(
                    f"the replay source's log fails: {report.message}",
                    reason=report.reason or "invalid",
                )
            entries = auditor.entries(since=seq)
            return _collect(entries, seq, head), report.last_seq, report.head
    if source.log_export is not None:
        from .audit import verify_export

        report = verify_export(source.log_export, public_key=public_key)
        if not report.ok:
            raise VerificationError(
                f"the exported log fails: {report.message}", reason=report.reason or "invalid"
            )
        found = _collect(read_export_entries(source.log_export, since=seq), seq, head)
        return found, report.last_seq, report.head
    if source.receipts_dir is not None:
        last, last_head = seq, head
        for path in sorted(Path(source.receipts_dir).glob("*.json")):
            document = load_receipt(path)
            checked = verify_receipt(document, public_key=public_key)
            if not checked.ok:
                raise VerificationError(
                    f"receipt {path.name} fails: {checked.message}",
                    reason=checked.reason or "invalid",
                )
            if document["vault"] != manifest["vault"] or int(checked.seq or 0) <= seq:
                continue
            found["id:" + str(document["customer"])] = str(
                document["entry"]["detail"].get("reason", "")
            )
            if int(checked.seq or 0) > last:
                last, last_head = int(checked.seq or 0), str(document["entry"]["hash"])
        return found, last, last_head
    return found, seq, head


def _collect(entries: Iterator[dict[str, Any]], seq: int, head: str) -> dict[str, str]:
    found: dict[str, str] = {}
    anchored = False
    for entry in entries:
        if entry["seq"] == seq:
            if entry["hash"] != head:
                raise VerificationError(
                    "the replay source's history differs from the backup's at its seq",
                    reason="forked",
                )
            anchored = True
            continue
        if entry["action"] == "customer.shred" and entry["outcome"] == "ok" and entry["subject"]:
            found[str(entry["subject"])] = str(entry["detail"].get("reason", ""))
    if seq > 0 and not anchored:
        raise VerificationError(
            "the replay source does not reach the backup's seq", reason="truncated"
        )
    return found


def restore_backup(
    archive: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    data_url: str | None = None,
    source: ShredSource = ShredSource(),
    accept_unreplayed_shreds: bool = False,
    public_key: bytes | None = None,
) -> dict[str, Any]:
    """Restore an archive into an empty directory (and, with ``data_url``, an empty
    database), replaying every later shred before the vault can serve.

    Raises VerificationError (damaged archive or replay source), StorageError (target
    not empty; no newer source and not accepted), UnlockError (wrong passphrase).
    An interrupted restore leaves the target marked incomplete: it refuses to open."""
    root = Path(to)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StorageError(f"{root} exists and is not empty; restore only into an empty directory")
    if not source.given and not accept_unreplayed_shreds:
        raise StorageError(
            "no newer source of shreds was given (a live vault, an exported log or receipts): "
            "restoring could bring back customers shredded after this backup; pass "
            "--accept-unreplayed-shreds only if you are sure none were"
        )
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    write_file(root / RESTORE_MARKER, b"restore in progress\n")
    staged = root / ".restore-staging"
    staged.mkdir()
    try:
        report = verify_backup(archive, public_key=public_key, extract_to=staged)
        if not report.ok or report.manifest is None:
            raise VerificationError(
                f"the backup fails verification: {report.message}",
                reason=report.reason or "invalid",
            )
        manifest = report.manifest
        key = public_key if public_key is not None else _keystore_public_key(staged / KEYS_FILE)
        if data_url is not None:
            _load_into(staged / DATA_FILE, data_url)
    except BaseException:
        # Nothing was restored yet: leave the target as it was found (empty or absent),
        # so the same command can simply be run again.
        shutil.rmtree(staged, ignore_errors=True)
        (root / RESTORE_MARKER).unlink(missing_ok=True)
        if created_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    if data_url is None:
        move_into_place(staged / DATA_FILE, root / DATA_FILE)
    move_into_place(staged / KEYS_FILE, root / KEYS_FILE)
    shutil.rmtree(staged)
    _set_data_location(root / KEYS_FILE, "external" if data_url is not None else "sqlite")
    crash_point("restore:after-files")
    shreds, source_seq, source_head = _newer_shreds(manifest, source, key)
    vault = Vault.open(
        root, passphrase=passphrase, keyfile=keyfile, data_url=data_url, _restoring=True
    )
    try:
        replayed = _replay(vault, shreds)
        crash_point("restore:after-replay")
        detail = {
            "backup": manifest["backup"],
            "snapshot_seq": manifest["seq"],
            "replayed_from": source.describe(),
            "source_seq": source_seq,
            "source_head": source_head,
            "shreds_replayed": len(replayed),
            "unreplayed_shreds_accepted": not source.given,
        }

        def work(tx: Tx) -> None:
            tx.log(Event("admin", "admin", "vault.restore", detail=detail))

        vault._transact(work, checkpoint=True)
    finally:
        vault.close()
    (root / RESTORE_MARKER).unlink()
    return {**detail, "replayed": replayed, "public_key": format_public_key(key)}


def _replay(vault: Vault, shreds: dict[str, str]) -> list[str]:
    """Shred again every restored customer named by a newer shred (by subject tag, or by
    id from a receipt). Returns their ids."""
    from .shred import shred_customer

    active = vault._data.read(
        lambda conn: [
            str(r.id)
            for r in conn.execute(select(customers.c.id).where(customers.c.state != "shredded"))
        ]
    )
    tags = vault._keys.store.subject_tags(active)
    by_tag = {tag.hex(): cid for cid, tag in tags.items()}
    targets: dict[str, str] = {}
    for key, reason in shreds.items():
        cid = key[3:] if key.startswith("id:") else by_tag.get(key)
        if cid is not None and cid in active:
            targets[cid] = reason
    done = []
    with vault._keys.scrub_once() as scrubbed:  # one keystore rebuild for all of them
        for cid, reason in targets.items():
            shred_customer(
                vault,
                "vault",
                "system",
                cid,
                f"replayed on restore: {reason}"[:500] or "replayed on restore",
            )
            done.append(cid)
    if not scrubbed.done:
        raise StorageError(
            "the replayed shreds are recorded, but the restored keystore could not be "
            "rebuilt yet (another process holds it open); restore again into a new directory"
        )
    return done


def _load_into(snapshot: Path, data_url: str) -> None:
    """Copy a SQLite data snapshot into an empty database at ``data_url``."""
    target = DataStore.connect(url=data_url)
    try:
        if target.has_schema():
            raise StorageError(
                "the target database already holds a vault; restore only into an empty one"
            )
        source = create_engine(f"sqlite:///{snapshot}")
        try:
            # Tables and rows in ONE transaction (both databases have transactional DDL):
            # a failure or a kill mid-load leaves the target empty, so a rerun works.
            with source.connect() as src, target.engine.begin() as dst:
                metadata.create_all(dst)
                present = _tables_in(src)
                for table in metadata.sorted_tables:
                    if table.name not in present:
                        continue  # a snapshot made before this table was added
                    result = src.execute(select(table), execution_options={"stream_results": True})
                    while rows := result.fetchmany(_COPY_BATCH):
                        dst.execute(insert(table), [dict(r._mapping) for r in rows])
                    crash_point("restore:load-table")
        except exc.SQLAlchemyError as error:
            raise StorageError(
                f"cannot load the snapshot into the target: {describe_error(error)}"
            ) from None
        finally:
            source.dispose()
    finally:
        target.dispose()


def _set_data_location(keys_path: Path, where: str) -> None:
    """Where the restored vault's data lives: the backup's keystore says where the
    source vault kept it, which is not where the restore put it."""
    conn = sqlite3.connect(keys_path)
    try:
        with conn:
            conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('data_location', ?)", (where,))
    finally:
        conn.close()
