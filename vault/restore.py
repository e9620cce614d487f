"""Restoring a backup so that it never brings a shredded customer back (docs/backup.md).

The archive is verified, the source of later shreds is verified under the vault's key,
the stores are put in place behind a marker that keeps the vault from serving, every
shred (and shred intent) recorded after the snapshot is replayed, and only then does
the marker go. Only the live vault knows every shred up to now: an exported log, receipts
or no source leave a window of unknown shreds, refused unless accepted, then logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import create_engine, exc, insert, select

from ..keys import KeyStore
from .actor import system_actor
from .archive import (
    keystore_public_key,
    verify_backup,
)
from .audit import Auditor, format_public_key, read_export_entries, verify_export
from .backup import COPY_BATCH
from .context import Tx, VaultContext
from .dataurl import DATA_URL_KEY, remembered_form
from .errors import StorageError, VerificationError, keys_errors
from .faults import crash_point
from .files import move_into_place, write_file
from .layout import DATA_FILE, KEYS_FILE, RESTORE_MARKER
from .log import Event
from .opening import open_context
from .receipt import load_receipt, verify_receipt
from .shred import shred_customer
from .store import DataStore, customers, describe_error, ensure_ref_index, metadata, tables_in

__all__ = ["Progress", "ShredSource", "restore_backup"]

_SHREDS = ("customer.shred", "customer.shred-intent")


#: ``progress(phase, count, total)``: ``count`` more items done of ``total`` in ``phase``
#: ("verifying" archive bytes, "replaying" shreds).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ShredSource:
    """Where to learn of shreds made after the snapshot: a live vault directory (and its
    data URL), an exported log, or a directory of receipts."""

    vault_dir: Path | None = None
    vault_data_url: str | None = None
    log_export: Path | None = None
    receipts_dir: Path | None = None
    #: the live vault's log, already open (a restore drill runs inside the live vault);
    #: left open by the restore
    live: Auditor | None = None

    @property
    def given(self) -> bool:
        sources = (self.vault_dir, self.log_export, self.receipts_dir, self.live)
        return any(x is not None for x in sources)

    @property
    def complete(self) -> bool:
        """Only the live vault knows every shred up to now; any other source stops at its
        last signed head (an export) or shows only the shreds it names (receipts)."""
        return self.vault_dir is not None or self.live is not None

    def describe(self) -> str:
        if self.vault_dir is not None or self.live is not None:
            return "live vault"
        if self.log_export is not None:
            return "exported log"
        if self.receipts_dir is not None:
            return "receipts"
        return "none"


@dataclass(frozen=True, slots=True)
class _Newer:
    """What a source says happened after the snapshot."""

    #: subject tag (hex) -> reason; from receipts ``"id:<customer>"`` -> reason
    shreds: dict[str, str]
    #: the last entry replayed from (seq, hash)
    source_seq: int
    source_head: str
    #: where the source's knowledge ends, for a source that is not the live vault:
    #: {"from_seq", "from_head", "from_ts"} (the window runs from there to the restore)
    window_from: dict[str, Any] | None


def _window_refusal(source: ShredSource) -> str:
    what = {
        "exported log": "an exported log shows shreds only up to its last signed head",
        "receipts": "receipts show only the shreds they name, never that nobody else was shredded",
        "none": "no newer source of shreds was given (a live vault, an exported log or receipts)",
    }[source.describe()]
    return (
        f"{what}: restoring could bring back customers shredded after that. Replay from "
        "the live vault (--replay-from), or pass --accept-unreplayed-window "
        "(accept_unreplayed_window=True) to restore anyway; the window of unknown shreds "
        "is then printed and logged in the restored vault"
    )


def _newer_shreds(manifest: dict[str, Any], source: ShredSource, public_key: bytes) -> _Newer:
    """Shreds after the snapshot, from a source verified under ``public_key`` (the
    vault's key, never one the source carries) that continues the backup's history
    (same hash at the snapshot's seq). A shred's intent counts as the shred: a shred
    that crashed after it has begun, and finishes at the next open."""
    seq, head = int(manifest["seq"]), str(manifest["head"])
    at_snapshot = {"from_seq": seq, "from_head": head, "from_ts": str(manifest["created"])}
    if source.live is not None:
        return _from_live(source.live, manifest, public_key)
    if source.vault_dir is not None:
        with Auditor.open(source.vault_dir, data_url=source.vault_data_url) as auditor:
            return _from_live(auditor, manifest, public_key)
    if source.log_export is not None:
        report = verify_export(source.log_export, public_key=public_key)
        if not report.ok:
            raise VerificationError(
                f"the exported log fails: {report.message}", reason=report.reason or "invalid"
            )
        signed = max(seq, report.last_checkpoint or 0)
        found, mark = _collect(read_export_entries(source.log_export, since=seq), seq, head, signed)
        if _export_vault(source.log_export) != manifest["vault"]:
            raise VerificationError("the exported log is another vault's", reason="foreign vault")
        if mark is None:  # cannot happen once anchored: the signed head is in the stream
            raise VerificationError(
                "the exported log does not reach its own signed head", reason="truncated"
            )
        return _Newer(found, report.last_seq, report.head, mark)
    if source.receipts_dir is not None:
        found = {}
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
        return _Newer(found, last, last_head, at_snapshot)
    return _Newer({}, seq, head, at_snapshot)


def _from_live(auditor: Auditor, manifest: dict[str, Any], public_key: bytes) -> _Newer:
    seq, head = int(manifest["seq"]), str(manifest["head"])
    if auditor.vault_id != manifest["vault"]:
        raise VerificationError("the replay source is another vault", reason="foreign vault")
    report = auditor.verify(public_key=public_key)
    if not report.ok:
        raise VerificationError(
            f"the replay source's log fails: {report.message}",
            reason=report.reason or "invalid",
        )
    found, _mark = _collect(auditor.entries(since=seq), seq, head, None)
    return _Newer(found, report.last_seq, report.head, None)


def _export_vault(path: Path) -> str:
    with open(path, "rb") as handle:
        return str(json.loads(handle.readline()).get("vault", ""))


def _collect(
    entries: Iterator[dict[str, Any]], seq: int, head: str, mark_seq: int | None
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Shreds (and shred intents) after ``seq`` by subject tag, and the entry at
    ``mark_seq`` as a window start ``{"from_seq", "from_head", "from_ts"}``."""
    found: dict[str, str] = {}
    mark: dict[str, Any] | None = None
    anchored = False
    for entry in entries:
        if entry["seq"] == mark_seq:
            mark = {"from_seq": entry["seq"], "from_head": entry["hash"], "from_ts": entry["ts"]}
        if entry["seq"] == seq:
            if entry["hash"] != head:
                raise VerificationError(
                    "the replay source's history differs from the backup's at its seq",
                    reason="forked",
                )
            anchored = True
            continue
        if entry["action"] in _SHREDS and entry["outcome"] == "ok" and entry["subject"]:
            reason = entry["detail"].get("reason", "")
            found[str(entry["subject"])] = str(reason if isinstance(reason, str) else "")
    if seq > 0 and not anchored:
        raise VerificationError(
            "the replay source does not reach the backup's seq", reason="truncated"
        )
    return found, mark


def restore_backup(
    archive: str | os.PathLike[str] | BinaryIO,
    to: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    data_url: str | None = None,
    source: ShredSource = ShredSource(),
    accept_unreplayed_window: bool = False,
    accept_unreplayed_shreds: bool = False,
    public_key: bytes | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore an archive (a path, or a binary stream such as stdin) into an empty
    directory (and, with ``data_url``, an empty database), replaying every later shred
    before the vault can serve.

    Any source but the live vault leaves a window, from where its knowledge ends to
    now, in which shreds are unknown: the restore refuses unless
    ``accept_unreplayed_window`` (``accept_unreplayed_shreds`` is its older name), and
    then logs the window in the restored vault (``vault.restore``; ``keys status``).

    Raises VerificationError (damaged archive or replay source: nothing is written),
    StorageError (target not empty; a window not accepted: nothing is written),
    UnlockError (wrong passphrase). An interrupted restore leaves the target marked
    incomplete: it refuses to open."""
    accept = accept_unreplayed_window or accept_unreplayed_shreds
    root = Path(to)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StorageError(f"{root} exists and is not empty; restore only into an empty directory")
    if not source.complete and not accept:
        raise StorageError(_window_refusal(source))
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    write_file(root / RESTORE_MARKER, b"restore in progress\n")
    staged = root / ".restore-staging"
    staged.mkdir(mode=0o700)
    verifying = None if progress is None else (lambda n, total: progress("verifying", n, total))
    try:
        # Without --pubkey a restore checks the archive under its own keystore's key,
        # the key the restored vault will sign with (backup verify pins it).
        report = verify_backup(
            archive,
            public_key=public_key,
            extract_to=staged,
            progress=verifying,
            trust_embedded_key=True,
        )
        if not report.ok or report.manifest is None:
            raise VerificationError(
                f"the backup fails verification: {report.message}",
                reason=report.reason or "invalid",
            )
        manifest = report.manifest
        key = public_key if public_key is not None else keystore_public_key(staged / KEYS_FILE)
        # The source is read before anything is written: a refused one (forged, tampered,
        # another vault, short of the snapshot) leaves the target as it was found.
        newer = _newer_shreds(manifest, source, key)
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
    _set_data_location(root / KEYS_FILE, data_url)
    crash_point("restore:after-files")
    ctx = open_context(
        root, passphrase=passphrase, keyfile=keyfile, data_url=data_url, restoring=True
    )
    try:
        replaying = None if progress is None else (lambda n, total: progress("replaying", n, total))
        replayed = _replay(ctx, newer.shreds, replaying)
        crash_point("restore:after-replay")
        window = None if newer.window_from is None else {**newer.window_from, "to": ctx.now()}
        detail = {
            "backup": manifest["backup"],
            "snapshot_seq": manifest["seq"],
            "replayed_from": source.describe(),
            "source_seq": newer.source_seq,
            "source_head": newer.source_head,
            "shreds_replayed": len(replayed),
            "unreplayed_shreds_accepted": window is not None,
            "unreplayed_window": window,
        }

        def work(tx: Tx) -> None:
            tx.log(Event("admin", "admin", "vault.restore", detail=detail))

        ctx.transact(work, checkpoint=True)
    finally:
        ctx.close()
    (root / RESTORE_MARKER).unlink()
    return {**detail, "replayed": replayed, "public_key": format_public_key(key)}


def _replay(
    ctx: VaultContext, shreds: dict[str, str], progress: Callable[[int, int], None] | None
) -> list[str]:
    """Shred again every restored customer named by a newer shred (by subject tag, or by
    id from a receipt). Returns their ids. ``progress(1, total)`` after each."""
    active = ctx.data.read(
        lambda conn: [
            str(r.id)
            for r in conn.execute(select(customers.c.id).where(customers.c.state != "shredded"))
        ]
    )
    tags = ctx.keys.store.subject_tags(active)
    by_tag = {tag.hex(): cid for cid, tag in tags.items()}
    targets: dict[str, str] = {}
    for key, reason in shreds.items():
        cid = key[3:] if key.startswith("id:") else by_tag.get(key)
        if cid is not None and cid in active:
            targets[cid] = reason
    done = []
    with ctx.keys.scrub_once() as scrubbed:  # one keystore rebuild for all of them
        for cid, reason in targets.items():
            shred_customer(
                ctx,
                system_actor(ctx),
                cid,
                f"replayed on restore: {reason}"[:500] or "replayed on restore",
            )
            done.append(cid)
            if progress is not None:
                progress(1, len(targets))
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
                present = tables_in(src)
                for table in metadata.sorted_tables:
                    if table.name not in present:
                        continue  # a snapshot made before this table was added
                    result = src.execute(select(table), execution_options={"stream_results": True})
                    while rows := result.fetchmany(COPY_BATCH):
                        dst.execute(insert(table), [dict(r._mapping) for r in rows])
                    crash_point("restore:load-table")
                ensure_ref_index(dst)
        except exc.SQLAlchemyError as error:
            raise StorageError(
                f"cannot load the snapshot into the target: {describe_error(error)}"
            ) from None
        finally:
            source.dispose()
    finally:
        target.dispose()


def _set_data_location(keys_path: Path, data_url: str | None) -> None:
    """Where the restored vault's data lives: the backup's keystore says where the
    source vault kept it (its remembered data URL too), which is not where the
    restore put it."""
    remembered = remembered_form(data_url) if data_url is not None else None
    with (
        keys_errors("cannot record where the restored data lives"),
        contextlib.closing(KeyStore.open(keys_path)) as store,
        store.transaction() as conn,
    ):
        store.set_meta(conn, "data_location", "external" if data_url is not None else "sqlite")
        if remembered is None:
            store.delete_meta(conn, DATA_URL_KEY)
        else:
            store.set_meta(conn, DATA_URL_KEY, remembered)
