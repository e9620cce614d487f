"""keys status counts the key-copy clock over unexpired backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from shredvault.vault import Vault


def test_key_status_sums_shreds_since_each_unexpired_backup(tmp_path: Path, keyfile: Path) -> None:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "vault", keyfile=keyfile, clock=lambda: now[0]) as v:
        s = v.admin()
        first, second = s.add_customer(), s.add_customer()
        assert s.key_status().backup_key_copies == 0
        s.backup(str(tmp_path / "old.tar"))  # kept until destroyed: no expiry
        s.shred(first, reason="erasure request")
        s.backup(str(tmp_path / "short.tar"), expires_days=7)
        s.shred(second, reason="erasure request")
        # old.tar holds both customers' keys, short.tar the second's.
        assert s.key_status().backup_key_copies == 3
        assert [b.shredded_since for b in s.backups()] == [2, 1]
        now[0] += timedelta(days=8)  # short.tar has expired
        assert s.key_status().backup_key_copies == 2
        assert [b.expired for b in s.backups()] == [False, True]
