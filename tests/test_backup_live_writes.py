"""Backups do not stall writers (issue 19 item 5): a backup process paused after its
read snapshots began, with the log-head lock let go, while this process writes records,
adds customers and shreds one. None of that waits for the backup; the archive holds
exactly the snapshot (its log ends at the manifest head), and a restore replaying from
the live vault serves none of the customers shredded during the backup. SQLite and
PostgreSQL data stores; real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shredvault.vault import ShreddedError, ShredSource, Vault, restore_backup, verify_backup

from processes import paused_python

PURPOSE = "service"

_BACKUP = r"""
import json, sys
from shredvault.vault import Vault

path, keyfile, data_url, out = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
print(json.dumps(vault.admin().backup(out)))
vault.close()
"""


def test_writers_and_shreds_go_on_while_a_backup_copies(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    root = tmp_path / "live"
    with Vault.create(root, keyfile=keyfile, data_url=backend) as v:
        public_key = v.public_key
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        gone, kept = s.add_customers([{"ref": "gone"}, {"ref": "kept"}])
        before = s.put_many(
            [(gone, "profile", {"name": "G"}), (kept, "profile", {"name": "K"})], purpose=PURPOSE
        )
    archive = tmp_path / "b.tar"
    args = (str(root), str(keyfile), backend or "", str(archive))
    with paused_python(
        _BACKUP, *args, pause_at="backup:after-snapshot", pause_dir=tmp_path / "pause"
    ) as child:
        # The backup holds its snapshots, not the lock: every write here commits now.
        with Vault.open(root, keyfile=keyfile, data_url=backend) as v:
            s = v.admin()
            late = s.put(kept, "profile", {"name": "late"}, purpose=PURPOSE)
            (newcomer,) = s.add_customers([{"ref": "new"}])
            s.shred(gone, reason="erasure request during a backup")
        done = child.release()
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout.strip().splitlines()[-1])

    report = verify_backup(archive, public_key=public_key)
    assert report.ok, report.message
    target = tmp_path / "restored"
    live = ShredSource(vault_dir=root, vault_data_url=backend)
    result = restore_backup(archive, target, keyfile=keyfile, source=live)
    assert result["replayed"] == [gone]
    with Vault.open(target, keyfile=keyfile) as restored:
        s = restored.admin()
        with pytest.raises(ShreddedError):
            s.get(gone, before[0], purpose=PURPOSE)
        assert dict(s.get(kept, before[1], purpose=PURPOSE).fields) == {"name": "K"}
        ids = {c.id for c in s.list_customers()}
        assert newcomer not in ids and kept in ids  # the snapshot, not what came after
        assert late not in {r.id for r in s.list_records(kept, purpose=PURPOSE)}
        assert restored.verify_log().ok
    with Vault.open(root, keyfile=keyfile, data_url=backend) as v:
        (info,) = v.admin().backups()
        assert info.seq == manifest["seq"] and info.shredded_since == 1
