"""Upgrading a data store from schema 2 (no row authenticators) to schema 3 at its first
open (vault/rowmigrate.py), on SQLite and PostgreSQL: logged once with counts,
crash-safe, old ciphertexts still open, and a downgrade afterwards is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, exc, text

from shredvault.keys import KeyRing, KeyStore, load_keyfile
from shredvault.keys.envelope import record_aad_suffix
from shredvault.vault import Role, TamperError, Vault
from shredvault.vault.canonical import canonical

from legacy import data_engine, keystore_meta, strip_row_auth
from processes import CRASH_EXIT_CODE, run_python

PURPOSE = "service"
OPEN_IN_CHILD = (
    "import sys\n"
    "from shredvault import Vault\n"
    "Vault.open(sys.argv[1], keyfile=sys.argv[2], data_url=sys.argv[3] or None).close()\n"
)


@dataclass
class Old:
    """A vault rewritten into data schema 2, as the code before authenticated rows left it."""

    path: Path
    keyfile: Path
    data_url: str | None
    engine: Engine
    customer: str
    record: str
    token: str

    def open(self) -> Vault:
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url)

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(statement), params).scalar()

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def entries(self, action: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            bodies = conn.execute(
                text("SELECT body FROM sv_log WHERE action = :a ORDER BY seq"), {"a": action}
            ).scalars()
            return [json.loads(bytes(b)) for b in bodies]


@pytest.fixture
def old(tmp_path: Path, keyfile: Path, backend: str | None) -> Iterator[Old]:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        customer = s.add_customer(ref="crm-1")
        record = s.put(customer, "profile", {"name": "Ama Owusu"}, purpose=PURPOSE)
        s.update(customer, record, {"name": "Ama Mensah"}, purpose=PURPOSE)
        token = s.add_principal("olga", role="operator")
    strip_row_auth(path, load_keyfile(keyfile), backend)
    engine = data_engine(path, backend)
    try:
        yield Old(path, keyfile, backend, engine, customer, record, token)
    finally:
        engine.dispose()


def test_the_helper_made_a_schema_2_store(old: Old) -> None:
    """The control: no authenticators, no target column, no keystore mark."""
    assert old.scalar("SELECT v FROM sv_meta WHERE k = 'schema_version'") == "2"
    with pytest.raises(exc.DBAPIError):
        old.scalar("SELECT auth FROM sv_records")
    assert "data_rows_authenticated" not in keystore_meta(old.path / "keys.db")


def test_the_first_open_authenticates_every_row_once_and_logs_it(old: Old) -> None:
    with old.open() as v:
        assert v.admin().get(old.customer, old.record, purpose=PURPOSE).fields == {
            "name": "Ama Mensah"
        }
        assert v.login(old.token).get(old.customer, old.record, purpose=PURPOSE).fields
        assert v.admin().check_store().ok
    (entry,) = old.entries("store.authenticate")
    assert entry["detail"]["data"] == {"from": 2, "to": 3}
    assert entry["detail"]["rows"] == {
        "sv_kinds": 1,
        "sv_roles": 0,
        "sv_principals": 1,
        "sv_customers": 1,
        "sv_records": 1,
    }
    assert entry["detail"]["log_targets"] >= 5  # add, put, update, principal, kind
    assert old.scalar("SELECT v FROM sv_meta WHERE k = 'schema_version'") == "3"
    assert old.scalar("SELECT aad_v FROM sv_records") == 1  # sealed before: opens as it was
    assert keystore_meta(old.path / "keys.db")["data_rows_authenticated"] == "1"
    old.open().close()
    assert len(old.entries("store.authenticate")) == 1
    with old.open() as v:
        assert v.verify_log().ok  # every target filled in agrees with its body


def test_an_update_after_the_upgrade_reseals_with_the_version_in_the_aad(old: Old) -> None:
    with old.open() as v:
        v.admin().update(old.customer, old.record, {"name": "Ama Boateng"}, purpose=PURPOSE)
        assert v.admin().get(old.customer, old.record, purpose=PURPOSE).fields == {
            "name": "Ama Boateng"
        }
    assert old.scalar("SELECT aad_v FROM sv_records") == 2


def legacy_ciphertext(old: Old, fields: dict[str, Any]) -> bytes:
    """``fields`` sealed as the code before schema 3 sealed this record (its AAD without
    the record version): what a copy of the data store from before held."""
    store = KeyStore.open(old.path / "keys.db")
    ring = KeyRing(store, load_keyfile(old.keyfile), store.header())
    try:
        ck = ring.customer_keys([old.customer])[old.customer]
        env = ck.current
        aad = record_aad_suffix(ck.record_prefix, old.record, "profile", env.version)
        return env.seal(canonical(fields), aad)
    finally:
        ring.close()


def test_an_older_ciphertext_of_a_record_sealed_before_the_upgrade_is_refused(
    old: Old,
) -> None:
    """Its AAD lacks the version, so it would open; the row's authenticator covers the
    ciphertext's hash for such records, so it is refused all the same."""
    earlier = legacy_ciphertext(old, {"name": "Ama Owusu"})
    with old.open() as v:
        v.admin().get(old.customer, old.record, purpose=PURPOSE)
    old.sql("UPDATE sv_records SET ciphertext = :c WHERE id = :r", c=earlier, r=old.record)
    with old.open() as v, pytest.raises(TamperError) as caught:
        v.admin().get(old.customer, old.record, purpose=PURPOSE)
    assert caught.value.reason == "bad auth"


