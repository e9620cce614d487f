"""Upgrading a vault made before key separation (keystore and data store schema 1, made
here with the old code's formulas: tests/legacy.py) at its first open: the keystore
re-wrapped under the root's wrap subkey with a new key-check value in one transaction,
every principal's SHA-256 turned into its MAC in one data-store transaction, one
``vault.migrate`` entry. Tokens made before still log in; a crash anywhere leaves each
store in exactly one scheme and the next open finishes; nothing of the old scheme stays
in keys.db; a row forged in the data store is never blessed by the upgrade.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shredvault.keys import (
    DecryptionError,
    Envelope,
    KeyRing,
    KeyStore,
    KeystoreError,
    SecretBytes,
    kek_aad,
    load_keyfile,
    signing_seed_aad,
)
from shredvault.keys.root import key_check_for
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey
from shredvault.vault import AccessDeniedError, TamperError, UnlockError, Vault

from legacy import (
    LegacyBlobs,
    data_engine,
    keystore_meta,
    legacy_key_check,
    make_legacy,
    passphrase_root,
    sha256_hex,
)
from processes import CRASH_EXIT_CODE, paused_python, run_python
from residue import scan_keystore
from verifiers import verifier_by_hand

PURPOSE = "service"
FIELDS = {"name": "Amara Osei"}
PASSPHRASE = b"correct horse battery staple"
CHOSEN = "svp_a11ce0000000_" + "M" * 43
OPEN_IN_CHILD = (
    "import sys\n"
    "from shredvault import Vault\n"
    "Vault.open(sys.argv[1], keyfile=sys.argv[2], data_url=sys.argv[3] or None).close()\n"
)


@dataclass
class Legacy:
    """A schema-1 vault: where it is, how to unlock it, and what it held."""

    path: Path
    data_url: str | None
    unlock: dict[str, Any]
    root: SecretBytes
    tokens: dict[str, str]
    customer: str
    record: str
    blobs: LegacyBlobs

    def open(self, **unlock: Any) -> Vault:
        return Vault.open(self.path, data_url=self.data_url, **(unlock or self.unlock))


def make_legacy_vault(path: Path, data_url: str | None, **unlock: Any) -> Legacy:
    """A vault with a record and two principals, rewritten into schema 1."""
    with Vault.create(path, data_url=data_url, **unlock) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        admin = v.admin()
        customer = admin.add_customer()
        record = admin.put(customer, "profile", FIELDS, purpose=PURPOSE)
        tokens = {
            "olga": admin.add_principal("olga", role="operator"),
            "audrey": admin.add_principal("audrey", role="auditor"),
        }
    if "keyfile" in unlock:
        root = load_keyfile(unlock["keyfile"])
    else:
        root = passphrase_root(path / "keys.db", unlock["passphrase"])
    blobs = make_legacy(path, root, tokens, data_url)
    return Legacy(path, data_url, unlock, root, tokens, customer, record, blobs)


@pytest.fixture
def legacy(tmp_path: Path, keyfile: Path, backend: str | None) -> Legacy:
    """A schema-1 keyfile vault on the parametrized data store."""
    return make_legacy_vault(tmp_path / "vault", backend, keyfile=keyfile)


@pytest.fixture
def legacy_passphrase(tmp_path: Path) -> Legacy:
    """A schema-1 passphrase vault on SQLite (two Argon2id derivations to make)."""
    return make_legacy_vault(tmp_path / "vault", None, passphrase=PASSPHRASE)


# -- reading the stores as an outsider would ----------------------------------------------


def keystore_scheme(keys_db: Path, root: SecretBytes) -> int:
    """The one scheme that opens the keystore: its schema version, its key-check value,
    and every KEK epoch and signing seed agree on it, and the other scheme opens none."""
    meta = keystore_meta(keys_db)
    vault_id = meta["vault_id"]
    with closing(sqlite3.connect(f"file:{keys_db}?mode=ro", uri=True)) as conn:
        blobs = [
            (bytes(w), kek_aad(vault_id, int(e)))
            for e, w in conn.execute("SELECT epoch, wrapped FROM kek_epochs")
        ] + [
            (bytes(w), signing_seed_aad(vault_id, int(g)))
            for g, w in conn.execute("SELECT generation, wrapped FROM signing")
        ]
    schemes = {
        1: (Envelope(root, 0), legacy_key_check(root)),
        2: (
            Envelope(derive_subkey(root, ROOT_WRAP, vault_id), 0),
            key_check_for(root, vault_id, 2),
        ),
    }
    working = []
    for scheme, (wrap, key_check) in schemes.items():
        opened = [opens(wrap, blob, context) for blob, context in blobs]
        assert all(opened) or not any(opened), f"blobs of both schemes ({scheme})"
        if all(opened):
            assert bytes.fromhex(meta["key_check"]) == key_check
            working.append(scheme)
        else:
            assert bytes.fromhex(meta["key_check"]) != key_check
    assert len(working) == 1, working
    assert int(meta["schema_version"]) == working[0]
    return working[0]


def opens(wrap: Envelope, blob: bytes, context: bytes) -> bool:
    try:
        wrap.open(blob, context)
    except DecryptionError:
        return False
    return True


def data_schema(legacy: Legacy) -> int:
    return int(_data_scalar(legacy, "SELECT v FROM sv_meta WHERE k = 'schema_version'"))


def token_hashes(legacy: Legacy) -> dict[str, str]:
    engine = data_engine(legacy.path, legacy.data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, token_hash FROM sv_principals"))
            return {str(n): str(h) for n, h in rows}
    finally:
        engine.dispose()


def _data_scalar(legacy: Legacy, sql: str) -> Any:
    engine = data_engine(legacy.path, legacy.data_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def migrate_entries(legacy: Legacy) -> list[bytes]:
    engine = data_engine(legacy.path, legacy.data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT body FROM sv_log WHERE action = 'vault.migrate' ORDER BY seq")
            )
            return [bytes(body) for (body,) in rows]
    finally:
        engine.dispose()


def forge_admin_row(legacy: Legacy) -> None:
    """Issue 16's finding: an admin row holding the SHA-256 of a chosen token."""
    engine = data_engine(legacy.path, legacy.data_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sv_principals (name, lookup, role, token_hash, expires, revoked,"
                    " created) VALUES ('mallory', 'a11ce0000000', 'admin', :h, NULL, :r,"
                    " '2026-01-01T00:00:00Z')"
                ),
                {"h": sha256_hex(CHOSEN), "r": False},
            )
    finally:
        engine.dispose()


