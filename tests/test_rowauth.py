"""Authenticated data-store rows (issue 16, items 2 and 3), on SQLite and PostgreSQL.

Each finding of issue 16 is replayed by an insider who can write the data store but
holds neither the passphrase nor the keyfile: the vault must refuse the object with a
:class:`TamperError` (exit 5 in the CLI), log the refusal, serve nothing of it, and leave
the legitimate data intact. Rows put back whole from an older, authentic copy are
found through the log (a later entry changed that object)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shredvault.keys import FLOOR, load_keyfile
from shredvault.vault import (
    AuditChainError,
    Auditor,
    LegalHoldError,
    Role,
    TamperError,
    Vault,
    handover_keygen,
    read_handover_public_key,
)
from shredvault.vault.errors import CiphertextTamperError

from legacy import data_engine
from verifiers import row_key_by_hand

PURPOSE = "service"
HANDOVER_PASSPHRASE = b"acquirer passphrase for tests"


@dataclass
class World:
    """A closed vault with two customers (one record each) and its data store, which
    the insider edits with plain SQL."""

    path: Path
    keyfile: Path
    data_url: str | None
    engine: Engine
    first: str
    first_record: str
    second: str
    second_record: str

    def open(self) -> Vault:
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url)

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def row(self, statement: str, **params: Any) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text(statement), params).one()._mapping)

    def put_back(self, table: str, key: str, ident: str, row: dict[str, Any]) -> None:
        """Write every column of an earlier copy of a row back over it."""
        sets = ", ".join(f"{c} = :{c}" for c in row if c != key)
        self.sql(f"UPDATE {table} SET {sets} WHERE {key} = :{key}", **row)
        assert self.row(f"SELECT * FROM {table} WHERE {key} = :k", k=ident) == row

    def entries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            bodies = conn.execute(text("SELECT body FROM sv_log ORDER BY seq")).scalars()
            return [json.loads(bytes(b)) for b in bodies]

    def tamper_entries(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["detail"].get("reason_code") == "row_tampered"]

    def keys_held(self, customer: str) -> bool:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.path / 'keys.db'}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM deks WHERE customer_id = ?", (customer,))
            return found.fetchone() is not None
        finally:
            conn.close()


@pytest.fixture
def world(tmp_path: Path, keyfile: Path, backend: str | None) -> Iterator[World]:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        first = s.add_customer(ref="crm-1", consent={"transfer": False})
        first_record = s.put(first, "profile", {"name": "Ama Owusu"}, purpose=PURPOSE)
        second = s.add_customer(ref="crm-2", consent={"transfer": True})
        second_record = s.put(second, "profile", {"name": "Lin Hui"}, purpose=PURPOSE)
    engine = data_engine(path, backend)
    try:
        yield World(path, keyfile, backend, engine, first, first_record, second, second_record)
    finally:
        engine.dispose()


def assert_intact(world: World) -> None:
    """The legitimate data still serves: every record reads as the vault wrote it."""
    with world.open() as v:
        s = v.admin()
        assert s.get(world.first, world.first_record, purpose=PURPOSE).fields == {
            "name": "Ama Owusu"
        }
        assert s.get(world.second, world.second_record, purpose=PURPOSE).fields == {
            "name": "Lin Hui"
        }


# -- the format, recomputed by hand from docs/rows.md -----------------------------------------


def _part(kind: str, value: Any, aad_v: int | None) -> bytes:
    if kind == "h":
        return b"n" if aad_v != 1 else b"h" + hashlib.sha256(bytes(value)).digest()
    if value is None:
        return b"n"
    if kind == "b":
        return b"b1" if value else b"b0"
    return kind.encode() + str(value).encode("utf-8")


COLUMNS = {
    "sv_kinds": "name t spec t",
    "sv_principals": "name t lookup t role t token_hash t expires t revoked b created t",
    "sv_customers": "id t ref t state t dek_version i retain_until t legal_hold b consent t "
    "created t shredded t shred_intent_seq i",
    "sv_records": "id t customer_id t kind t version i dek_version i aad_v i ciphertext h",
}


def test_every_authenticator_recomputes_by_hand_from_the_documented_message(
    world: World,
) -> None:
    with world.open() as v:
        v.admin().add_principal("audra", role="auditor")
        v.admin().hold(world.first)
    key = row_key_by_hand(world.path / "keys.db", load_keyfile(world.keyfile))
    checked = 0
    for table, spec in COLUMNS.items():
        pairs = spec.split()
        columns = list(zip(pairs[::2], pairs[1::2], strict=True))
        with world.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table}"))]
        for row in rows:
            parts = [b"shredvault/row/v1", table.encode()]
            parts += [_part(k, row[c], row.get("aad_v")) for c, k in columns]
            parts.append(b"i" + str(row["seq"]).encode())
            message = b"".join(struct.pack(">I", len(p)) + p for p in parts)
            assert hmac.new(key, message, hashlib.sha256).hexdigest() == row["auth"], table
            checked += 1
    assert checked == 1 + 1 + 2 + 2


# -- principals and roles ----------------------------------------------------------------


def test_an_auditor_row_raised_to_admin_does_not_log_in(world: World) -> None:
    with world.open() as v:
        token = v.admin().add_principal("audra", role="auditor")
    world.sql("UPDATE sv_principals SET role = 'admin' WHERE name = 'audra'")
    with world.open() as v:
        with pytest.raises(TamperError) as caught:
            v.login(token)
        assert (caught.value.table, caught.value.row) == ("sv_principals", "audra")
        assert caught.value.reason == "bad auth"
        # An admin acts: revoking (always allowed) and a fresh principal.
        v.admin().revoke_principal("audra")
        fresh = v.admin().add_principal("audra2", role="auditor")
        assert v.login(fresh).kinds()
    (logged,) = world.tamper_entries()
    assert (logged["action"], logged["outcome"]) == ("auth.login", "error")
    assert logged["detail"]["table"] == "sv_principals"
    assert_intact(world)


def test_a_session_whose_row_is_raised_meanwhile_is_refused_on_its_next_call(
    world: World,
) -> None:
    with world.open() as v:
        token = v.admin().add_principal("olga", role="auditor")
        session = v.login(token)
        world.sql("UPDATE sv_principals SET role = 'admin' WHERE name = 'olga'")
        with pytest.raises(TamperError):
            session.get(world.first, world.first_record, purpose=PURPOSE)
    (logged,) = world.tamper_entries()
    assert logged["action"] == "record.get" and logged["actor"] == "olga"
    assert not any(e["action"] == "record.get" and e["outcome"] == "ok" for e in world.entries())


@pytest.mark.parametrize(
    "actions", [["read", "write", "delete", "list"], ["admin"]], ids=["widened", "admin"]
)
def test_a_custom_role_widened_in_the_data_store_is_not_obeyed(
    world: World, actions: list[str]
) -> None:
    with world.open() as v:
        v.admin().add_role(Role.build("clerk", actions=["list"]))
        token = v.admin().add_principal("carl", role="clerk")
    spec = world.row("SELECT spec FROM sv_roles WHERE name = 'clerk'")["spec"]
    widened = json.dumps({**json.loads(spec), "actions": actions}, sort_keys=True)
    world.sql("UPDATE sv_roles SET spec = :s WHERE name = 'clerk'", s=widened)
    with world.open() as v:
        with pytest.raises(TamperError) as caught:
            v.login(token).get(world.first, world.first_record, purpose=PURPOSE)
        assert (caught.value.table, caught.value.row) == ("sv_roles", "clerk")
        # The admin re-sets the role: its principals work again, as narrow as before.
        v.admin().add_role(Role.build("clerk", actions=["list"]), replace=True)
        assert v.login(token).kinds()
    assert [e["detail"]["table"] for e in world.tamper_entries()] == ["sv_roles"]
    assert_intact(world)


@pytest.mark.parametrize("column", ["revoked", "expires"])
def test_a_revoked_or_expired_principal_brought_back_in_the_data_store_is_refused(
    world: World, column: str
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    with world.open() as v:
        token = v.admin().add_principal("paul", role="operator", expires=soon)
        if column == "revoked":
            v.admin().revoke_principal("paul")
    if column == "revoked":
        world.sql("UPDATE sv_principals SET revoked = false WHERE name = 'paul'")
    else:
        world.sql("UPDATE sv_principals SET expires = '2999-01-01T00:00:00.000000Z'")
    with world.open() as v, pytest.raises(TamperError):
        v.login(token)
    assert len(world.tamper_entries()) == 1


def test_a_kind_widened_in_the_data_store_is_refused_until_declared_again(
    world: World,
) -> None:
    spec = world.row("SELECT spec FROM sv_kinds WHERE name = 'profile'")["spec"]
    widened = json.dumps({**json.loads(spec), "purposes": [PURPOSE, "marketing"]})
    world.sql("UPDATE sv_kinds SET spec = :s WHERE name = 'profile'", s=widened)
    with world.open() as v:
        with pytest.raises(TamperError) as caught:
            v.admin().get(world.first, world.first_record, purpose="marketing")
        assert (caught.value.table, caught.value.row) == ("sv_kinds", "profile")
        with pytest.raises(TamperError):
            v.admin().get(world.first, world.first_record, purpose=PURPOSE)
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    logged = world.tamper_entries()
    assert [(e["action"], e["detail"]["table"]) for e in logged] == [
        ("store.tamper", "sv_kinds"),
        ("store.tamper", "sv_kinds"),
    ]
    assert_intact(world)


# -- customers -----------------------------------------------------------------------------


def test_a_cleared_legal_hold_does_not_let_the_customer_be_shredded(world: World) -> None:
    with world.open() as v:
        v.admin().hold(world.first)
    world.sql("UPDATE sv_customers SET legal_hold = false WHERE id = :c", c=world.first)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().shred(world.first, reason="erasure request")
    assert (caught.value.table, caught.value.row) == ("sv_customers", world.first)
    assert world.keys_held(world.first)
    assert [e["action"] for e in world.tamper_entries()] == ["customer.shred"]
    # Put back as the vault wrote it, the hold stands as before.
    world.sql("UPDATE sv_customers SET legal_hold = true WHERE id = :c", c=world.first)
    with world.open() as v, pytest.raises(LegalHoldError):
        v.admin().shred(world.first, reason="erasure request")
    assert_intact(world)


def test_a_back_dated_retention_does_not_make_shred_expired_erase(world: World) -> None:
    world.sql(
        "UPDATE sv_customers SET retain_until = '2001-01-01T00:00:00.000000Z' WHERE id = :c",
        c=world.first,
    )
    with world.open() as v:
        result = v.admin().shred_expired()
    assert result.receipts == [] and list(result.failed) == [world.first]
    assert world.keys_held(world.first)
    assert world.row("SELECT state FROM sv_customers WHERE id = :c", c=world.first) == {
        "state": "active"
    }
    assert len(world.tamper_entries()) == 1


@pytest.fixture(scope="module")
def acquirer_pub(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    base = tmp_path_factory.mktemp("acquirer")
    pub, _key_file, _fp = handover_keygen(base / "acquirer", HANDOVER_PASSPHRASE, params=FLOOR)
    return read_handover_public_key(pub)


def test_consent_flipped_to_yes_does_not_put_a_customer_in_a_handover(
    world: World, acquirer_pub: bytes, tmp_path: Path
) -> None:
    world.sql(
        """UPDATE sv_customers SET consent = '{"transfer": true}' WHERE id = :c""", c=world.first
    )
    out = tmp_path / "package.svho"
    with world.open() as v, pytest.raises(TamperError):
        v.admin().handover_export(acquirer_pub, str(out))
    assert not out.exists()
    assert not any(e["action"] == "customer.handover" for e in world.entries())
    assert len(world.tamper_entries()) == 1


# -- records -------------------------------------------------------------------------------


def test_an_older_ciphertext_written_back_is_refused_and_logged(world: World) -> None:
    old = world.row("SELECT ciphertext FROM sv_records WHERE id = :r", r=world.first_record)
    with world.open() as v:
        v.admin().update(world.first, world.first_record, {"name": "Ama Mensah"}, purpose=PURPOSE)
    world.sql(
        "UPDATE sv_records SET ciphertext = :c WHERE id = :r",
        c=old["ciphertext"],
        r=world.first_record,
    )
    with world.open() as v, pytest.raises(CiphertextTamperError):
        v.admin().get_many(
            [(world.second, world.second_record), (world.first, world.first_record)],
            purpose=PURPOSE,
        )
    (logged,) = world.tamper_entries()
    assert logged["record"] == world.first_record
    gets = [e for e in world.entries() if e["action"] == "record.get" and e["outcome"] == "ok"]
    assert gets == []  # nothing of the batch was served


def test_an_update_writes_every_column_it_changes_and_stays_authentic(world: World) -> None:
    """The re-authenticating writer also writes columns its authenticator leaves out."""
    before = world.row("SELECT * FROM sv_records WHERE id = :r", r=world.first_record)
    with world.open() as v:
        s = v.admin()
        updated = s.update(world.first, world.first_record, {"name": "Ama M."}, purpose=PURPOSE)
        assert s.get(world.first, world.first_record, purpose=PURPOSE).updated == updated.updated
        assert s.check_store().ok
    after = world.row("SELECT * FROM sv_records WHERE id = :r", r=world.first_record)
    assert after["updated"] == updated.updated != before["updated"]
    assert (after["version"], after["created"]) == (2, before["created"])
    assert after["seq"] > before["seq"] and after["auth"] != before["auth"]


# -- whole rows rolled back to an older authentic copy --------------------------------------


def test_a_principal_row_rolled_back_to_before_its_revocation_is_refused(world: World) -> None:
    with world.open() as v:
        token = v.admin().add_principal("rita", role="operator")
    before = world.row("SELECT * FROM sv_principals WHERE name = 'rita'")
    with world.open() as v:
        v.admin().revoke_principal("rita")
    world.put_back("sv_principals", "name", "rita", before)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.login(token)
    assert caught.value.reason == "stale"


def test_a_customer_row_rolled_back_to_before_its_hold_is_refused(world: World) -> None:
    before = world.row("SELECT * FROM sv_customers WHERE id = :c", c=world.first)
    with world.open() as v:
        v.admin().hold(world.first)
    world.put_back("sv_customers", "id", world.first, before)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().shred(world.first, reason="erasure request")
    assert caught.value.reason == "stale"
    assert world.keys_held(world.first)


def test_a_record_row_rolled_back_whole_is_refused(world: World) -> None:
    before = world.row("SELECT * FROM sv_records WHERE id = :r", r=world.first_record)
    with world.open() as v:
        v.admin().update(world.first, world.first_record, {"name": "Ama Mensah"}, purpose=PURPOSE)
    world.put_back("sv_records", "id", world.first_record, before)
    with world.open() as v:
        with pytest.raises(TamperError) as caught:
            v.admin().get(world.first, world.first_record, purpose=PURPOSE)
        assert caught.value.reason == "stale"
        # The other customer's record is untouched and serves.
        assert v.admin().get(world.second, world.second_record, purpose=PURPOSE).fields
    assert len(world.tamper_entries()) == 1


def test_hiding_the_later_entry_by_editing_its_target_is_found_by_verification(
    world: World,
) -> None:
    """Rolling a record back and blanking the ``target`` of the entry that changed it
    (so the freshness lookup misses it) is an edit of a column the signed body fixes:
    verification finds it, at the open (here: the entry is past the reconciliation
    mark) and offline, without keys."""
    before = world.row("SELECT * FROM sv_records WHERE id = :r", r=world.first_record)
    with world.open() as v:
        v.admin().update(world.first, world.first_record, {"name": "Ama Mensah"}, purpose=PURPOSE)
    world.put_back("sv_records", "id", world.first_record, before)
    world.sql(
        "UPDATE sv_log SET target = NULL WHERE action = 'record.update' AND record = :r",
        r=world.first_record,
    )
    with pytest.raises(AuditChainError, match="target column"):
        world.open()
    with Auditor.open(world.path, data_url=world.data_url) as auditor:
        report = auditor.verify()
    assert (report.ok, report.reason) == (False, "modified")
    assert "target column" in report.message
    assert any("check-store" in note for note in report.notes)


# -- the store check ---------------------------------------------------------------------


def test_check_store_lists_every_tampered_row(world: World) -> None:
    with world.open() as v:
        v.admin().add_principal("audra", role="auditor")
        assert v.admin().check_store().ok
    world.sql("UPDATE sv_principals SET role = 'admin' WHERE name = 'audra'")
    world.sql("UPDATE sv_customers SET legal_hold = true WHERE id = :c", c=world.second)
    world.sql("UPDATE sv_records SET auth = NULL WHERE id = :r", r=world.first_record)
    with world.open() as v:
        report = v.admin().check_store()
    assert not report.ok
    assert sorted((b.table, b.row, b.reason) for b in report.tampered) == sorted(
        [
            ("sv_principals", "audra", "bad auth"),
            ("sv_customers", world.second, "bad auth"),
            ("sv_records", world.first_record, "unauthenticated"),
        ]
    )
    assert report.rows["sv_records"] == 2 and report.rows["sv_customers"] == 2
    checks = [e for e in world.entries() if e["action"] == "store.check"]
    assert [c["outcome"] for c in checks] == ["ok", "error"]
    assert checks[-1]["detail"]["tampered"] == {
        "sv_principals": 1,
        "sv_customers": 1,
        "sv_records": 1,
    }


# -- the CLI, as a real process ------------------------------------------------------------


def shredvault(world: World, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("shredvault")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    base.update(SHREDVAULT_VAULT=str(world.path), SHREDVAULT_KEYFILE=str(world.keyfile))
    if world.data_url:
        base["SHREDVAULT_DATA_URL"] = world.data_url
    base.update(env)
    base = {k: v for k, v in base.items() if v}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=base, timeout=120, check=False
    )


def test_the_cli_exits_5_for_a_tampered_row_and_check_store_reports_it(world: World) -> None:
    with world.open() as v:
        token = v.admin().add_principal("audra", role="auditor")
    clean = shredvault(world, "audit", "check-store", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    world.sql("UPDATE sv_principals SET role = 'admin' WHERE name = 'audra'")

    got = shredvault(
        world, "record", "get", world.first, world.first_record, "--purpose", PURPOSE,
        SHREDVAULT_TOKEN=token,
    )  # fmt: skip
    assert got.returncode == 5
    assert got.stdout == "" and "Ama" not in got.stderr
    assert got.stderr.startswith("error: ") and "sv_principals" in got.stderr

    checked = shredvault(world, "audit", "check-store", "--json")
    assert checked.returncode == 5
    report = json.loads(checked.stdout)
    assert report["ok"] is False
    assert report["tampered"] == [{"table": "sv_principals", "row": "audra", "reason": "bad auth"}]
    assert json.loads(checked.stderr)["type"] == "TamperError"  # --json: errors as JSON too

    offline = shredvault(world, "audit", "verify", "--json", SHREDVAULT_KEYFILE="")
    assert any("check-store" in note for note in json.loads(offline.stdout)["notes"])
