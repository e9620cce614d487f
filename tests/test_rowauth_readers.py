"""Every reader that acts on a data-store row checks it first (issue 16's leftovers), on
SQLite and PostgreSQL.

An insider who can write the data store edits one row with plain SQL; the vault must
refuse with a logged :class:`TamperError` where the row decides anything (a limited
role's shred or delete, a shred's state, the crash roll-forward at open) and must not
list a forged row as if it wrote it (principals, the ``shred --expired`` preview,
a customer's records), leaving records, keys and the log intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_rowauth import PURPOSE, World

from shredvault.vault import AccessDeniedError, Role, TamperError, Vault

from legacy import data_engine


@pytest.fixture
def world(tmp_path: Path, keyfile: Path, backend: str | None) -> Iterator[World]:
    """The first customer holds a ``medical`` record (``first_record``) besides its
    profile; a ``clerk`` role may shred, delete and read ``profile`` records only."""
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        v.declare_kind("medical", fields=["note"], purposes=[PURPOSE])
        s = v.admin()
        first = s.add_customer(ref="crm-1")
        first_record = s.put(first, "medical", {"note": "asthma"}, purpose=PURPOSE)
        s.put(first, "profile", {"name": "Ama Owusu"}, purpose=PURPOSE)
        second = s.add_customer(ref="crm-2")
        second_record = s.put(second, "profile", {"name": "Lin Hui"}, purpose=PURPOSE)
        actions = ["shred", "delete", "read", "list"]
        s.add_role(Role.build("clerk", actions=actions, kinds=["profile"]))
    engine = data_engine(path, backend)
    try:
        yield World(path, keyfile, backend, engine, first, first_record, second, second_record)
    finally:
        engine.dispose()


def clerk(v: Vault) -> str:
    return v.admin().add_principal("carl", role="clerk")


def assert_first_intact(world: World) -> None:
    """Both of the first customer's records still serve, its keys are held."""
    assert world.keys_held(world.first)
    with world.open() as v:
        s = v.admin()
        assert s.get(world.first, world.first_record, purpose=PURPOSE).fields == {"note": "asthma"}
        assert len(s.list_records(world.first, purpose=PURPOSE)) == 2
        assert s.get(world.second, world.second_record, purpose=PURPOSE).fields
        assert world.row("SELECT state FROM sv_customers WHERE id = :c", c=world.first) == {
            "state": "active"
        }


def test_a_record_kind_forged_to_one_the_role_covers_does_not_let_it_shred(
    world: World,
) -> None:
    with world.open() as v:
        token = clerk(v)
        with pytest.raises(AccessDeniedError):  # as the vault wrote it: medical, refused
            v.login(token).shred(world.first, reason="erasure request")
    world.sql("UPDATE sv_records SET kind = 'profile' WHERE id = :r", r=world.first_record)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.login(token).shred(world.first, reason="erasure request")
    assert (caught.value.table, caught.value.row) == ("sv_records", world.first_record)
    logged = world.tamper_entries()
    assert [(e["action"], e["outcome"], e["detail"]["table"]) for e in logged] == [
        ("customer.shred", "error", "sv_records")
    ]
    assert logged[0]["subject"] is not None  # names the customer's tag, never the row
    world.sql("UPDATE sv_records SET kind = 'medical' WHERE id = :r", r=world.first_record)
    assert_first_intact(world)


