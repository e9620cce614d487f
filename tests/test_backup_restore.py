"""Restoring a backup never resurrects a shredded customer (DESIGN §7, §7a).

The negative control: a backup taken at t0, a customer shredded at t1, the t0 backup
restored with the later shreds replayed (from the live vault, an exported log or
receipts). The customer stays shredded, the restored keystore holds none of its key
bytes, everyone else is intact and the log verifies. Restoring the same archive
without replay brings the customer back, which is what the replay prevents (and shows
the checks measure something). Also: refusals that leave the target untouched, wrong
secrets, a restore killed mid-way, a backup taken under concurrent writes, SQLite <->
PostgreSQL, and the key-copy clock.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import dek_aad, generate_keyfile
from shredvault.vault import (
    Auditor,
    ShreddedError,
    ShredSource,
    StorageError,
    UnlockError,
    Vault,
    VerificationError,
    restore_backup,
    verify_backup,
)
from shredvault.vault.layout import RESTORE_MARKER
from shredvault.vault.store import DataStore, customers, log

from processes import CRASH_EXIT_CODE, REPO, run_python
from residue import scan_keystore

PURPOSE = "service"
PASSPHRASE = b"restore me with care 4471"

# -- a live vault with a backup taken before a shred ---------------------------------------


@dataclass
class Live:
    """A live vault: a backup at t0, then customer ``shredded`` shredded at t1."""

    vault: Vault
    root: Path
    keyfile: Path
    archive: Path
    manifest: dict[str, Any]
    shredded: str
    shredded_records: dict[str, dict[str, str]]
    kept: str
    kept_records: dict[str, dict[str, str]]
    needles: dict[str, bytes]
    export: Path
    receipts: Path
    public_key: bytes = field(default=b"")


def key_needles(v: Vault, customer_id: str) -> dict[str, bytes]:
    """The customer's wrapped DEK rows, the DEKs they unwrap to, and its subject tag,
    read straight from keys.db (before the shred)."""
    conn = sqlite3.connect(v.path / "keys.db")
    try:
        rows = conn.execute(
            "SELECT version, epoch, wrapped FROM deks WHERE customer_id = ?", (customer_id,)
        ).fetchall()
        ((tag,),) = conn.execute(
            "SELECT tag FROM subject_tags WHERE customer_id = ?", (customer_id,)
        ).fetchall()
    finally:
        conn.close()
    assert rows
    needles = {"subject tag": bytes(tag)}
    for version, epoch, wrapped in rows:
        raw = v._ctx.keys._kek(epoch).open(
            wrapped, dek_aad(v.vault_id, customer_id, version, epoch)
        )
        assert len(raw) == 32
        needles[f"wrapped DEK v{version}"] = bytes(wrapped)
        needles[f"raw DEK v{version}"] = bytes(raw)
    return needles


def add_customer_with(session: Any, names: list[str]) -> tuple[str, dict[str, dict[str, str]]]:
    cid = session.add_customer()
    items = [(cid, "profile", {"name": name}) for name in names]
    rids = session.put_many(items, purpose=PURPOSE)
    return cid, {rid: {"name": name} for rid, name in zip(rids, names, strict=True)}


@pytest.fixture
def live(tmp_path: Path, keyfile: Path) -> Iterator[Live]:
    root = tmp_path / "live"
    v = Vault.create(root, keyfile=keyfile)
    try:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        shredded, shredded_records = add_customer_with(s, ["Xenia Ortiz", "Xenia O."])
        kept, kept_records = add_customer_with(s, ["Yusuf Demir", "Y. Demir"])
        archive = tmp_path / "t0.tar"
        manifest = s.backup(str(archive))
        needles = key_needles(v, shredded)
        receipt = s.shred(shredded, reason="erasure request #7")
        s.get(kept, next(iter(kept_records)), purpose=PURPOSE)  # the log moves on
        receipts = tmp_path / "receipts"
        receipts.mkdir()
        receipt.write(receipts / f"{shredded}.json")
        export = tmp_path / "log.jsonl"
        with Auditor.open(root) as auditor, export.open("wb") as out:
            auditor.export(out)
        yield Live(
            v,
            root,
            keyfile,
            archive,
            manifest,
            shredded,
            shredded_records,
            kept,
            kept_records,
            needles,
            export,
            receipts,
            v.public_key,
        )
    finally:
        v.close()


SOURCES: dict[str, Callable[[Live], ShredSource]] = {
    "live vault": lambda live: ShredSource(vault_dir=live.root),
    "exported log": lambda live: ShredSource(log_export=live.export),
    "receipts": lambda live: ShredSource(receipts_dir=live.receipts),
}


@dataclass
class Restored:
    root: Path
    result: dict[str, Any]
    source: str


@pytest.fixture(params=sorted(SOURCES))
def restored(live: Live, tmp_path: Path, request: pytest.FixtureRequest) -> Restored:
    """The t0 backup restored with the later shred replayed from one source."""
    target = tmp_path / "restored"
    result = restore_backup(
        live.archive,
        target,
        keyfile=live.keyfile,
        source=SOURCES[request.param](live),
        # Only the live vault knows every shred up to now (test_backup_sources.py).
        accept_unreplayed_window=request.param != "live vault",
    )
    return Restored(target, result, request.param)


def restore_entries(root: Path) -> list[dict[str, Any]]:
    with Auditor.open(root) as auditor:
        return [e for e in auditor.entries() if e["action"] == "vault.restore"]


# -- the negative control ------------------------------------------------------------------


def test_customer_shredded_after_the_backup_stays_shredded_after_restore(
    live: Live, restored: Restored
) -> None:
    assert restored.result["replayed"] == [live.shredded]
    with Vault.open(restored.root, keyfile=live.keyfile) as v:
        s = v.admin()
        for rid in live.shredded_records:
            with pytest.raises(ShreddedError):
                s.get(live.shredded, rid, purpose=PURPOSE)
        assert s.customer(live.shredded).state == "shredded"


def test_restored_keystore_holds_none_of_the_shredded_customers_key_bytes(
    live: Live, restored: Restored
) -> None:
    assert scan_keystore(restored.root, live.needles) == {}
    with Vault.open(restored.root, keyfile=live.keyfile) as v:
        assert v._ctx.keys.store.deks([live.shredded]) == []
        assert v._ctx.keys.store.subject_tags([live.shredded]) == {}
        assert scan_keystore(restored.root, live.needles) == {}  # nor while it is open


def test_customers_not_shredded_are_restored_intact(live: Live, restored: Restored) -> None:
    with Vault.open(restored.root, keyfile=live.keyfile) as v:
        got = v.admin().get_many([(live.kept, rid) for rid in live.kept_records], purpose=PURPOSE)
    assert {r.id: r.fields for r in got} == live.kept_records


def test_restored_log_verifies_in_the_vault_and_for_an_auditor(
    live: Live, restored: Restored
) -> None:
    with Vault.open(restored.root, keyfile=live.keyfile) as v:
        report = v.verify_log()
        assert report.ok, report.message
        assert v.vault_id == live.vault.vault_id
    with Auditor.open(restored.root) as auditor:
        report = auditor.verify(public_key=live.public_key)
        assert report.ok, report.message
        at_snapshot = next(auditor.entries(since=live.manifest["seq"]))
    assert at_snapshot["hash"] == live.manifest["head"]


def test_restore_logs_which_source_it_replayed_from(live: Live, restored: Restored) -> None:
    (entry,) = restore_entries(restored.root)
    assert entry["detail"]["replayed_from"] == restored.source
    assert entry["detail"]["shreds_replayed"] == 1
    window = entry["detail"]["unreplayed_window"]
    assert entry["detail"]["unreplayed_shreds_accepted"] is (window is not None)
    assert (window is None) is (restored.source == "live vault")
    assert entry["detail"]["snapshot_seq"] == live.manifest["seq"]
    # The head replayed from: its seq and hash as the live vault's log has them.
    source_seq = entry["detail"]["source_seq"]
    assert source_seq > live.manifest["seq"]
    stored = live.vault._ctx.data.read(
        lambda conn: conn.execute(select(log.c.hash).where(log.c.seq == source_seq)).scalar()
    )
    assert entry["detail"]["source_head"] == stored
    assert not (restored.root / RESTORE_MARKER).exists()


def test_without_replay_the_shredded_customer_is_readable_again(live: Live, tmp_path: Path) -> None:
    """Resurrection is real: the same archive restored with no source (accepted) gives
    the shredded customer back, and the same scan finds its keys. The archive itself
    holds them too, until it is destroyed (the receipt's scope)."""
    target = tmp_path / "resurrected"
    restore_backup(live.archive, target, keyfile=live.keyfile, accept_unreplayed_shreds=True)
    with Vault.open(target, keyfile=live.keyfile) as v:
        got = v.admin().get_many(
            [(live.shredded, rid) for rid in live.shredded_records], purpose=PURPOSE
        )
    assert {r.id: r.fields for r in got} == live.shredded_records
    found = {name for names in scan_keystore(target, live.needles).values() for name in names}
    assert found == {n for n in live.needles if not n.startswith("raw DEK")}
    archive_bytes = live.archive.read_bytes()
    assert all(live.needles[n] in archive_bytes for n in found)


def test_accepting_unreplayed_shreds_is_logged_in_the_restored_vault(
    live: Live, tmp_path: Path
) -> None:
    target = tmp_path / "accepted"
    result = restore_backup(
        live.archive, target, keyfile=live.keyfile, accept_unreplayed_shreds=True
    )
    assert result["unreplayed_shreds_accepted"] is True and result["replayed"] == []
    (entry,) = restore_entries(target)
    assert entry["detail"]["unreplayed_shreds_accepted"] is True
    assert entry["detail"]["replayed_from"] == "none"


# -- refusals -----------------------------------------------------------------------------


def test_restore_without_a_source_or_acceptance_refuses_before_creating_anything(
    live: Live, tmp_path: Path
) -> None:
    target = tmp_path / "never"
    with pytest.raises(StorageError, match="accept-unreplayed-window"):
        restore_backup(live.archive, target, keyfile=live.keyfile)
    assert not target.exists()
    target.mkdir()
    with pytest.raises(StorageError):
        restore_backup(live.archive, target, keyfile=live.keyfile)
    assert list(target.iterdir()) == []


def test_restore_into_a_non_empty_directory_refuses_and_leaves_it_untouched(
    live: Live, tmp_path: Path
) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("keep me\n")
    with pytest.raises(StorageError, match="not empty"):
        restore_backup(
            live.archive, target, keyfile=live.keyfile, source=SOURCES["live vault"](live)
        )
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me\n"


def test_restore_over_the_live_vault_refuses_and_leaves_it_serving(live: Live) -> None:
    with pytest.raises(StorageError):
        restore_backup(live.archive, live.root, keyfile=live.keyfile, accept_unreplayed_shreds=True)
    assert not (live.root / RESTORE_MARKER).exists()
    with pytest.raises(ShreddedError):
        live.vault.admin().get(live.shredded, next(iter(live.shredded_records)), purpose=PURPOSE)


def test_replaying_from_another_vault_is_refused(live: Live, tmp_path: Path) -> None:
    other = tmp_path / "other"
    Vault.create(other, keyfile=live.keyfile).close()
    target = tmp_path / "restored"
    with pytest.raises(VerificationError) as caught:
        restore_backup(
            live.archive, target, keyfile=live.keyfile, source=ShredSource(vault_dir=other)
        )
    assert caught.value.reason == "foreign vault"
    assert not target.exists()  # the source is checked before anything is written


def test_replaying_from_a_log_exported_before_the_backup_is_refused(
    live: Live, tmp_path: Path
) -> None:
    """An export that stops short of the snapshot cannot say what happened after it."""
    early = tmp_path / "early"
    Vault.create(early, keyfile=live.keyfile).close()
    with Vault.open(early, keyfile=live.keyfile) as v:
        v.checkpoint()
        export = tmp_path / "before.jsonl"
        with Auditor.open(early) as auditor, export.open("wb") as out:
            auditor.export(out)
        v.checkpoint()  # the log moves past the export's end
        v.admin().backup(str(tmp_path / "later.tar"))
    with pytest.raises(VerificationError) as caught:
        restore_backup(
            tmp_path / "later.tar",
            tmp_path / "restored",
            keyfile=live.keyfile,
            source=ShredSource(log_export=export),
            accept_unreplayed_window=True,
        )
    assert caught.value.reason == "truncated"


def test_a_tampered_receipt_is_refused_as_a_replay_source(live: Live, tmp_path: Path) -> None:
    path = live.receipts / f"{live.shredded}.json"
    document = json.loads(path.read_text())
    document["entry"]["detail"]["reason"] = "altered"
    path.write_text(json.dumps(document))
    with pytest.raises(VerificationError):
        restore_backup(
            live.archive,
            tmp_path / "restored",
            keyfile=live.keyfile,
            source=ShredSource(receipts_dir=live.receipts),
            accept_unreplayed_window=True,
        )
    assert not (tmp_path / "restored").exists()


# -- wrong secrets --------------------------------------------------------------------------


@dataclass(frozen=True)
class PassphraseBackup:
    archive: Path
    live: Path


@pytest.fixture(scope="module")
def passphrase_backup(tmp_path_factory: pytest.TempPathFactory) -> PassphraseBackup:
    """A passphrase vault (Argon2id at the floor: each unlock costs ~0.3 s) and its backup."""
    base = tmp_path_factory.mktemp("passphrase")
    with Vault.create(base / "live", passphrase=PASSPHRASE) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        add_customer_with(v.admin(), ["Pia Lindqvist"])
        v.admin().backup(str(base / "backup.tar"))
    return PassphraseBackup(base / "backup.tar", base / "live")


def test_wrong_passphrase_raises_unlock_error_and_the_target_refuses_to_open(
    passphrase_backup: PassphraseBackup, tmp_path: Path
) -> None:
    target = tmp_path / "restored"
    with pytest.raises(UnlockError):
        restore_backup(
            passphrase_backup.archive,
            target,
            passphrase=b"not the passphrase",
            source=ShredSource(vault_dir=passphrase_backup.live),
        )
    assert (target / RESTORE_MARKER).exists()
    with pytest.raises(StorageError, match="unfinished restore"):
        Vault.open(target, passphrase=PASSPHRASE).close()


def test_a_retry_with_the_right_passphrase_into_a_fresh_directory_works(
    passphrase_backup: PassphraseBackup, tmp_path: Path
) -> None:
    source = ShredSource(vault_dir=passphrase_backup.live)
    with pytest.raises(UnlockError):
        restore_backup(
            passphrase_backup.archive, tmp_path / "first", passphrase=b"wrong", source=source
        )
    restore_backup(
        passphrase_backup.archive, tmp_path / "second", passphrase=PASSPHRASE, source=source
    )
    with Vault.open(tmp_path / "second", passphrase=PASSPHRASE) as v:
        (customer,) = v.admin().list_customers()
        (record,) = v.admin().list_records(customer.id, purpose=PURPOSE)
    assert record.fields == {"name": "Pia Lindqvist"}


def test_wrong_keyfile_raises_unlock_error(live: Live, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    generate_keyfile(other)
    with pytest.raises(UnlockError):
        restore_backup(
            live.archive, tmp_path / "restored", keyfile=other, source=SOURCES["live vault"](live)
        )


# -- a restore killed mid-way -----------------------------------------------------------------

_RESTORE = r"""
import sys
from pathlib import Path
from shredvault.vault import ShredSource, restore_backup

archive, target, keyfile, live = sys.argv[1:5]
restore_backup(archive, target, keyfile=keyfile, source=ShredSource(vault_dir=Path(live)))
"""


@pytest.mark.parametrize("crash_at", ["restore:after-files", "restore:after-replay"])
def test_a_restore_killed_midway_leaves_a_target_that_refuses_to_open(
    live: Live, tmp_path: Path, crash_at: str
) -> None:
    target = tmp_path / "killed"
    args = (str(live.archive), str(target), str(live.keyfile), str(live.root))
    done = run_python(_RESTORE, *args, crash_at=crash_at)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    assert (target / RESTORE_MARKER).exists()
    with pytest.raises(StorageError, match="unfinished restore"):
        Vault.open(target, keyfile=live.keyfile).close()
    retry = tmp_path / "retry"
    done = run_python(_RESTORE, str(live.archive), str(retry), str(live.keyfile), str(live.root))
    assert done.returncode == 0, done.stderr
    with Vault.open(retry, keyfile=live.keyfile) as v:
        with pytest.raises(ShreddedError):
            v.admin().get(live.shredded, next(iter(live.shredded_records)), purpose=PURPOSE)
        assert v.verify_log().ok


_RESTORE_TO_URL = r"""
import sys
from pathlib import Path
from shredvault.vault import ShredSource, restore_backup

archive, target, keyfile, live, url = sys.argv[1:6]
restore_backup(
    archive, target, keyfile=keyfile, data_url=url, source=ShredSource(vault_dir=Path(live))
)
"""


def test_a_restore_killed_while_loading_into_postgres_leaves_the_database_empty(
    live: Live, tmp_path: Path, pg_url: str
) -> None:
    """Tables and rows go in one transaction: a kill mid-load leaves no half schema, so
    the same database takes the retry (before, it refused: 'already holds a vault')."""
    args = [str(live.archive), "", str(live.keyfile), str(live.root), pg_url]
    args[1] = str(tmp_path / "killed")
    done = run_python(_RESTORE_TO_URL, *args, crash_at="restore:load-table")
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    probe = DataStore.connect(url=pg_url)
    try:
        assert not probe.has_schema()
    finally:
        probe.dispose()
    args[1] = str(tmp_path / "retry")
    done = run_python(_RESTORE_TO_URL, *args)
    assert done.returncode == 0, done.stderr
    with Vault.open(tmp_path / "retry", keyfile=live.keyfile, data_url=pg_url) as v:
        got = v.admin().get_many([(live.kept, r) for r in live.kept_records], purpose=PURPOSE)
        assert {r.id: r.fields for r in got} == live.kept_records
        assert v.verify_log().ok


# -- a backup taken while another process writes ----------------------------------------------

_WRITER = r"""
import sys
from pathlib import Path
from shredvault.vault import Vault

root, keyfile, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
ready = stop.with_name("ready")
with Vault.open(root, keyfile=keyfile) as vault:
    s = vault.admin()
    previous, rounds = None, 0
    while not stop.exists():
        cid = s.add_customer()
        s.put_many(
            [(cid, "profile", {"name": f"writer {rounds} #{i}"}) for i in range(5)],
            purpose="service",
        )
        if previous is not None and rounds % 3 == 2:
            s.shred(previous, reason="writer loop")
        previous, rounds = cid, rounds + 1
        if rounds == 2:
            ready.touch()
print(rounds)
"""


def test_a_backup_taken_during_concurrent_writes_restores_consistently(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "busy"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    stop = tmp_path / "stop"
    # Opened before the writer starts: opening rolls forward any shred found half-done,
    # and would finish one the writer is still in the middle of (see the report).
    backing_up = Vault.open(root, keyfile=keyfile)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(keyfile), str(stop)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    archives = []
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert writer.poll() is None, writer.communicate()[1]
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.02)
        for i in range(3):
            archives.append(tmp_path / f"busy-{i}.tar")
            backing_up.admin().backup(str(archives[-1]))
            time.sleep(0.15)
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
        backing_up.close()
    assert writer.returncode == 0, err
    assert int(out) >= 3
    with Vault.open(root, keyfile=keyfile) as v:
        live_shredded = {c.id for c in v.admin().list_customers(state="shredded")}
    for i, archive in enumerate(archives):
        report = verify_backup(archive, trust_embedded_key=True)
        assert report.ok, report.message
        target = tmp_path / f"restored-{i}"
        restore_backup(archive, target, keyfile=keyfile, source=ShredSource(vault_dir=root))
        with Vault.open(target, keyfile=keyfile) as restored:
            assert restored.verify_log().ok
            s = restored.admin()
            everyone = s.list_customers()
            assert everyone, "the snapshot holds the writer's customers"
            active = [c.id for c in everyone if c.state == "active"]
            assert not set(active) & live_shredded
            half_shredded = restored._ctx.data.read(
                lambda conn: conn.execute(
                    select(customers.c.id).where(customers.c.state == "shredding")
                ).all()
            )
            assert half_shredded == []  # a shred caught mid-way was rolled forward
            decrypted = 0
            for cid in active:
                records = s.list_records(cid, purpose=PURPOSE)
                # A snapshot may fall between add_customer and put_many: 0 or all 5.
                assert len(records) in (0, 5)
                assert all(r.fields["name"].startswith("writer ") for r in records)
                decrypted += len(records)
            assert decrypted > 0


# -- SQLite <-> PostgreSQL ---------------------------------------------------------------------


def test_restore_from_sqlite_into_postgres_round_trips(
    live: Live, tmp_path: Path, pg_url: str
) -> None:
    target = tmp_path / "on-postgres"
    restore_backup(
        live.archive,
        target,
        keyfile=live.keyfile,
        data_url=pg_url,
        source=SOURCES["live vault"](live),
    )
    assert not (target / "data.db").exists()
    with Vault.open(target, keyfile=live.keyfile, data_url=pg_url) as v:
        s = v.admin()
        got = s.get_many([(live.kept, rid) for rid in live.kept_records], purpose=PURPOSE)
        assert {r.id: r.fields for r in got} == live.kept_records
        with pytest.raises(ShreddedError):
            s.get(live.shredded, next(iter(live.shredded_records)), purpose=PURPOSE)
        assert v.verify_log().ok
    with Auditor.open(target, data_url=pg_url) as auditor:
        assert auditor.verify(public_key=live.public_key).ok


def test_restore_into_a_database_that_holds_a_vault_refuses(
    live: Live, tmp_path: Path, pg_url: str
) -> None:
    Vault.create(tmp_path / "occupant", keyfile=live.keyfile, data_url=pg_url).close()
    with pytest.raises(StorageError, match="already holds a vault"):
        restore_backup(
            live.archive,
            tmp_path / "restored",
            keyfile=live.keyfile,
            data_url=pg_url,
            source=SOURCES["live vault"](live),
        )
    # Nothing was restored, so nothing is left behind: the same command can run again.
    assert not (tmp_path / "restored").exists()
    with Vault.open(tmp_path / "occupant", keyfile=live.keyfile, data_url=pg_url) as v:
        assert v.verify_log().ok


def test_a_damaged_archive_leaves_an_empty_target_as_it_was(live: Live, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tar"
    data = bytearray(live.archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    target = tmp_path / "empty-target"
    target.mkdir()
    with pytest.raises(VerificationError):
        restore_backup(damaged, target, keyfile=live.keyfile, source=SOURCES["live vault"](live))
    assert list(target.iterdir()) == []
    result = restore_backup(
        live.archive, target, keyfile=live.keyfile, source=SOURCES["live vault"](live)
    )
    assert result["replayed"] == [live.shredded]


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.postgres,
        ),
    ],
    indirect=True,
)
def test_backup_of_a_vault_on_either_backend_restores_to_sqlite(
    make_vault: Callable[..., Vault], backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    v = make_vault("live")
    v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    s = v.admin()
    gone, _ = add_customer_with(s, ["Gone Soon"])
    kept, kept_records = add_customer_with(s, ["Stays Put", "Stays P."])
    s.backup(str(tmp_path / "backup.tar"))
    s.shred(gone, reason="erasure request")
    assert verify_backup(tmp_path / "backup.tar", public_key=v.public_key).ok
    target = tmp_path / "on-sqlite"
    restore_backup(
        tmp_path / "backup.tar",
        target,
        keyfile=keyfile,
        source=ShredSource(vault_dir=v.path, vault_data_url=backend),
    )
    assert (target / "data.db").is_file()
    with Vault.open(target, keyfile=keyfile) as restored:
        got = restored.admin().get_many([(kept, rid) for rid in kept_records], purpose=PURPOSE)
        assert {r.id: r.fields for r in got} == kept_records
        assert restored.admin().customer(gone).state == "shredded"
        assert restored.verify_log().ok


def test_an_archive_of_a_vault_whose_data_is_external_verifies(
    tmp_path: Path, keyfile: Path
) -> None:
    """The data store named by URL (here a SQLite URL, so no PostgreSQL is needed):
    the keystore says its data is external, as it does for a PostgreSQL vault."""
    url = f"sqlite:///{tmp_path / 'external.db'}"
    with Vault.create(tmp_path / "live", keyfile=keyfile, data_url=url) as v:
        v.admin().backup(str(tmp_path / "backup.tar"))
    report = verify_backup(tmp_path / "backup.tar", trust_embedded_key=True)
    assert report.ok, report.message


def test_an_archive_of_a_vault_whose_data_is_external_restores_into_a_directory(
    tmp_path: Path, keyfile: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'external.db'}"
    with Vault.create(tmp_path / "live", keyfile=keyfile, data_url=url) as v:
        v.admin().backup(str(tmp_path / "backup.tar"))
    target = tmp_path / "restored"
    restore_backup(tmp_path / "backup.tar", target, keyfile=keyfile, accept_unreplayed_shreds=True)
    with Vault.open(target, keyfile=keyfile) as restored:
        assert restored.verify_log().ok


# -- the key-copy clock ----------------------------------------------------------------------


def test_backups_count_the_customers_shredded_since_each(tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        s = v.admin()
        first, second, third = (s.add_customer() for _ in range(3))
        s.backup(str(tmp_path / "a.tar"))
        s.shred(first, reason="erasure request")
        s.shred(second, reason="erasure request")
        assert [b.shredded_since for b in s.backups()] == [2]
        s.backup(str(tmp_path / "b.tar"))
        s.shred(third, reason="erasure request")
        assert [b.shredded_since for b in s.backups()] == [3, 1]


def test_customers_created_after_a_backup_do_not_count_on_its_clock(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        s = v.admin()
        held = s.add_customer()
        s.backup(str(tmp_path / "a.tar"))
        later = s.add_customer()  # not in the archive: its keys were never copied
        s.shred(later, reason="erasure request")
        s.shred(held, reason="erasure request")
        assert [b.shredded_since for b in s.backups()] == [1]


def test_backup_expiry_follows_the_vaults_clock(tmp_path: Path, keyfile: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "live", keyfile=keyfile, clock=lambda: now[0]) as v:
        s = v.admin()
        manifest = s.backup(str(tmp_path / "a.tar"), expires_days=7)
        s.backup(str(tmp_path / "b.tar"))
        assert manifest["expires"] == "2030-01-08T00:00:00.000000Z"
        assert [(b.expires, b.expired) for b in s.backups()] == [
            ("2030-01-08T00:00:00.000000Z", False),
            (None, False),
        ]
        now[0] += timedelta(days=7)
        assert [b.expired for b in s.backups()] == [True, False]


def _drop_handover_imports(v: Vault) -> None:
    from sqlalchemy import text

    with v._ctx.data.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS sv_handover_imports"))


def test_a_data_store_made_before_an_additive_table_backs_up_and_restores(
    make_vault: Callable[..., Vault], backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    """Tables added after schema version 1 (sv_handover_imports) are created on first
    use; a backup of a store that lacks one copies the tables that exist."""
    v = make_vault("old")
    v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    s = v.admin()
    cid, recs = add_customer_with(s, ["Before The Table"])
    _drop_handover_imports(v)
    archive = tmp_path / "old.tar"
    s.backup(str(archive))
    assert verify_backup(archive, public_key=v.public_key).ok
    target = tmp_path / "restored"
    restore_backup(
        archive,
        target,
        keyfile=keyfile,
        source=ShredSource(vault_dir=tmp_path / "old", vault_data_url=backend),
    )
    with Vault.open(target, keyfile=keyfile) as restored:
        got = restored.admin().get_many([(cid, rid) for rid in recs], purpose=PURPOSE)
        assert {r.id: r.fields for r in got} == recs
        assert restored.verify_log().ok


def test_a_snapshot_without_an_additive_table_restores_into_postgres(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "old", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        cid, recs = add_customer_with(s, ["Before The Table"])
        _drop_handover_imports(v)
        s.backup(str(tmp_path / "old.tar"))
    restore_backup(
        tmp_path / "old.tar",
        tmp_path / "restored",
        keyfile=keyfile,
        data_url=pg_url,
        source=ShredSource(vault_dir=tmp_path / "old"),
    )
    with Vault.open(tmp_path / "restored", keyfile=keyfile, data_url=pg_url) as restored:
        got = restored.admin().get_many([(cid, rid) for rid in recs], purpose=PURPOSE)
        assert {r.id: r.fields for r in got} == recs
        assert restored.verify_log().ok


def test_backup_progress_counts_up_to_the_snapshot_seq(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    """The progress callback (the CLI's bar) moves during the copy on either backend and
    adds up to the log entries in the snapshot."""
    v = make_vault("big")
    v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    s = v.admin()
    customers_ = [s.add_customer() for _ in range(20)]
    s.put_many(
        [(customers_[i % 20], "profile", {"name": "x" * 900}) for i in range(3000)],
        purpose=PURPOSE,
    )
    steps: list[int] = []
    manifest = s.backup(str(tmp_path / "big.tar"), progress=steps.append)
    assert steps and all(n > 0 for n in steps)
    assert sum(steps) == manifest["seq"]
    if backend is None:  # the page copy reports between steps, not once at the end
        assert len(steps) > 1
