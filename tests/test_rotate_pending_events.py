"""Key events whose keystore change commits before their log entry: a process killed in
between (``SHREDVAULT_CRASH_AT``) leaves the change committed and its entry owed; the
next open writes that entry once (marked ``recovered``), never twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import KeyStore, generate_keyfile
from shredvault.vault import UnlockError, Vault
from shredvault.vault.store import log

from processes import CRASH_EXIT_CODE, run_python

_CHANGE = r"""
import sys
from shredvault.vault import Vault
path, old, new = sys.argv[1:4]
with Vault.open(path, keyfile=old) as v:
    v.admin().change_passphrase(keyfile=new)
"""

_RETIRE = r"""
import sys
from shredvault.vault import Vault
path, keyfile = sys.argv[1:3]
with Vault.open(path, keyfile=keyfile) as v:
    v.admin().retire_epoch(1)
"""


def entries(v: Vault, action: str) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [e for e in (json.loads(bytes(r.body)) for r in rows) if e["action"] == action]


def pending(path: Path) -> str | None:
    store = KeyStore.open(path / "keys.db")
    try:
        return store.get_meta("pending_event")
    finally:
        store.close()


@pytest.mark.parametrize("crash_at", [None, "change-passphrase:after-keys"])
def test_a_passphrase_change_is_logged_exactly_once_even_if_killed_before_logging(
    tmp_path: Path, keyfile: Path, crash_at: str | None
) -> None:
    path = tmp_path / "v"
    Vault.create(path, keyfile=keyfile).close()
    new = tmp_path / "new.key"
    generate_keyfile(new)
    done = run_python(_CHANGE, str(path), str(keyfile), str(new), crash_at=crash_at)
    assert done.returncode == (CRASH_EXIT_CODE if crash_at else 0), done.stderr
    assert (pending(path) is not None) == (crash_at is not None)
    with pytest.raises(UnlockError):
        Vault.open(path, keyfile=keyfile)  # the change itself committed
    for _ in range(2):  # the second open finds nothing owed
        with Vault.open(path, keyfile=new) as v:
            (entry,) = entries(v, "keys.change-passphrase")
            assert entry["detail"]["key_source"] == "keyfile"
            assert entry["detail"].get("recovered", False) == (crash_at is not None)
            assert v.verify_log().ok
    assert pending(path) is None


@pytest.mark.parametrize("crash_at", [None, "retire-epoch:after-keys"])
def test_a_retired_epoch_is_logged_exactly_once_even_if_killed_before_logging(
    tmp_path: Path, keyfile: Path, crash_at: str | None
) -> None:
    path = tmp_path / "v"
    with Vault.create(path, keyfile=keyfile) as v:
        v.admin().rotate_kek()  # epoch 2 active; epoch 1 wraps nothing now
    done = run_python(_RETIRE, str(path), str(keyfile), crash_at=crash_at)
    assert done.returncode == (CRASH_EXIT_CODE if crash_at else 0), done.stderr
    for _ in range(2):
        with Vault.open(path, keyfile=keyfile) as v:
            (entry,) = entries(v, "keys.retire-epoch")
            assert entry["detail"]["epoch"] == 1
            assert entry["detail"].get("recovered", False) == (crash_at is not None)
            assert 1 not in v._ctx.keys.store.epochs()
            assert v.verify_log().ok
    assert pending(path) is None