def test_a_record_kind_forged_is_a_tamper_error_before_the_gate_reads_it(
    world: World,
) -> None:
    # Forged to a kind the role does not cover: a refusal as tampered, not a denial.
    with world.open() as v:
        token = clerk(v)
        profile = v.login(token).list_records(world.second, purpose=PURPOSE)[0].id
    world.sql("UPDATE sv_records SET kind = 'medical' WHERE id = :r", r=profile)
    with world.open() as v:
        with pytest.raises(TamperError) as caught:
            v.login(token).delete(world.second, profile, purpose=PURPOSE)
        assert caught.value.row == profile
        with pytest.raises(TamperError):  # nor is it hidden from a listing
            v.login(token).list_records(world.second, purpose=PURPOSE)
    logged = world.tamper_entries()
    assert [(e["action"], e["record"]) for e in logged] == [
        ("record.delete", profile),
        ("record.list", profile),
    ]
    assert not [e for e in world.entries() if e["outcome"] == "denied"]
    world.sql("UPDATE sv_records SET kind = 'profile' WHERE id = :r", r=profile)
    with world.open() as v:
        assert v.login(token).get(world.second, profile, purpose=PURPOSE).fields == {
            "name": "Lin Hui"
        }


def test_a_record_kind_forged_does_not_let_a_limited_role_delete(world: World) -> None:
    with world.open() as v:
        token = clerk(v)
    world.sql("UPDATE sv_records SET kind = 'profile' WHERE id = :r", r=world.first_record)
    with world.open() as v, pytest.raises(TamperError):
        v.login(token).delete(world.first, world.first_record, purpose=PURPOSE)
    assert [e["action"] for e in world.tamper_entries()] == ["record.delete"]
    world.sql("UPDATE sv_records SET kind = 'medical' WHERE id = :r", r=world.first_record)
    assert_first_intact(world)


def test_a_state_forged_to_shredding_neither_skips_the_checks_nor_shreds_at_open(
    world: World,
) -> None:
    with world.open() as v:
        v.admin().hold(world.first)
    world.sql("UPDATE sv_customers SET state = 'shredding' WHERE id = :c", c=world.first)
    # Opening finishes shreds a crash interrupted: this one was never begun.
    with world.open() as v:
        assert world.keys_held(world.first)
        with pytest.raises(TamperError) as caught:
            v.admin().shred(world.first, reason="erasure request")
        assert caught.value.table == "sv_customers"
    assert world.keys_held(world.first)
    # Logged by the vault itself at open, then for the refused shred call.
    assert [(e["actor"], e["action"], e["outcome"]) for e in world.tamper_entries()] == [
        ("vault", "customer.shred", "error"),
        ("admin", "customer.shred", "error"),
    ]
    world.sql("UPDATE sv_customers SET state = 'active' WHERE id = :c", c=world.first)
    assert_first_intact(world)


def test_a_back_dated_retention_is_not_listed_as_due(world: World) -> None:
    world.sql(
        "UPDATE sv_customers SET retain_until = '2001-01-01T00:00:00.000000Z' WHERE id = :c",
        c=world.first,
    )
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().expired_customers()
    assert (caught.value.table, caught.value.row) == ("sv_customers", world.first)
    assert [e["action"] for e in world.tamper_entries()] == ["customer.list"]
    world.sql("UPDATE sv_customers SET retain_until = NULL WHERE id = :c", c=world.first)
    with world.open() as v:
        preview = v.admin().expired_customers()
    assert (preview.due, preview.held) == ({}, {})
    assert_first_intact(world)


def test_a_principal_row_forged_is_not_listed_as_the_vault_wrote_it(world: World) -> None:
    with world.open() as v:
        token = clerk(v)
    world.sql("UPDATE sv_principals SET role = 'admin' WHERE name = 'carl'")
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().list_principals()
    assert (caught.value.table, caught.value.row) == ("sv_principals", "carl")
    assert [e["action"] for e in world.tamper_entries()] == ["principal.list"]
    with world.open() as v:  # the admin acts: revoke it, the list serves again
        v.admin().revoke_principal("carl")
        listed = {p.name: (p.role, p.revoked) for p in v.admin().list_principals()}
        assert listed["carl"][1] is True
        with pytest.raises(AccessDeniedError):
            v.login(token)
    assert_first_intact(world)


