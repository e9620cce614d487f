"""Customers by application reference (issue 21 item 1): unique refs declared per vault
(at creation or later by an admin), enforced by the vault and by a unique index, the
lookup ``customer_by_ref`` gated and logged like ``customer show``, and the CLI
(``init --unique-refs``, ``customer refs``, ``customer show --ref``, refs in
``shred --expired --dry-run``) run as a real subprocess on both data stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, exc, inspect, text

from shredvault.vault import (
    AccessDeniedError,
    DuplicateRefError,
    NotFoundError,
    Role,
    SchemaError,
    Vault,
    restore_backup,
)

REF = "crm-43"


def url_of(v: Vault, backend: str | None) -> str:
    return backend or f"sqlite:///{v.path / 'data.db'}"


def query(v: Vault, backend: str | None, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url_of(v, backend))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def entries_after(v: Vault, backend: str | None, seq: int) -> list[dict[str, Any]]:
    rows = query(v, backend, "SELECT body FROM sv_log WHERE seq > :s ORDER BY seq", s=seq)
    return [json.loads(bytes(r.body)) for r in rows]


def customer_count(v: Vault, backend: str | None) -> int:
    return int(query(v, backend, "SELECT COUNT(*) FROM sv_customers")[0][0])


def ref_index_exists(v: Vault, backend: str | None) -> bool:
    engine = create_engine(url_of(v, backend))
    try:
        with engine.connect() as conn:
            names = {ix["name"] for ix in inspect(conn).get_indexes("sv_customers")}
    finally:
        engine.dispose()
    return "ux_sv_customers_ref" in names


@pytest.fixture
def vault(make_vault: Any) -> Vault:
    v: Vault = make_vault(unique_refs=True)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    return v


def test_a_duplicate_ref_is_refused_and_nothing_is_written(
    vault: Vault, backend: str | None
) -> None:
    first = vault.admin().add_customer(ref=REF)
    rid = vault.admin().put(first, "profile", {"name": "Ada"}, purpose="service")
    before, seq = customer_count(vault, backend), vault.head.seq
    with pytest.raises(DuplicateRefError, match="refs are unique") as refused:
        vault.admin().add_customer(ref=REF)
    assert isinstance(refused.value, SchemaError)
    assert REF not in str(refused.value)
    assert customer_count(vault, backend) == before
    assert vault.head.seq == seq and entries_after(vault, backend, seq) == []
    # the first customer, its record and the log are intact
    assert vault.admin().customer_by_ref(REF).id == first
    assert vault.admin().get(first, rid, purpose="service").fields == {"name": "Ada"}
    assert vault.verify_log().ok
    # other refs and customers without a ref still go in
    vault.admin().add_customer(ref="crm-44")
    vault.admin().add_customer()
    vault.admin().add_customer()


def test_the_database_enforces_unique_refs_with_an_index(vault: Vault, backend: str | None) -> None:
    vault.admin().add_customer(ref=REF)
    assert ref_index_exists(vault, backend)
    engine = create_engine(url_of(vault, backend))
    try:
        with pytest.raises(exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sv_customers (id, ref, state, dek_version, legal_hold, "
                    "consent, created) VALUES ('cus_x', :r, 'active', 1, false, '{}', 'now')"
                ),
                {"r": REF},
            )
    finally:
        engine.dispose()
    assert customer_count(vault, backend) == 1


def test_unique_refs_survive_a_reopen(vault: Vault, backend: str | None, keyfile: Path) -> None:
    vault.admin().add_customer(ref=REF)
    path = vault.path
    vault.close()
    with (
        Vault.open(path, keyfile=keyfile, data_url=backend) as again,
        pytest.raises(DuplicateRefError),
    ):
        again.admin().add_customer(ref=REF)


def test_turning_unique_refs_on_is_refused_while_customers_share_a_ref(
    make_vault: Any, backend: str | None
) -> None:
    v: Vault = make_vault()
    a, b = v.admin().add_customer(ref=REF), v.admin().add_customer(ref=REF)
    assert not ref_index_exists(v, backend)
    seq = v.head.seq
    with pytest.raises(DuplicateRefError, match="1 ref"):
        v.admin().set_unique_refs(True)
    assert entries_after(v, backend, seq) == []
    assert not ref_index_exists(v, backend)
    # still off: a third customer with the ref goes in; the lookup says it is ambiguous
    v.admin().add_customer(ref=REF)
    seq = v.head.seq
    with pytest.raises(DuplicateRefError, match="more than one customer"):
        v.admin().customer_by_ref(REF)
    (entry,) = entries_after(v, backend, seq)
    assert (entry["action"], entry["outcome"]) == ("customer.show", "error")
    assert entry["detail"] == {"reason_code": "ref_ambiguous"}
    # make the refs distinct by shredding the extra customers: then it may be turned on
    v.admin().shred(b, reason="test")
    third = next(c.id for c in v.admin().list_customers() if c.ref == REF and c.id != a)
    v.admin().shred(third, reason="test")
    seq = v.head.seq
    v.admin().set_unique_refs(True)
    (entry,) = entries_after(v, backend, seq)
    assert (entry["action"], entry["outcome"], entry["detail"]) == (
        "customer.refs",
        "ok",
        {"unique": True},
    )
    assert ref_index_exists(v, backend)
    with pytest.raises(DuplicateRefError):
        v.admin().add_customer(ref=REF)
    v.admin().set_unique_refs(False)
    assert not ref_index_exists(v, backend)
    assert v.admin().add_customer(ref=REF)


def test_customer_by_ref_is_logged_like_customer_show(vault: Vault, backend: str | None) -> None:
    cid = vault.admin().add_customer(ref=REF, retain_until=datetime(2999, 1, 1, tzinfo=UTC))
    seq = vault.head.seq
    found = vault.admin().customer_by_ref(REF)
    assert found == vault.admin().customer(cid)
    by_ref, by_id = entries_after(vault, backend, seq)
    assert by_ref["action"] == by_id["action"] == "customer.show"
    assert by_ref["subject"] == by_id["subject"] is not None
    assert by_ref["outcome"] == "ok"


def test_an_unknown_ref_is_not_found_and_logged_without_the_ref(
    vault: Vault, backend: str | None
) -> None:
    seq = vault.head.seq
    with pytest.raises(NotFoundError, match="no customer has this ref"):
        vault.admin().customer_by_ref("crm-nobody")
    (entry,) = entries_after(vault, backend, seq)
    assert (entry["action"], entry["outcome"]) == ("customer.show", "error")
    assert entry["detail"] == {"reason_code": "ref_not_found"}
    assert "crm-nobody" not in json.dumps(entry)
    for bad in ("", None, 42, "x" * 10_000):
        with pytest.raises(SchemaError):
            vault.admin().customer_by_ref(bad)  # type: ignore[arg-type]
    assert vault.head.seq == seq + 1  # bad input is refused before anything is logged


def test_a_shredded_customer_frees_its_ref(vault: Vault) -> None:
    old = vault.admin().add_customer(ref=REF)
    vault.admin().shred(old, reason="erasure request")
    with pytest.raises(NotFoundError):
        vault.admin().customer_by_ref(REF)
    new = vault.admin().add_customer(ref=REF)
    assert vault.admin().customer_by_ref(REF).id == new
    assert vault.admin().customer(old).ref is None


def test_lookup_and_setting_pass_the_gate(vault: Vault, backend: str | None) -> None:
    vault.admin().add_customer(ref=REF)
    vault.admin().add_role(Role.build("writer", actions=["write"]))
    vault.admin().add_role(Role.build("lister", actions=["list"]))
    writer = vault.login(vault.admin().add_principal("w", role="writer"))
    lister = vault.login(vault.admin().add_principal("l", role="lister"))
    seq = vault.head.seq
    with pytest.raises(AccessDeniedError):
        writer.customer_by_ref(REF)
    with pytest.raises(AccessDeniedError):
        lister.set_unique_refs(False)
    denied = entries_after(vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in denied] == [
        ("customer.show", "denied"),
        ("customer.refs", "denied"),
    ]
    assert lister.customer_by_ref(REF).ref == REF
    assert ref_index_exists(vault, backend)  # the refused change changed nothing
    with pytest.raises(DuplicateRefError):
        vault.admin().add_customer(ref=REF)


def test_expired_customers_carry_their_refs(vault: Vault) -> None:
    past = datetime(2000, 1, 1, tzinfo=UTC)
    with_ref = vault.admin().add_customer(ref=REF, retain_until=past)
    without = vault.admin().add_customer(retain_until=past)
    preview = vault.admin().expired_customers()
    assert set(preview.due) == {with_ref, without}
    assert preview.refs == {with_ref: REF}
    assert preview.to_json()["refs"] == {with_ref: REF}


# -- the CLI, as a real process ------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("shredvault")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_cli_unique_refs_show_by_ref_and_dry_run(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    root = tmp_path / "cli-vault"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    if backend:
        env["SHREDVAULT_DATA_URL"] = backend
    made = cli("init", str(root), "--keyfile", str(keyfile), "--unique-refs", "--json", env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["unique_refs"] is True
    cid = cli("customer", "add", "--ref", REF, "--retain-until", "2000-01-01", env=env)
    assert cid.returncode == 0, cid.stderr
    again = cli("customer", "add", "--ref", REF, env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "error: another customer already has this ref and refs are unique in this vault: "
        "nothing was written"
    )
    shown = cli("customer", "show", "--ref", REF, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == cid.stdout.strip()
    assert "ref           crm-43" in cli("customer", "show", "--ref", REF, env=env).stdout
    missing = cli("customer", "show", "--ref", "crm-404", env=env)
    assert missing.returncode == 4 and "no customer has this ref" in missing.stderr
    assert cli("customer", "show", env=env).returncode == 2
    assert cli("customer", "show", cid.stdout.strip(), "--ref", REF, env=env).returncode == 2
    preview = cli("shred", "--expired", "--dry-run", env=env)
    assert preview.returncode == 0, preview.stderr
    assert f"{cid.stdout.strip()}  retain until 2000-01-01T00:00:00.000000Z  ref {REF}" in (
        preview.stdout
    )
    as_json = json.loads(cli("shred", "--expired", "--dry-run", "--json", env=env).stdout)
    assert as_json["refs"] == {cid.stdout.strip(): REF}
    off = cli("customer", "refs", "--not-unique", "--json", env=env)
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout) == {"unique_refs": False}
    assert cli("customer", "add", "--ref", REF, env=env).returncode == 0
    on = cli("customer", "refs", "--unique", env=env)
    assert on.returncode == 1 and "shared by more than one customer" in on.stderr
    ambiguous = cli("customer", "show", "--ref", REF, env=env)
    assert ambiguous.returncode == 1 and "more than one customer" in ambiguous.stderr
    assert cli("customer", "refs", env=env).returncode == 2
    assert "--unique / --not-unique" in cli("customer", "refs", "--help", env=env).stdout


def test_a_backup_and_restore_keep_unique_refs_enforced(
    vault: Vault, backend: str | None, keyfile: Path, tmp_path: Path, pg_schemas: Any
) -> None:
    s = vault.admin()
    cid = s.add_customer(ref=REF)
    archive = tmp_path / "backup.tar"
    s.backup(str(archive))
    target_url = pg_schemas() if backend else None
    restore_backup(
        archive,
        tmp_path / "restored",
        keyfile=keyfile,
        data_url=target_url,
        accept_unreplayed_window=True,
    )
    with Vault.open(tmp_path / "restored", keyfile=keyfile, data_url=target_url) as back:
        assert ref_index_exists(back, target_url)
        assert back.admin().customer_by_ref(REF).id == cid
        with pytest.raises(DuplicateRefError):
            back.admin().add_customer(ref=REF)
