"""A key change that committed in the keystore but could not be logged yet stands, says
so (LogPendingError, never "nothing was changed"), and is logged at the next open.

Found by an audit: a data-store writer holding the lock right after the keystore
committed a new keyfile made `keys change-passphrase` report a busy vault, and the CLI
then deleted the new keyfile: neither secret opened the vault any more."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from shredvault import UnlockError, Vault
from shredvault.vault import generate_keyfile

from processes import paused_python

CHANGE = """
import sys
from pathlib import Path
from shredvault import LogPendingError, Vault
from shredvault.vault import generate_keyfile
root, old, new = sys.argv[1:4]
generate_keyfile(new)
with Vault.open(root, keyfile=old, busy_timeout=0.2) as v:
    try:
        v.admin().change_passphrase(keyfile=new)
    except LogPendingError as error:
        print("PENDING", error)
    else:
        print("LOGGED")
"""


def _entries(root: Path, action: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(root / "data.db")
    try:
        rows = conn.execute("SELECT body FROM sv_log WHERE action = ?", (action,)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


def test_a_new_keyfile_committed_but_not_logged_still_opens_and_is_logged_at_next_open(
    tmp_path: Path,
) -> None:
    root, old, new = tmp_path / "vault", tmp_path / "old.key", tmp_path / "new.key"
    generate_keyfile(old)
    Vault.create(root, keyfile=old).close()
    with paused_python(
        CHANGE,
        str(root),
        str(old),
        str(new),
        pause_at="change-passphrase:after-keys",
        pause_dir=tmp_path / "pause",
    ) as child:
        blocker = sqlite3.connect(root / "data.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # a long writer (e.g. a backup) holds the lock
        try:
            done = child.release()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PENDING"), done.stdout
    assert "WAS changed" in done.stdout and "next open" in done.stdout
    assert new.is_file()  # the only secret that opens the vault now
    assert _entries(root, "keys.change-passphrase") == []
    with pytest.raises(UnlockError):
        Vault.open(root, keyfile=old)
    with Vault.open(root, keyfile=new) as reopened:
        assert reopened.verify_log().ok
    logged = _entries(root, "keys.change-passphrase")
    assert len(logged) == 1 and logged[0]["detail"]["recovered"] is True  # type: ignore[index]
