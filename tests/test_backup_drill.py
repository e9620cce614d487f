"""Restore drills (issue 23, item 4; docs/drills.md) on SQLite and PostgreSQL: a drill
verifies, restores into a temporary copy, replays shreds, decrypts a sample, checks
that no shredded customer is readable, times each step, logs ``backup.drill`` in the
live vault and always deletes the copy; key status and the audit report warn when no
drill passed within the interval."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import generate_keyfile
from shredvault.vault import Auditor, KeyStatus, SchemaError, UnlockError, Vault, VerificationError

from conftest import VaultFactory, pg_base_url

STEPS = ["verify_archive", "restore", "verify_log", "sample", "shreds", "cleanup"]


def _entries(vault: Vault, url: str | None, action: str) -> list[dict[str, Any]]:
    with Auditor.open(vault.path, data_url=url) as auditor:
        return [e for e in auditor.entries() if e["action"] == action]


def _warnings(status: KeyStatus) -> list[str]:
    assert status.routine is not None
    return list(status.routine["warnings"])


def _leftovers(vault: Vault) -> list[str]:
    """What a drill could leave behind: folders beside the vault, schemas in PostgreSQL."""
    found = [p.name for p in vault.path.parent.iterdir() if ".drill-" in p.name]
    base = pg_base_url()
    if base is not None:
        engine = create_engine(base)
        try:
            with engine.connect() as conn:
                found += conn.execute(
                    text(
                        "SELECT schema_name FROM information_schema.schemata "
                        "WHERE schema_name LIKE 'svdrill%'"
                    )
                ).scalars()
        finally:
            engine.dispose()
    return found


def _shop(make_vault: VaultFactory, **kwargs: object) -> tuple[Vault, list[str]]:
    vault = make_vault(**kwargs)
    vault.declare_kind("profile", fields=["name"], purposes=["service"])
    admin = vault.admin()
    customers = [admin.add_customer() for _ in range(4)]
    for i, cid in enumerate(customers):
        admin.put(cid, "profile", {"name": f"Customer {i}"}, purpose="service")
    return vault, customers


def test_a_good_archive_drills_with_times_a_log_entry_and_no_copy_left(
    make_vault: VaultFactory, backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    vault, _customers = _shop(make_vault)
    admin = vault.admin()
    manifest = admin.backup(str(tmp_path / "good.tar"))
    phases: set[str] = set()
    report = admin.restore_drill(
        tmp_path / "good.tar", keyfile=keyfile, sample=3, progress=lambda p, n, t: phases.add(p)
    )
    assert report.ok and report.copy_removed
    assert report.backup == manifest["backup"]
    assert list(report.ms) == STEPS
    assert (report.sampled, report.records_decrypted, report.decrypt_failures) == (3, 3, 0)
    assert report.customers_in_copy == 4
    assert {"verifying", "restoring", "sampling"} <= phases
    (entry,) = _entries(vault, backend, "backup.drill")
    assert entry["outcome"] == "ok" and entry["seq"] == report.seq
    assert entry["detail"]["backup"] == manifest["backup"]
    assert set(entry["detail"]["ms"]) == set(STEPS)
    assert "Customer" not in json.dumps(entry)  # counts and times, no personal data
    assert _leftovers(vault) == []
    assert vault.verify_log().ok


def test_a_tampered_archive_fails_typed_logged_and_leaves_the_vault_intact(
    make_vault: VaultFactory, backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    vault, customers = _shop(make_vault)
    admin = vault.admin()
    archive = tmp_path / "bad.tar"
    admin.backup(str(archive))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a store member
    archive.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as caught:
        admin.restore_drill(archive, keyfile=keyfile)
    assert caught.value.reason == "modified"
    (entry,) = _entries(vault, backend, "backup.drill")
    assert entry["outcome"] == "error"
    assert entry["detail"]["reason_code"] == "modified"
    assert entry["detail"]["copy_removed"] is True
    assert _leftovers(vault) == []
    assert vault.verify_log().ok
    (record,) = admin.list_records(customers[0], purpose="service")
    assert dict(record.fields) == {"name": "Customer 0"}
    status = admin.key_status()
    assert any("restore drill" in v and "failed" in v for v in _warnings(status))


def test_a_wrong_secret_fails_after_the_copy_was_written_and_still_deletes_it(
    make_vault: VaultFactory, backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    vault, _customers = _shop(make_vault)
    admin = vault.admin()
    admin.backup(str(tmp_path / "good.tar"))
    other = tmp_path / "other.key"
    generate_keyfile(other)
    with pytest.raises(UnlockError):
        admin.restore_drill(tmp_path / "good.tar", keyfile=other)
    (entry,) = _entries(vault, backend, "backup.drill")
    assert entry["outcome"] == "error" and entry["detail"]["copy_removed"] is True
    assert "restore" in entry["detail"]["ms"]
    assert _leftovers(vault) == []


def test_shreds_after_the_backup_are_replayed_and_unreadable_in_the_copy(
    make_vault: VaultFactory, backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    vault, customers = _shop(make_vault)
    admin = vault.admin()
    admin.shred(customers[0], reason="erasure request")  # before: gone from the archive too
    admin.backup(str(tmp_path / "good.tar"))
    admin.shred(customers[1], reason="erasure request")  # after: the drill must replay it
    report = admin.restore_drill(tmp_path / "good.tar", keyfile=keyfile, sample=100)
    assert report.shreds_replayed == 1
    assert (report.shredded_checked, report.shredded_readable) == (2, 0)
    assert report.sampled == 2  # only the customers still active in the copy
    assert report.records_decrypted == 2
    assert _leftovers(vault) == []


def test_a_bad_sample_is_refused_before_anything_runs(
    sqlite_vault: Vault, keyfile: Path, tmp_path: Path
) -> None:
    admin = sqlite_vault.admin()
    for bad in (-1, True, 1.5, 10**9):
        with pytest.raises(SchemaError):
            admin.restore_drill(tmp_path / "none.tar", keyfile=keyfile, sample=bad)  # type: ignore[arg-type]
    assert _entries(sqlite_vault, None, "backup.drill") == []


def test_no_drill_within_the_interval_warns_in_key_status_and_the_audit_report(
    tmp_path: Path, keyfile: Path
) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "vault", keyfile=keyfile, clock=lambda: now[0]) as vault:
        admin = vault.admin()
        admin.backup(str(tmp_path / "good.tar"))
        assert not _warnings(admin.key_status())
        now[0] += timedelta(days=91)
        assert any("no restore drill" in v for v in _warnings(admin.key_status()))
        assert admin.audit_report()["routine"]["drill"]["overdue"] is True
        admin.restore_drill(tmp_path / "good.tar", keyfile=keyfile)
        status = admin.key_status()
        assert not any("drill" in v for v in _warnings(status))
        assert status.routine is not None and status.routine["drill"]["last"]["outcome"] == "ok"
        now[0] += timedelta(days=31)
        assert not admin.audit_report()["routine"]["drill"]["overdue"]
        admin.set_drill_interval(30)  # stored in the keystore, survives a reopen
    now[0] += timedelta(days=1)
    with Vault.open(tmp_path / "vault", keyfile=keyfile, clock=lambda: now[0]) as vault:
        report = vault.admin().audit_report()
        assert report["routine"]["drill"]["interval_days"] == 30
        assert report["routine"]["drill"]["overdue"] is True
        assert any("restore drill" in w for w in report["routine"]["warnings"])
        with pytest.raises(SchemaError):
            vault.admin().set_drill_interval(0)