@pytest.mark.parametrize(
    "forgery",
    [
        "UPDATE sv_customers SET legal_hold = true WHERE id = :c",
        "UPDATE sv_principals SET expires = '2999-01-01T00:00:00.000000Z' WHERE name = 'carl'",
        "UPDATE sv_roles SET created = '2001-01-01T00:00:00.000000Z' WHERE name = 'clerk'",
    ],
)
def test_the_audit_report_shows_no_forged_principal_role_or_held_customer(
    world: World, forgery: str
) -> None:
    with world.open() as v:
        clerk(v)
        assert v.admin().audit_report()["customers"]["legal_hold"] == 0
    world.sql(forgery, c=world.first)
    with world.open() as v, pytest.raises(TamperError):
        v.admin().audit_report()
    assert [e["action"] for e in world.tamper_entries()] == ["audit.report"]
    world.sql("UPDATE sv_customers SET legal_hold = false WHERE id = :c", c=world.first)
    assert_first_intact(world)


def test_a_hold_cleared_in_the_data_store_does_not_let_a_decommission_proceed(
    world: World,
) -> None:
    with world.open() as v:
        v.admin().hold(world.first)
    world.sql("UPDATE sv_customers SET legal_hold = false WHERE id = :c", c=world.first)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().decommission(reason="closing the service")
    assert (caught.value.table, caught.value.row) == ("sv_customers", world.first)
    assert [e["action"] for e in world.tamper_entries()] == ["vault.decommission"]
    assert not [e for e in world.entries() if e["action"] == "vault.decommission-intent"]
    world.sql("UPDATE sv_customers SET legal_hold = true WHERE id = :c", c=world.first)
    with world.open() as v:
        v.admin().release(world.first)
    assert_first_intact(world)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("customer_id", "(SELECT id FROM sv_customers WHERE id <> customer_id LIMIT 1)"),
        ("kind", "'profile'"),
        ("version", "version + 1"),
        ("dek_version", "dek_version + 1"),
        ("aad_v", "1"),
        ("seq", "seq + 1"),
        ("auth", "NULL"),
        ("auth", "upper(auth)"),
    ],
)
def test_every_covered_column_of_a_record_row_is_checked_on_read(
    world: World, column: str, value: str
) -> None:
    # The record calls' own check (vault/rowauth.py check_records) covers each column
    # the authenticator does: a get, a batch get and a listing are all refused.
    world.sql(f"UPDATE sv_records SET {column} = {value} WHERE id = :r", r=world.first_record)
    # (a record moved to the other customer is asked for as that customer's)
    owner = world.second if column == "customer_id" else world.first
    with world.open() as v:
        s = v.admin()
        with pytest.raises(TamperError) as caught:
            s.get_many(
                [(world.second, world.second_record), (owner, world.first_record)],
                purpose=PURPOSE,
            )
        assert caught.value.row == world.first_record
        with pytest.raises(TamperError):
            s.list_records(owner, purpose=PURPOSE)
        if column != "customer_id":
            assert s.get(world.second, world.second_record, purpose=PURPOSE).fields


def dek_versions(world: World, customer: str) -> list[int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{world.path / 'keys.db'}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT version FROM deks WHERE customer_id = ?", (customer,))
        return sorted(int(v) for (v,) in found)
    finally:
        conn.close()


def test_a_dek_version_forged_does_not_steer_a_key_rotation(world: World) -> None:
    assert dek_versions(world, world.first) == [1]
    world.sql("UPDATE sv_customers SET dek_version = dek_version + 1 WHERE id = :c", c=world.first)
    with world.open() as v, pytest.raises(TamperError) as caught:
        v.admin().rotate_dek(world.first)
    assert (caught.value.table, caught.value.row) == ("sv_customers", world.first)
    assert [e["action"] for e in world.tamper_entries()] == ["keys.rotate-dek"]
    assert dek_versions(world, world.first) == [1]  # refused before any key was made
    world.sql("UPDATE sv_customers SET dek_version = dek_version - 1 WHERE id = :c", c=world.first)
    with world.open() as v:
        assert v.admin().rotate_dek(world.first) == 2
    assert_first_intact(world)
