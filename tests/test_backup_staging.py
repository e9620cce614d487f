"""A backup stages its copies of keys.db and data.db beside the archive, never in the
system temp folder: a run killed half-way must not leave a key copy somewhere nobody
looks (found by an audit: TMPDIR kept a full keys.db after a crash)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from shredvault import Vault
from shredvault.vault import generate_keyfile

from processes import CRASH_EXIT_CODE, REPO

BACKUP = """
import sys
from shredvault import Vault
with Vault.open(sys.argv[1], keyfile=sys.argv[2]) as v:
    v.admin().backup(sys.argv[3])
"""


def test_a_killed_backup_leaves_its_staging_beside_the_archive_not_in_tmpdir(
    tmp_path: Path,
) -> None:
    key, root = tmp_path / "vault.key", tmp_path / "vault"
    generate_keyfile(key)
    with Vault.create(root, keyfile=key) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        s.put(s.add_customer(), "profile", {"name": "Li Wei"}, purpose="service")
    system_tmp, out = tmp_path / "system-tmp", tmp_path / "backups"
    system_tmp.mkdir()
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")} | {
        "TMPDIR": str(system_tmp),
        "SHREDVAULT_CRASH_AT": "files:before-publish:b.tar",
    }
    done = subprocess.run(
        [sys.executable, "-c", BACKUP, str(root), str(key), str(out / "b.tar")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    assert list(system_tmp.iterdir()) == []
    staged = [p for p in out.iterdir() if p.name.startswith(".b.tar.shredvault-staging-")]
    assert len(staged) == 1
    assert stat.S_IMODE(staged[0].stat().st_mode) == 0o700
    assert stat.S_IMODE((staged[0] / "keys.db").stat().st_mode) == 0o600
    assert not (out / "b.tar").exists()