def assert_served(v: Vault, legacy: Legacy) -> None:
    got = v.login(legacy.tokens["olga"]).get(legacy.customer, legacy.record, purpose=PURPOSE)
    assert dict(got.fields) == FIELDS
    assert [c.id for c in v.login(legacy.tokens["audrey"]).list_customers()] == [legacy.customer]


def old_scheme_needles(legacy: Legacy) -> dict[str, bytes]:
    needles = dict(legacy.blobs.wrapped)
    needles["old key-check value"] = legacy.blobs.key_check.hex().encode()
    return needles


# -- the upgrade ------------------------------------------------------------------------------


def test_a_legacy_vault_is_in_the_old_scheme_before_its_first_open(legacy: Legacy) -> None:
    """The control for every test here: the helper made what the old code made."""
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 1
    assert data_schema(legacy) == 1
    assert token_hashes(legacy) == {n: sha256_hex(t) for n, t in legacy.tokens.items()}
    assert set(scan_keystore(legacy.path, old_scheme_needles(legacy))["keys.db"]) == set(
        old_scheme_needles(legacy)
    )


def test_tokens_made_before_the_upgrade_log_in_after_it(legacy: Legacy) -> None:
    with legacy.open() as v:
        assert_served(v, legacy)
    with legacy.open() as v:
        assert_served(v, legacy)


def test_after_the_upgrade_both_stores_are_in_the_new_scheme(legacy: Legacy) -> None:
    legacy.open().close()
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 2
    meta = keystore_meta(legacy.path / "keys.db")
    assert "upgrade_pending" not in meta and "scrub_due" not in meta
    assert data_schema(legacy) == 3  # and then authenticated rows (test_rowauth_migrate.py)
    assert token_hashes(legacy) == {
        n: verifier_by_hand(legacy.path / "keys.db", legacy.root, t)
        for n, t in legacy.tokens.items()
    }


def test_the_upgrade_is_logged_once_with_counts_and_no_token_material(legacy: Legacy) -> None:
    legacy.open().close()
    verifiers = token_hashes(legacy)
    legacy.open().close()
    (body,) = migrate_entries(legacy)
    entry = json.loads(body)
    assert (entry["actor"], entry["role"], entry["outcome"]) == ("admin", "admin", "ok")
    assert entry["detail"] == {
        "event": entry["detail"]["event"],
        "keystore": {"from": 1, "to": 2, "kek_epochs": 1, "signing_seeds": 1},
        "data": {"from": 1, "to": 2},
        "principals": {"converted": 2, "not_converted": 0},
    }
    for token in legacy.tokens.values():
        for material in (token, token.split("_", 2)[2], sha256_hex(token)):
            assert material.encode() not in body
    for verifier in verifiers.values():
        assert verifier.encode() not in body


