"""Changing the passphrase (DESIGN §3): only the KEK epochs and the signing seed are
re-wrapped, under a new root key, with the header's salt, KDF parameters and key-check
value swapped in the same keystore transaction. Afterwards the old secret fails at open
(UnlockError) and the new one works; a copy of keys.db made before keeps working with the
old secret only. Argon2id costs ~0.3 s per derivation: each test counts its derivations."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import KdfParams, derive_root_key, generate_keyfile, recommended_params
from shredvault.keys.root import key_check_for
from shredvault.keys.store import SCHEMA_VERSION
from shredvault.vault import AccessDeniedError, SchemaError, UnlockError, Vault
from shredvault.vault.store import checkpoints, log

OLD = b"correct horse battery staple"
NEW = b"marble kettle 0947 heron"
PURPOSE = "service"
FIELDS = {"name": "Amara Osei", "phone": "+44 20 7946 0000"}


@dataclass
class Setup:
    vault: Vault
    path: Path
    customer: str
    record: str

    def assert_readable(self, v: Vault) -> None:
        got = v.admin().get(self.customer, self.record, purpose=PURPOSE)
        assert dict(got.fields) == FIELDS


def make(path: Path, **unlock: Any) -> Setup:
    v = Vault.create(path, **unlock)
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    customer = s.add_customer()
    record = s.put(customer, "profile", FIELDS, purpose=PURPOSE)
    return Setup(v, path, customer, record)


@pytest.fixture
def passphrase_setup(tmp_path: Path) -> Iterator[Setup]:
    """A passphrase vault (one derivation) with one record."""
    setup = make(tmp_path / "vault", passphrase=OLD)
    yield setup
    setup.vault.close()


@pytest.fixture
def keyfile_setup(tmp_path: Path, keyfile: Path) -> Iterator[Setup]:
    """A keyfile vault (no derivation) with one record."""
    setup = make(tmp_path / "vault", keyfile=keyfile)
    yield setup
    setup.vault.close()


def keystore_meta(path: Path) -> dict[str, str]:
    """The keystore header as stored in keys.db (a short-lived read-only connection)."""
    uri = f"file:{path / 'keys.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return {str(k): str(v) for k, v in conn.execute("SELECT k, v FROM meta")}


def root_wrapped(path: Path) -> list[bytes]:
    """Every key wrapped by the root key: KEK epochs, signing seeds and the MAC seed."""
    uri = f"file:{path / 'keys.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        epochs = [bytes(r[0]) for r in conn.execute("SELECT wrapped FROM kek_epochs")]
        seeds = [bytes(r[0]) for r in conn.execute("SELECT wrapped FROM signing")]
        mac_seed = [bytes(r[0]) for r in conn.execute("SELECT wrapped FROM mac_seed")]
    assert len(mac_seed) == 1
    return epochs + seeds + mac_seed


def key_check_of(passphrase: bytes, meta: dict[str, str]) -> bytes:
    """The key-check value a passphrase yields under a stored header (one derivation)."""
    params = KdfParams.from_dict(json.loads(meta["kdf"]))
    root = derive_root_key(passphrase, bytes.fromhex(meta["salt"]), params)
    return key_check_for(root, meta["vault_id"], SCHEMA_VERSION)


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file, WAL contents included (backup API)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def files_holding(path: Path, needle: bytes) -> list[str]:
    return [p.name for p in sorted(path.iterdir()) if p.is_file() and needle in p.read_bytes()]


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


# -- passphrase to passphrase -----------------------------------------------------------


def test_after_the_change_the_old_passphrase_fails_and_the_new_one_opens(
    passphrase_setup: Setup,
) -> None:
    setup = passphrase_setup
    setup.vault.admin().change_passphrase(passphrase=NEW)  # derivation 2
    setup.assert_readable(setup.vault)  # the open vault keeps working
    setup.vault.close()

    with pytest.raises(UnlockError):
        Vault.open(setup.path, passphrase=OLD)  # derivation 3
    with Vault.open(setup.path, passphrase=NEW) as v:  # derivation 4
        setup.assert_readable(v)
        report = v.verify_log()
        assert report.ok, report.message


def test_after_the_change_the_key_check_matches_only_the_new_passphrase(
    passphrase_setup: Setup, tmp_path: Path
) -> None:
    setup = passphrase_setup
    copy = tmp_path / "copy-before"
    copy.mkdir()
    for name in ("keys.db", "data.db"):
        sqlite_copy(setup.path / name, copy / name)
    before = keystore_meta(setup.path)
    wrapped_before = root_wrapped(setup.path)

    setup.vault.admin().change_passphrase(passphrase=NEW)  # derivation 2

    after = keystore_meta(setup.path)
    assert after["salt"] != before["salt"] and after["key_check"] != before["key_check"]
    stored = bytes.fromhex(after["key_check"])
    assert key_check_of(NEW, after) == stored  # derivation 3
    assert key_check_of(OLD, after) != stored  # derivation 4
    # The keys wrapped under the old root left keys.db and its WAL.
    for wrapped in wrapped_before:
        assert files_holding(setup.path, wrapped) == []
    # Negative control: the copy made before the change still opens with the old one.
    assert keystore_meta(copy)["key_check"] == before["key_check"]
    with Vault.open(copy, passphrase=OLD) as old_copy:  # derivation 5
        setup.assert_readable(old_copy)


def test_a_passphrase_that_cannot_be_used_is_refused_and_changes_nothing(
    passphrase_setup: Setup,
) -> None:
    setup = passphrase_setup
    s = setup.vault.admin()
    before = keystore_meta(setup.path), root_wrapped(setup.path)
    with pytest.raises(SchemaError):
        s.change_passphrase(passphrase=b"")
    with pytest.raises(SchemaError):
        s.change_passphrase()  # neither a passphrase nor a keyfile
    assert (keystore_meta(setup.path), root_wrapped(setup.path)) == before
    assert "keys.change-passphrase" not in [e["action"] for e in log_entries(setup.vault)]
    setup.assert_readable(setup.vault)


# -- passphrase to keyfile and back -------------------------------------------------------


def test_switching_to_a_keyfile_and_back(passphrase_setup: Setup, tmp_path: Path) -> None:
    setup = passphrase_setup
    keyfile, stranger = tmp_path / "new.key", tmp_path / "other.key"
    generate_keyfile(keyfile)
    generate_keyfile(stranger)

    setup.vault.admin().change_passphrase(keyfile=str(keyfile))  # no derivation
    setup.vault.close()
    with pytest.raises(UnlockError):
        Vault.open(setup.path, passphrase=OLD)  # refused before any derivation
    with pytest.raises(UnlockError):
        Vault.open(setup.path, keyfile=stranger)
    with Vault.open(setup.path, keyfile=keyfile) as v:
        setup.assert_readable(v)
        status = v.admin().key_status()
        assert (status.key_source, status.kdf, status.rehash_due) == ("keyfile", None, False)
        v.admin().change_passphrase(passphrase=NEW)  # derivation 2

    with pytest.raises(UnlockError):
        Vault.open(setup.path, keyfile=keyfile)
    with Vault.open(setup.path, passphrase=NEW) as v:  # derivation 3
        setup.assert_readable(v)
        status = v.admin().key_status()
        assert status.key_source == "passphrase"
        assert status.kdf == recommended_params().to_dict()
        changes = [e for e in log_entries(v) if e["action"] == "keys.change-passphrase"]
        # Each names its source and a distinct event id (for crash recovery).
        assert [e["detail"]["key_source"] for e in changes] == ["keyfile", "passphrase"]
        assert [sorted(e["detail"]) for e in changes] == [["event", "key_source"]] * 2
        assert len({e["detail"]["event"] for e in changes}) == 2
        cps = set(v._ctx.data.read(lambda c: c.execute(select(checkpoints.c.seq)).scalars().all()))
        assert {e["seq"] for e in changes} <= cps
        report = v.verify_log()
        assert report.ok, report.message


def test_the_new_passphrase_reaches_no_file(keyfile_setup: Setup) -> None:
    setup = keyfile_setup
    setup.vault.admin().change_passphrase(passphrase=NEW)  # derivation 1
    setup.vault.close()
    assert files_holding(setup.path, NEW) == []
    assert keystore_meta(setup.path)["key_source"] == "passphrase"


def test_only_an_admin_may_change_the_passphrase(keyfile_setup: Setup) -> None:
    setup = keyfile_setup
    admin = setup.vault.admin()
    before = keystore_meta(setup.path)
    for role in ("operator", "auditor"):
        session = setup.vault.login(admin.add_principal(f"p-{role}", role=role))
        with pytest.raises(AccessDeniedError):
            session.change_passphrase(passphrase=NEW)
    assert keystore_meta(setup.path) == before
    denied = [
        e
        for e in log_entries(setup.vault)
        if e["action"] == "keys.change-passphrase" and e["outcome"] == "denied"
    ]
    assert [e["actor"] for e in denied] == ["p-operator", "p-auditor"]


# -- another process holds the vault open -----------------------------------------------


def test_a_process_unlocked_before_a_passphrase_change_cannot_wrap_under_the_old_root(
    keyfile_setup: Setup, tmp_path: Path, keyfile: Path
) -> None:
    """Process B unlocked with the old keyfile; A switches to a new one. Before the check,
    B's KEK rotation sealed a new epoch under the old root: afterwards neither secret
    opened the vault. Now B is refused (UnlockError) and nothing changes."""
    setup = keyfile_setup
    other = Vault.open(setup.path, keyfile=keyfile)  # "process B", opened before
    try:
        new_keyfile = tmp_path / "new.key"
        generate_keyfile(new_keyfile)
        setup.vault.admin().change_passphrase(keyfile=str(new_keyfile))
        epochs_before = root_wrapped(setup.path)
        with pytest.raises(UnlockError, match="changed by another process"):
            other.admin().rotate_kek()
        with pytest.raises(UnlockError, match="changed by another process"):
            other.admin().change_passphrase(passphrase=NEW)
        assert root_wrapped(setup.path) == epochs_before
    finally:
        other.close()
    with Vault.open(setup.path, keyfile=new_keyfile) as v:
        setup.assert_readable(v)
        v.admin().rotate_kek()  # the new secret can still rotate
        setup.assert_readable(v)
    with pytest.raises(UnlockError):
        Vault.open(setup.path, keyfile=keyfile)