def test_a_role_holding_admin_before_the_upgrade_is_refused_after_it(
    old: Old, tmp_path: Path
) -> None:
    """The upgrade authenticates rows as they stand; a stored role is still checked as
    creating one checks it, on every load."""
    with old.open() as v:
        v.admin().add_role(Role.build("clerk", actions=["list"]))
        token = v.admin().add_principal("carl", role="clerk")
    strip_row_auth(old.path, load_keyfile(old.keyfile), old.data_url)
    spec = json.loads(old.scalar("SELECT spec FROM sv_roles WHERE name = 'clerk'"))
    old.sql(
        "UPDATE sv_roles SET spec = :s WHERE name = 'clerk'",
        s=json.dumps({**spec, "actions": ["admin"]}),
    )
    with old.open() as v:
        with pytest.raises(TamperError) as caught:
            v.login(token)
        assert (caught.value.table, caught.value.reason) == ("sv_roles", "malformed")
        assert v.admin().get(old.customer, old.record, purpose=PURPOSE).fields


def test_a_data_store_put_back_to_schema_2_after_the_upgrade_is_refused(old: Old) -> None:
    old.open().close()
    old.sql("UPDATE sv_meta SET v = '2' WHERE k = 'schema_version'")
    old.sql("UPDATE sv_principals SET role = 'admin'")
    with pytest.raises(TamperError, match="says schema 2"):
        old.open()
    assert len(old.entries("store.authenticate")) == 1


@pytest.mark.parametrize("point", ["rowmigrate:uncommitted", "rowmigrate:after-data"])
def test_a_crash_during_the_upgrade_leaves_one_schema_and_the_next_open_finishes(
    old: Old, point: str
) -> None:
    crashed = run_python(
        OPEN_IN_CHILD, str(old.path), str(old.keyfile), old.data_url or "", crash_at=point
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    expected = "2" if point == "rowmigrate:uncommitted" else "3"
    assert old.scalar("SELECT v FROM sv_meta WHERE k = 'schema_version'") == expected
    assert "data_rows_authenticated" not in keystore_meta(old.path / "keys.db")
    with old.open() as v:
        assert v.admin().get(old.customer, old.record, purpose=PURPOSE).fields
        assert v.admin().check_store().ok
    assert len(old.entries("store.authenticate")) == 1
    assert keystore_meta(old.path / "keys.db")["data_rows_authenticated"] == "1"
