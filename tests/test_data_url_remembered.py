"""The data URL a PostgreSQL vault remembers (issue 21 item 5): ``init --data-url`` (or
``Vault.create(data_url=...)``) stores it in keys.db without its password, later opens
and commands need none, and a hostile remembered value is a typed error that changes
nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from shredvault.vault import Auditor, StorageError, Vault

from clirun import make_run


def _keystore_meta(vault_dir: Path, key: str) -> str | None:
    conn = sqlite3.connect(vault_dir / "keys.db")
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _set_keystore_meta(vault_dir: Path, key: str, value: str) -> None:
    conn = sqlite3.connect(vault_dir / "keys.db")
    try:
        with conn:
            conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))
    finally:
        conn.close()


@pytest.mark.postgres
def test_a_postgres_vault_opens_without_its_data_url(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=pg_url) as vault:
        cid = vault.admin().add_customer(ref="crm-1")
    with Vault.open(tmp_path / "v", keyfile=keyfile) as vault:
        assert vault.admin().customer(cid).ref == "crm-1"
    with Auditor.open(tmp_path / "v") as auditor:
        assert auditor.verify().ok


@pytest.mark.postgres
def test_the_remembered_url_holds_no_password(tmp_path: Path, keyfile: Path, pg_url: str) -> None:
    # the test server trusts local connections, so the password is never asked for
    with_password = make_url(pg_url).set(password="Sw0rdfish-not-kept")
    url_text = with_password.render_as_string(hide_password=False)
    Vault.create(tmp_path / "v", keyfile=keyfile, data_url=url_text).close()
    remembered = _keystore_meta(tmp_path / "v", "data_url")
    assert remembered is not None and make_url(remembered).password is None
    for name in ("keys.db", "keys.db-wal"):
        path = tmp_path / "v" / name
        assert not path.exists() or b"Sw0rdfish" not in path.read_bytes()


@pytest.mark.postgres
def test_cli_commands_after_init_need_no_data_url(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    run = make_run(tmp_path / "v", keyfile)
    assert run("init", str(tmp_path / "v"), "--data-url", pg_url).exit_code == 0
    added = run("customer", "add", "--ref", "crm-9", "--json")
    assert added.exit_code == 0, added.output
    listed = run("customer", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert "crm-9" in listed.output


@pytest.mark.parametrize(
    "hostile",
    [
        "sqlite:////etc/passwd",
        "postgresql+psycopg://u:stolen@db.example/x",
        "not a url at all",
        "postgresql://" + "x" * 3000,
    ],
)
def test_a_hostile_remembered_url_is_a_typed_error_and_changes_nothing(
    tmp_path: Path, keyfile: Path, hostile: str
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile) as vault:
        cid = vault.admin().add_customer(ref="crm-1")
        head = vault.head
    _set_keystore_meta(tmp_path / "v", "data_location", "external")
    _set_keystore_meta(tmp_path / "v", "data_url", hostile)
    with pytest.raises(StorageError, match=r"remembered in keys\.db") as raised:
        Vault.open(tmp_path / "v", keyfile=keyfile)
    assert "stolen" not in str(raised.value)
    with pytest.raises(StorageError, match=r"remembered in keys\.db"):
        Auditor.open(tmp_path / "v")
    # the vault itself is intact: told where its data is, it opens as before
    data_url = f"sqlite:///{tmp_path / 'v' / 'data.db'}"
    with Vault.open(tmp_path / "v", keyfile=keyfile, data_url=data_url) as vault:
        assert vault.head.seq > head.seq  # its own unlock entry, nothing lost before it
        assert vault.admin().customer(cid).ref == "crm-1"
        assert vault.verify_log().ok


def test_cli_init_json_says_where_the_data_lives(tmp_path: Path, keyfile: Path) -> None:
    run = make_run(tmp_path / "v", keyfile)
    result = run("init", str(tmp_path / "v"), "--json")
    assert json.loads(result.output)["data"] == "sqlite"
    assert _keystore_meta(tmp_path / "v", "data_url") is None