def test_the_upgraded_keystore_holds_no_byte_of_the_old_scheme(
    tmp_path: Path, keyfile: Path
) -> None:
    legacy = make_legacy_vault(tmp_path / "vault", None, keyfile=keyfile)
    needles = old_scheme_needles(legacy)
    with legacy.open() as v:
        assert scan_keystore(legacy.path, needles) == {}  # while open, WAL included
        v.admin().rotate_kek()  # later writes do not bring them back
    assert scan_keystore(legacy.path, needles) == {}
    assert scan_keystore(legacy.path, legacy.blobs.raw) == {}  # nor do unwrapped keys


def test_a_vault_made_today_starts_in_the_new_scheme(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=backend) as v:
        token = v.admin().add_principal("olga", role="operator")
    with Vault.open(tmp_path / "v", keyfile=keyfile, data_url=backend) as v:
        v.login(token)
    made = Legacy(
        tmp_path / "v", backend, {}, load_keyfile(keyfile), {}, "", "", LegacyBlobs({}, {}, b"")
    )
    assert keystore_scheme(made.path / "keys.db", made.root) == 2
    assert data_schema(made) == 3
    assert migrate_entries(made) == []


# -- what must keep working ---------------------------------------------------------------


def test_a_wrong_passphrase_on_a_legacy_vault_is_refused_and_changes_nothing(
    legacy_passphrase: Legacy,
) -> None:
    keys_db = legacy_passphrase.path / "keys.db"
    before = keys_db.read_bytes()
    with pytest.raises(UnlockError):
        legacy_passphrase.open(passphrase=b"not the passphrase")
    assert keys_db.read_bytes() == before
    assert keystore_scheme(keys_db, legacy_passphrase.root) == 1


def test_a_weakened_header_on_a_legacy_vault_is_refused_and_changes_nothing(
    legacy_passphrase: Legacy,
) -> None:
    keys_db = legacy_passphrase.path / "keys.db"
    with closing(sqlite3.connect(keys_db)) as conn:
        conn.execute("""UPDATE meta SET v = '{"m": 8, "p": 1, "t": 1}' WHERE k = 'kdf'""")
        conn.commit()
    before = keystore_meta(keys_db)
    with pytest.raises(UnlockError, match="below the floor"):
        legacy_passphrase.open()
    assert keystore_meta(keys_db) == before


def test_a_passphrase_change_after_the_upgrade_keeps_every_token(
    legacy_passphrase: Legacy,
) -> None:
    new = b"marble kettle 0947 heron"
    with legacy_passphrase.open() as v:
        v.admin().change_passphrase(passphrase=new)
    with pytest.raises(UnlockError):
        legacy_passphrase.open()
    with legacy_passphrase.open(passphrase=new) as v:
        assert_served(v, legacy_passphrase)


def test_kek_rotation_after_the_upgrade_wraps_under_the_wrap_subkey(legacy: Legacy) -> None:
    with legacy.open() as v:
        v.admin().rotate_kek(retire=True)
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 2
    with legacy.open() as v:
        assert_served(v, legacy)


# -- what an insider with the data store cannot do -------------------------------------------


