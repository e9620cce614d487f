"""Creating and opening vaults (DESIGN §2, §3, §8): wrong keys and weakened headers are
refused with UnlockError, mismatched/missing/newer stores with StorageError, and a
refused open or create changes nothing on disk. Plaintext never reaches the files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import generate_keyfile
from shredvault.vault import SchemaError, StorageError, UnlockError, Vault, VaultError

PASSPHRASE = b"correct horse battery staple"


def snapshot(root: Path) -> dict[str, str]:
    """Every file in a directory and the SHA-256 of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


def stored(root: Path) -> dict[str, str]:
    """The two stores' main files (sidecar -wal/-shm files come and go with readers)."""
    return {k: v for k, v in snapshot(root).items() if k in ("keys.db", "data.db")}


def make_closed_vault(path: Path, keyfile: Path | None = None) -> Path:
    kwargs: dict[str, object] = {"keyfile": keyfile} if keyfile else {"passphrase": PASSPHRASE}
    with Vault.create(path, **kwargs) as v:  # type: ignore[arg-type]
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        s.put(s.add_customer(), "profile", {"name": "Someone"}, purpose="service")
    return path


def sqlite_exec(db: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def passphrase_vault_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One passphrase vault (Argon2id is slow), copied by each test that needs one."""
    return make_closed_vault(tmp_path_factory.mktemp("template") / "v")


@pytest.fixture
def passphrase_vault(passphrase_vault_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pv"
    shutil.copytree(passphrase_vault_template, target)
    return target


# -- unlocking --------------------------------------------------------------------------


def test_the_right_passphrase_opens_the_vault(passphrase_vault: Path) -> None:
    with Vault.open(passphrase_vault, passphrase=PASSPHRASE) as v:
        assert v.verify_log().ok


def test_wrong_passphrase_raises_unlock_error_and_changes_no_byte(passphrase_vault: Path) -> None:
    before = snapshot(passphrase_vault)
    with pytest.raises(UnlockError) as caught:
        Vault.open(passphrase_vault, passphrase=b"correct horse battery stapler")
    assert "stapl" not in str(caught.value)
    assert snapshot(passphrase_vault) == before


@pytest.mark.parametrize(
    "weaken",
    [
        pytest.param({"t": 1}, id="time-cost-1"),
        pytest.param({"m": 8 * 1024}, id="memory-8MiB"),
        pytest.param({"p": 0}, id="no-lanes"),
    ],
)
def test_a_weakened_kdf_header_raises_unlock_error_even_with_the_right_passphrase(
    passphrase_vault: Path, weaken: dict[str, int]
) -> None:
    keys_db = passphrase_vault / "keys.db"
    conn = sqlite3.connect(keys_db)
    kdf = json.loads(conn.execute("SELECT v FROM meta WHERE k = 'kdf'").fetchone()[0])
    conn.close()
    assert kdf["t"] >= 3 and kdf["m"] >= 64 * 1024
    sqlite_exec(keys_db, "UPDATE meta SET v = ? WHERE k = 'kdf'", (json.dumps({**kdf, **weaken}),))
    before = stored(passphrase_vault)
    with pytest.raises(UnlockError, match="floor"):
        Vault.open(passphrase_vault, passphrase=PASSPHRASE)
    assert stored(passphrase_vault) == before


@pytest.mark.parametrize(
    "inflate",
    [
        {"m": 64 * 1024 * 1024},  # 64 GiB
        {"t": 10**9},
        {"p": 2**24},
        {"m": "65536"},  # a string of digits is not a parameter
        {"t": True},
        {"m": "9" * 5000},  # written below as a 5,000-digit number
    ],
    ids=["memory", "passes", "lanes", "string", "bool", "digits"],
)
def test_an_inflated_kdf_header_is_refused_before_any_derivation(
    passphrase_vault: Path, inflate: dict[str, object]
) -> None:
    """Issue 18 item 6: an edited header must not make an unlock exhaust memory or CPU
    (a ceiling as well as the floor); refused as a bad header, nothing changed."""
    keys_db = passphrase_vault / "keys.db"
    conn = sqlite3.connect(keys_db)
    kdf = json.loads(conn.execute("SELECT v FROM meta WHERE k = 'kdf'").fetchone()[0])
    conn.close()
    header = json.dumps({**kdf, **inflate})
    if inflate.get("m") == "9" * 5000:
        header = header.replace('"' + "9" * 5000 + '"', "9" * 5000)
    sqlite_exec(keys_db, "UPDATE meta SET v = ? WHERE k = 'kdf'", (header,))
    before = stored(passphrase_vault)
    with pytest.raises((UnlockError, StorageError)):
        Vault.open(passphrase_vault, passphrase=PASSPHRASE)
    assert stored(passphrase_vault) == before


def test_a_passphrase_vault_refuses_a_keyfile(passphrase_vault: Path, keyfile: Path) -> None:
    with pytest.raises(UnlockError):
        Vault.open(passphrase_vault, keyfile=keyfile)


def test_a_wrong_keyfile_raises_unlock_error(tmp_path: Path, keyfile: Path) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    other = tmp_path / "other.key"
    generate_keyfile(other)
    before = stored(root)
    with pytest.raises(UnlockError):
        Vault.open(root, keyfile=other)
    with pytest.raises(UnlockError):
        Vault.open(root)  # neither passphrase nor keyfile
    with pytest.raises(UnlockError):
        Vault.open(root, passphrase=PASSPHRASE)
    assert stored(root) == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_keyfile_readable_by_others_raises_unlock_error(
    tmp_path: Path, keyfile: Path, mode: int
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    os.chmod(keyfile, mode)
    before = stored(root)
    with pytest.raises(UnlockError, match="chmod 600"):
        Vault.open(root, keyfile=keyfile)
    assert stored(root) == before
    os.chmod(keyfile, 0o600)
    Vault.open(root, keyfile=keyfile).close()


def test_create_refuses_a_keyfile_readable_by_others_and_leaves_nothing(
    tmp_path: Path, keyfile: Path
) -> None:
    os.chmod(keyfile, 0o644)
    with pytest.raises(UnlockError):
        Vault.create(tmp_path / "v", keyfile=keyfile)
    assert not (tmp_path / "v").exists()


def test_a_keyfile_of_the_wrong_size_raises_unlock_error(tmp_path: Path, keyfile: Path) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    short = tmp_path / "short.key"
    fd = os.open(short, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\x00" * 31)
    os.close(fd)
    with pytest.raises(UnlockError):
        Vault.open(root, keyfile=short)
    with pytest.raises(UnlockError):
        Vault.open(root, keyfile=tmp_path / "missing.key")


# -- mismatched, missing and newer stores -----------------------------------------------


def test_a_data_store_of_another_vault_raises_storage_error_and_changes_nothing(
    tmp_path: Path, keyfile: Path
) -> None:
    mine = make_closed_vault(tmp_path / "mine", keyfile)
    theirs = make_closed_vault(tmp_path / "theirs", keyfile)
    shutil.copy(theirs / "data.db", mine / "data.db")
    before = stored(mine)
    with pytest.raises(StorageError, match="another vault"):
        Vault.open(mine, keyfile=keyfile)
    assert stored(mine) == before


def test_a_missing_keystore_raises_storage_error(tmp_path: Path, keyfile: Path) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    (root / "keys.db").unlink()
    before = snapshot(root)
    with pytest.raises(StorageError):
        Vault.open(root, keyfile=keyfile)
    assert snapshot(root) == before


def test_a_missing_vault_directory_raises_storage_error(tmp_path: Path, keyfile: Path) -> None:
    with pytest.raises(StorageError):
        Vault.open(tmp_path / "nowhere", keyfile=keyfile)
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_data_store_raises_storage_error(tmp_path: Path, keyfile: Path) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    (root / "data.db").unlink()
    with pytest.raises(StorageError):
        Vault.open(root, keyfile=keyfile)


def test_opening_with_a_missing_data_store_does_not_create_one(
    tmp_path: Path, keyfile: Path
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    (root / "data.db").unlink()
    before = snapshot(root)
    with pytest.raises(StorageError):
        Vault.open(root, keyfile=keyfile)
    assert snapshot(root) == before


def test_a_data_store_with_a_newer_schema_version_raises_storage_error(
    tmp_path: Path, keyfile: Path
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    sqlite_exec(root / "data.db", "UPDATE sv_meta SET v = '999' WHERE k = 'schema_version'")
    before = stored(root)
    with pytest.raises(StorageError, match="newer"):
        Vault.open(root, keyfile=keyfile)
    assert stored(root) == before


def test_a_keystore_with_a_newer_schema_version_raises_storage_error(
    tmp_path: Path, keyfile: Path
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    sqlite_exec(root / "keys.db", "UPDATE meta SET v = '999' WHERE k = 'schema_version'")
    before = stored(root)
    with pytest.raises(StorageError, match="newer"):
        Vault.open(root, keyfile=keyfile)
    assert stored(root) == before


def test_a_data_store_that_is_not_a_database_raises_storage_error(
    tmp_path: Path, keyfile: Path
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    (root / "data.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        Vault.open(root, keyfile=keyfile)


# -- creating ---------------------------------------------------------------------------


def test_create_into_a_non_empty_directory_raises_storage_error_and_leaves_it_alone(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    before = snapshot(root)
    with pytest.raises(StorageError, match="not an empty directory"):
        Vault.create(root, keyfile=keyfile)
    assert snapshot(root) == before


def test_create_over_an_existing_vault_refuses_and_the_vault_still_opens(
    tmp_path: Path, keyfile: Path
) -> None:
    root = make_closed_vault(tmp_path / "v", keyfile)
    before = snapshot(root)
    with pytest.raises(StorageError):
        Vault.create(root, keyfile=keyfile)
    assert snapshot(root) == before
    Vault.open(root, keyfile=keyfile).close()


def test_create_on_a_file_path_raises_storage_error(tmp_path: Path, keyfile: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StorageError):
        Vault.create(path, keyfile=keyfile)
    assert path.read_text() == "x"


def test_create_into_an_existing_empty_directory_works(tmp_path: Path, keyfile: Path) -> None:
    (tmp_path / "empty").mkdir()
    with Vault.create(tmp_path / "empty", keyfile=keyfile) as v:
        assert v.vault_id.startswith("vlt_")
    assert {"keys.db", "data.db"} <= set(snapshot(tmp_path / "empty"))


def test_create_with_both_or_neither_key_source_fails_and_leaves_nothing(
    tmp_path: Path, keyfile: Path
) -> None:
    with pytest.raises(UnlockError):
        Vault.create(tmp_path / "both", keyfile=keyfile, passphrase=PASSPHRASE)
    with pytest.raises(UnlockError):
        Vault.create(tmp_path / "neither")
    assert not (tmp_path / "both").exists() and not (tmp_path / "neither").exists()


def test_create_on_a_data_url_holding_another_vault_refuses_and_keeps_that_vault(
    tmp_path: Path, keyfile: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Vault.create(tmp_path / "first", keyfile=keyfile, data_url=url) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
    with pytest.raises(StorageError, match="already holds a vault"):
        Vault.create(tmp_path / "second", keyfile=keyfile, data_url=url)
    assert not (tmp_path / "second").exists()
    with Vault.open(tmp_path / "first", keyfile=keyfile, data_url=url) as v:
        assert "profile" in v.kinds()


@pytest.mark.postgres
def test_create_on_a_postgres_schema_holding_another_vault_keeps_that_vault(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "first", keyfile=keyfile, data_url=pg_url) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
    with pytest.raises(StorageError, match="already holds a vault"):
        Vault.create(tmp_path / "second", keyfile=keyfile, data_url=pg_url)
    with Vault.open(tmp_path / "first", keyfile=keyfile, data_url=pg_url) as v:
        assert "profile" in v.kinds()


# -- external data stores ---------------------------------------------------------------


def test_an_external_data_vault_opened_without_data_url_names_the_option(
    tmp_path: Path, keyfile: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=url):
        pass
    assert not (tmp_path / "v" / "data.db").exists()
    before = snapshot(tmp_path / "v")
    with pytest.raises(StorageError, match="data_url"):
        Vault.open(tmp_path / "v", keyfile=keyfile)
    assert snapshot(tmp_path / "v") == before
    with Vault.open(tmp_path / "v", keyfile=keyfile, data_url=url) as v:
        assert v.verify_log().ok


@pytest.mark.postgres
def test_a_postgres_vault_that_remembers_no_data_url_names_the_option(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=pg_url):
        pass
    # a vault from before data URLs were remembered (issue 21 item 5)
    conn = sqlite3.connect(tmp_path / "v" / "keys.db")
    with conn:
        conn.execute("DELETE FROM meta WHERE k = 'data_url'")
    conn.close()
    with pytest.raises(StorageError, match="data_url"):
        Vault.open(tmp_path / "v", keyfile=keyfile)
    with Vault.open(tmp_path / "v", keyfile=keyfile, data_url=pg_url) as v:
        assert v.verify_log().ok
    with Vault.open(tmp_path / "v", keyfile=keyfile) as v:  # remembered by that open
        assert v.verify_log().ok


@pytest.mark.postgres
def test_a_postgres_data_store_of_another_vault_raises_storage_error(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "pg", keyfile=keyfile, data_url=pg_url):
        pass
    make_closed_vault(tmp_path / "local", keyfile)
    (tmp_path / "local" / "data.db").unlink()
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows_before = conn.execute(text("SELECT COUNT(*) FROM sv_log")).scalar_one()
    with pytest.raises(StorageError, match="another vault"):
        Vault.open(tmp_path / "local", keyfile=keyfile, data_url=pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM sv_log")).scalar_one() == rows_before
    engine.dispose()


# -- plaintext never reaches the files --------------------------------------------------

DISTINCTIVE = ["Xylophone-Quetzal-7731", "Ørjan Þórsdóttir-Ŵ", "4111-7319-0042-9981"]


def test_plaintext_field_values_never_appear_in_the_vault_files(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "v"
    needles = [d.encode("utf-8") for d in DISTINCTIVE]
    needles += [json.dumps(d).encode("ascii") for d in DISTINCTIVE]  # \\u-escaped forms

    def assert_absent() -> None:
        for path in root.iterdir():
            blob = path.read_bytes()
            for needle in needles:
                assert needle not in blob, f"{needle!r} found in {path.name}"

    v = Vault.create(root, keyfile=keyfile)
    try:
        v.declare_kind("profile", fields=["name", "card"], purposes=["service"])
        s = v.admin()
        c = s.add_customer(ref="crm-1")
        rid = s.put(
            c, "profile", {"name": DISTINCTIVE[0], "card": DISTINCTIVE[2]}, purpose="service"
        )
        s.put_many([(c, "profile", {"name": DISTINCTIVE[1]})] * 3, purpose="service")
        s.update(c, rid, {"name": DISTINCTIVE[1]}, purpose="service")
        s.get(c, rid, purpose="service")
        s.list_records(c, purpose="service")
        assert any(p.name.endswith("-wal") for p in root.iterdir())
        assert_absent()  # while open, WAL files included
    finally:
        v.close()
    assert_absent()


def test_a_closed_vault_refuses_every_access(sqlite_vault: Vault) -> None:
    s = sqlite_vault.admin()
    c = s.add_customer()
    sqlite_vault.close()
    with pytest.raises(StorageError, match="closed"):
        s.customer(c)
    with pytest.raises(StorageError):
        sqlite_vault.admin()
    with pytest.raises(StorageError):
        sqlite_vault.declare_kind("x", fields=["a"], purposes=["b"])
    sqlite_vault.close()  # closing twice is harmless


def test_declare_kind_refuses_bad_names_and_empty_lists(sqlite_vault: Vault) -> None:
    for kwargs in (
        {"name": "Profile", "fields": ["a"], "purposes": ["p"]},
        {"name": "k", "fields": [], "purposes": ["p"]},
        {"name": "k", "fields": ["a"], "purposes": []},
        {"name": "k", "fields": "name", "purposes": ["p"]},
        {"name": "k", "fields": ["Bad Field"], "purposes": ["p"]},
    ):
        with pytest.raises(SchemaError):
            sqlite_vault.declare_kind(**kwargs)  # type: ignore[arg-type]


def test_vault_errors_share_one_root() -> None:
    for error in (StorageError, UnlockError, SchemaError):
        assert issubclass(error, VaultError)
