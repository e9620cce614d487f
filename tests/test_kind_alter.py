"""Schema evolution (issue 21 item 4): ``alter_kind`` adds fields, deprecates fields
(read, removable by an update setting them to None, never written again) and adds
purposes, logged as ``schema.alter``; a record holding a field deprecated or dropped
from its kind can still be read and updated. The CLI (``kind alter``, ``record
update``) runs as a real subprocess. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.vault import AccessDeniedError, Role, SchemaError, Session, Vault

NAME, PHONE = "Chidi Okafor", "+234 803 000 1122"


def url_of(v: Vault, backend: str | None) -> str:
    return backend or f"sqlite:///{v.path / 'data.db'}"


def rows(v: Vault, backend: str | None, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url_of(v, backend))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def entries_after(v: Vault, backend: str | None, seq: int) -> list[dict[str, Any]]:
    found = rows(v, backend, "SELECT body, target FROM sv_log WHERE seq > :s ORDER BY seq", s=seq)
    return [{**json.loads(bytes(r.body)), "_target": r.target} for r in found]


def record_state(v: Vault, backend: str | None, rid: str) -> tuple[Any, ...]:
    (row,) = rows(v, backend, "SELECT version, ciphertext FROM sv_records WHERE id = :r", r=rid)
    return (row.version, bytes(row.ciphertext))


@pytest.fixture
def vault(make_vault: Any) -> Vault:
    v: Vault = make_vault()
    v.declare_kind("contact", fields=["name", "phone"], purposes=["service"])
    return v


@pytest.fixture
def admin(vault: Vault) -> Session:
    return vault.admin()


def test_adding_a_field_and_a_purpose_is_logged_and_usable(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    cid = admin.add_customer()
    seq = vault.head.seq
    spec = admin.alter_kind("contact", add_fields=["email"], add_purposes=["billing"])
    assert spec.fields == {"name", "phone", "email"} and spec.purposes == {"service", "billing"}
    (entry,) = entries_after(vault, backend, seq)
    assert (entry["action"], entry["outcome"], entry["_target"]) == (
        "schema.alter",
        "ok",
        "kind:contact",
    )
    assert entry["detail"] == {
        "kind": "contact",
        "changed": {
            "added_fields": ["email"],
            "deprecated_fields": [],
            "added_purposes": ["billing"],
        },
        "fields": ["email", "name", "phone"],
        "purposes": ["billing", "service"],
    }
    rid = admin.put(cid, "contact", {"name": NAME, "email": "c@example.org"}, purpose="billing")
    assert admin.get(cid, rid, purpose="billing").fields == {
        "name": NAME,
        "email": "c@example.org",
    }
    assert admin.kinds()["contact"] == spec
    assert admin.check_store().ok and vault.verify_log().ok


def test_a_deprecated_field_is_read_and_removable_but_never_written(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    cid = admin.add_customer()
    rid = admin.put(cid, "contact", {"name": NAME, "phone": PHONE}, purpose="service")
    spec = admin.alter_kind("contact", deprecate_fields=["phone"])
    assert spec.deprecated == {"phone"} and spec.writable == {"name"}
    assert spec.to_json()["deprecated"] == ["phone"]
    # read: still there
    assert admin.get(cid, rid, purpose="service").fields == {"name": NAME, "phone": PHONE}
    # put and update may not write it; nothing changes, nothing is logged
    before, seq = record_state(vault, backend, rid), vault.head.seq
    count = len(rows(vault, backend, "SELECT id FROM sv_records"))
    with pytest.raises(SchemaError, match="deprecated") as refused:
        admin.put(cid, "contact", {"name": NAME, "phone": PHONE}, purpose="service")
    assert PHONE not in str(refused.value)
    with pytest.raises(SchemaError, match="deprecated"):
        admin.update(cid, rid, {"phone": "+1 555"}, purpose="service")
    assert record_state(vault, backend, rid) == before
    assert len(rows(vault, backend, "SELECT id FROM sv_records")) == count
    assert vault.head.seq == seq
    # an update of another field keeps it as stored
    kept = admin.update(cid, rid, {"name": "C. Okafor"}, purpose="service")
    assert kept.fields == {"name": "C. Okafor", "phone": PHONE} and kept.version == 2
    # setting it to None removes it
    gone = admin.update(cid, rid, {"phone": None}, purpose="service")
    assert gone.fields == {"name": "C. Okafor"} and gone.version == 3
    assert admin.get(cid, rid, purpose="service").fields == {"name": "C. Okafor"}
    # adding it again makes it writable again
    again = admin.alter_kind("contact", add_fields=["phone"])
    assert again.deprecated == frozenset() and "deprecated" not in again.to_json()
    assert admin.update(cid, rid, {"phone": PHONE}, purpose="service").fields["phone"] == PHONE
    assert admin.check_store().ok and vault.verify_log().ok


def test_a_record_holding_a_field_dropped_from_its_kind_can_be_read_and_updated(
    vault: Vault, admin: Session, keyfile: Path, backend: str | None
) -> None:
    cid = admin.add_customer()
    rid = admin.put(cid, "contact", {"name": NAME, "phone": PHONE}, purpose="service")
    admin.declare_kind("contact", fields=["name"], purposes=["service"])  # phone dropped
    assert admin.get(cid, rid, purpose="service").fields == {"name": NAME, "phone": PHONE}
    updated = admin.update(cid, rid, {"name": "Chidi O."}, purpose="service")
    assert updated.fields == {"name": "Chidi O.", "phone": PHONE}
    before = record_state(vault, backend, rid)
    with pytest.raises(SchemaError, match="not declared"):
        admin.update(cid, rid, {"phone": "+1 555"}, purpose="service")
    with pytest.raises(SchemaError, match="not declared"):
        admin.update(cid, rid, {"fax": None}, purpose="service")  # never held, not declared
    assert record_state(vault, backend, rid) == before
    removed = admin.update(cid, rid, {"phone": None}, purpose="service")
    assert removed.fields == {"name": "Chidi O."}
    path = vault.path
    vault.close()
    with Vault.open(path, keyfile=keyfile, data_url=backend) as reopened:
        got = reopened.admin().get(cid, rid, purpose="service")
        assert got.fields == {"name": "Chidi O."} and got.version == 3


def test_a_field_limited_role_sees_and_removes_only_its_fields(
    vault: Vault, admin: Session
) -> None:
    cid = admin.add_customer()
    rid = admin.put(cid, "contact", {"name": NAME, "phone": PHONE}, purpose="service")
    admin.alter_kind("contact", deprecate_fields=["phone"])
    admin.add_role(Role.build("names", actions=["read", "write"], fields=["contact.name"]))
    names = vault.login(admin.add_principal("n", role="names"))
    assert names.get(cid, rid, purpose="service").fields == {"name": NAME}
    with pytest.raises(AccessDeniedError):
        names.update(cid, rid, {"phone": None}, purpose="service")
    assert admin.get(cid, rid, purpose="service").fields["phone"] == PHONE


def test_bad_alterations_change_nothing_and_log_nothing(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    spec, seq = admin.kinds()["contact"], vault.head.seq
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("nope", {"add_fields": ["x"]}, "not declared"),
        ("contact", {"deprecate_fields": ["fax"]}, "not declared"),
        ("contact", {"add_fields": ["name"]}, "as it is"),
        ("contact", {}, "as it is"),
        ("contact", {"deprecate_fields": ["name", "phone"]}, "at least one writable"),
        ("contact", {"add_fields": ["x"], "deprecate_fields": ["x"]}, "both added"),
        ("contact", {"add_fields": ["Bad Name"]}, "field name"),
        ("contact", {"add_purposes": "service"}, "not one string"),
        ("Bad", {"add_fields": ["x"]}, "kind name"),
    ]
    for name, change, message in bad:
        with pytest.raises(SchemaError, match=message):
            admin.alter_kind(name, **change)
    assert vault.head.seq == seq
    assert admin.kinds()["contact"] == spec


def test_altering_a_kind_needs_admin_and_the_denial_is_logged(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    admin.add_role(Role.build("ops", actions=["read", "write", "delete", "list"]))
    ops = vault.login(admin.add_principal("o", role="ops"))
    seq = vault.head.seq
    with pytest.raises(AccessDeniedError):
        ops.alter_kind("contact", add_fields=["email"])
    (entry,) = entries_after(vault, backend, seq)
    assert (entry["action"], entry["outcome"]) == ("schema.alter", "denied")
    assert admin.kinds()["contact"].fields == {"name", "phone"}


# -- the CLI, as a real process ------------------------------------------------------------


def test_cli_kind_alter_and_record_update(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    root = tmp_path / "cli-vault"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    if backend:
        env["SHREDVAULT_DATA_URL"] = backend
    script = Path(sys.executable).with_name("shredvault")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
        )

    assert cli("init", str(root), "--keyfile", str(keyfile)).returncode == 0
    declared = cli("kind", "declare", "contact", "--fields", "name,phone", "--purposes", "service")
    assert declared.returncode == 0, declared.stderr
    cid = cli("customer", "add").stdout.strip()
    put = cli("record", "put", cid, "contact", "-", "--purpose", "service",
              stdin=json.dumps({"name": NAME, "phone": PHONE}))  # fmt: skip
    assert put.returncode == 0, put.stderr
    rid = put.stdout.strip()
    altered = cli("kind", "alter", "contact", "--deprecate-fields", "phone",
                  "--add-fields", "email", "--add-purposes", "billing", "--json")  # fmt: skip
    assert altered.returncode == 0, altered.stderr
    assert json.loads(altered.stdout) == {
        "kind": "contact",
        "fields": ["email", "name", "phone"],
        "purposes": ["billing", "service"],
        "deprecated": ["phone"],
    }
    listed = cli("kind", "list").stdout
    assert "DEPRECATED" in listed and "phone" in listed.splitlines()[1]
    assert cli("kind", "alter", "contact").returncode == 2
    assert cli("kind", "alter", "nope", "--add-fields", "x").returncode == 1
    refused = cli("record", "update", cid, rid, "--purpose", "service", "--field", "phone=1")
    assert refused.returncode == 1 and "deprecated" in refused.stderr
    assert "1" not in refused.stderr.replace("exit", "")
    updated = cli("record", "update", cid, rid, "--purpose", "billing",
                  "--field", "email=c@example.org", "--json")  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    got = json.loads(updated.stdout)
    assert got["fields"] == {"name": NAME, "phone": PHONE, "email": "c@example.org"}
    assert got["version"] == 2
    removed = cli("record", "update", cid, rid, "--purpose", "service", "--remove", "phone")
    assert removed.returncode == 0, removed.stderr
    assert f"{rid}  contact v3" in removed.stdout and PHONE not in removed.stdout
    from_stdin = cli("record", "update", cid, rid, "-", "--purpose", "service", "--json",
                     stdin=json.dumps({"name": "C. O."}))  # fmt: skip
    assert json.loads(from_stdin.stdout)["fields"] == {"name": "C. O.", "email": "c@example.org"}
    assert cli("record", "update", cid, rid, "--purpose", "service").returncode == 2
    both = cli("record", "update", cid, rid, "--purpose", "service",
               "--field", "name=x", "--remove", "name")  # fmt: skip
    assert both.returncode == 2
    missing = cli("record", "update", cid, "rec_" + "b" * 26, "--purpose", "service",
                  "--field", "name=x")  # fmt: skip
    assert missing.returncode == 4
    assert "--remove NAME" in cli("record", "update", "--help").stdout