def test_a_data_store_put_back_to_schema_1_is_not_converted_again(legacy: Legacy) -> None:
    legacy.open().close()
    engine = data_engine(legacy.path, legacy.data_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE sv_meta SET v = '1' WHERE k = 'schema_version'"))
    finally:
        engine.dispose()
    forge_admin_row(legacy)
    # The keystore knows the rows were authenticated: a data store that says an older
    # schema is refused outright (vault/rowmigrate.py), so nothing is converted again.
    with pytest.raises(TamperError, match="says schema 1"):
        legacy.open()
    assert len(migrate_entries(legacy)) == 1


def test_a_row_forged_after_the_keystore_upgraded_is_never_converted(legacy: Legacy) -> None:
    crashed = run_python(
        OPEN_IN_CHILD,
        str(legacy.path),
        str(legacy.unlock["keyfile"]),
        legacy.data_url or "",
        crash_at="migrate:after-keystore",
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    forge_admin_row(legacy)  # in the window between the two stores' transactions
    with legacy.open() as v:
        with pytest.raises(AccessDeniedError, match="unknown_token"):
            v.login(CHOSEN)
        assert_served(v, legacy)
    (body,) = migrate_entries(legacy)
    assert json.loads(body)["detail"]["principals"] == {"converted": 2, "not_converted": 1}
    assert token_hashes(legacy)["mallory"] == sha256_hex(CHOSEN)  # left as it was: dead


# -- crashes ------------------------------------------------------------------------------------

#: crash point -> (keystore scheme, data store schema) the crash leaves
CRASH_POINTS = {
    "migrate:keystore-uncommitted": (1, 1),
    "migrate:before-scrub": (2, 1),
    "migrate:after-keystore": (2, 1),
    "migrate:after-data": (2, 2),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_crash_during_the_upgrade_leaves_one_scheme_and_the_next_open_finishes(
    legacy: Legacy, point: str
) -> None:
    crashed = run_python(
        OPEN_IN_CHILD,
        str(legacy.path),
        str(legacy.unlock["keyfile"]),
        legacy.data_url or "",
        crash_at=point,
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    keys_scheme, data_version = CRASH_POINTS[point]
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == keys_scheme
    assert data_schema(legacy) == data_version
    if data_version == 1:
        assert token_hashes(legacy) == {n: sha256_hex(t) for n, t in legacy.tokens.items()}

    with legacy.open() as v:
        assert_served(v, legacy)
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 2
    assert data_schema(legacy) == 3
    assert len(migrate_entries(legacy)) == 1
    assert "upgrade_pending" not in keystore_meta(legacy.path / "keys.db")
    assert scan_keystore(legacy.path, old_scheme_needles(legacy)) == {}


# -- two openers at once ----------------------------------------------------------------------


def test_a_key_ring_that_lost_the_race_uses_what_the_winner_stored(
    tmp_path: Path, keyfile: Path
) -> None:
    legacy = make_legacy_vault(tmp_path / "vault", None, keyfile=keyfile)
    key = load_keyfile(keyfile)
    first = KeyRing.unlock(KeyStore.open(legacy.path / "keys.db"), keyfile_key=key)
    second = KeyRing.unlock(KeyStore.open(legacy.path / "keys.db"), keyfile_key=key)
    try:
        assert first.upgrade_due and second.upgrade_due
        assert first.upgrade_keystore("first", "2026-01-01T00:00:00Z") is True
        assert second.upgrade_keystore("second", "2026-01-01T00:00:00Z") is False
        assert not second.upgrade_due
        pending = second.upgrade_pending()
        assert pending is not None and pending.note == "first"
        assert second.token_mac(CHOSEN) == first.token_mac(CHOSEN)
        second.change_root(keyfile_key=key)  # a schema-2 ring: allowed now
    finally:
        first.close()
        second.close()


def test_a_key_ring_of_a_legacy_keystore_refuses_a_change_of_secret(
    tmp_path: Path, keyfile: Path
) -> None:
    legacy = make_legacy_vault(tmp_path / "vault", None, keyfile=keyfile)
    ring = KeyRing.unlock(KeyStore.open(legacy.path / "keys.db"), keyfile_key=load_keyfile(keyfile))
    try:
        with pytest.raises(KeystoreError, match="predates key separation"):
            ring.change_root(keyfile_key=load_keyfile(keyfile))
    finally:
        ring.close()
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 1


def test_two_processes_opening_a_legacy_vault_at_once_upgrade_it_once(
    tmp_path: Path, keyfile: Path
) -> None:
    legacy = make_legacy_vault(tmp_path / "vault", None, keyfile=keyfile)
    opened: list[Vault] = []
    failed: list[BaseException] = []

    def open_here() -> None:
        try:
            opened.append(legacy.open())
        except BaseException as error:  # reported by the main thread
            failed.append(error)

    with paused_python(
        OPEN_IN_CHILD,
        str(legacy.path),
        str(keyfile),
        "",
        pause_at="migrate:keystore-uncommitted",
        pause_dir=tmp_path / "pause",
    ) as child:
        here = threading.Thread(target=open_here)
        here.start()  # unlocks the schema-1 keystore while the child holds its upgrade
        time.sleep(0.5)
        done = child.release()
        here.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert failed == [] and len(opened) == 1
    with opened[0] as v:
        assert_served(v, legacy)
    assert len(migrate_entries(legacy)) == 1
    assert keystore_scheme(legacy.path / "keys.db", legacy.root) == 2
