"""Adding principals and roles: an existing role changes only when replacing is asked
for, and bad input is a typed error that creates nothing and logs no ``ok`` entry.

State is read straight from ``data.db`` (``sv_principals``, ``sv_roles``, ``sv_log``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from shredvault.vault import Role, SchemaError, Vault

Rows = list[tuple[Any, ...]]


def query(v: Vault, sql: str, *params: Any) -> Rows:
    conn = sqlite3.connect(f"file:{v.path / 'data.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def entries_after(v: Vault, seq: int) -> list[dict[str, Any]]:
    rows = query(v, "SELECT body FROM sv_log WHERE seq > ? ORDER BY seq", seq)
    return [json.loads(bytes(body)) for (body,) in rows]


def principals(v: Vault) -> Rows:
    return query(v, "SELECT name, role, revoked FROM sv_principals ORDER BY name")


def roles(v: Vault) -> Rows:
    return query(v, "SELECT name, spec FROM sv_roles ORDER BY name")


def name_only() -> Role:
    return Role.build("p1", actions=["read"], fields=["profile.name"], purposes=["service"])


def every_field() -> Role:
    return Role.build("p1", actions=["read", "list"], purposes=["service"])


@pytest.fixture
def record(sqlite_vault: Vault) -> tuple[str, str]:
    admin = sqlite_vault.admin()
    cid = admin.add_customer()
    rid = admin.put(cid, "profile", {"name": "Ana", "phone": "+351 21 000 0000"}, purpose="service")
    return cid, rid


# -- replacing a role ---------------------------------------------------------------------


def test_adding_a_role_that_exists_is_refused_and_changes_nothing(
    sqlite_vault: Vault, record: tuple[str, str]
) -> None:
    v = sqlite_vault
    admin = v.admin()
    admin.add_role(name_only())
    holder = v.login(admin.add_principal("p1-holder", role="p1"))
    before, mark = roles(v), v.head.seq
    with pytest.raises(SchemaError, match=r"role p1 exists; pass replace=True / --replace"):
        admin.add_role(every_field())
    assert roles(v) == before
    assert entries_after(v, mark) == []
    got = holder.get(*record, purpose="service")
    assert dict(got.fields) == {"name": "Ana"}


def test_replacing_a_role_applies_to_its_principals_next_call_and_is_logged(
    sqlite_vault: Vault, record: tuple[str, str]
) -> None:
    v = sqlite_vault
    admin = v.admin()
    admin.add_role(name_only())
    holder = v.login(admin.add_principal("p1-holder", role="p1"))
    assert dict(holder.get(*record, purpose="service").fields) == {"name": "Ana"}
    mark = v.head.seq
    admin.add_role(every_field(), replace=True)
    (entry,) = entries_after(v, mark)
    assert (entry["action"], entry["outcome"], entry["actor"]) == ("role.add", "ok", "admin")
    assert entry["detail"] == {**every_field().to_json(), "replaced": True}
    assert [json.loads(spec) for _, spec in roles(v)] == [every_field().to_json()]
    got = holder.get(*record, purpose="service")
    assert dict(got.fields) == {"name": "Ana", "phone": "+351 21 000 0000"}


def test_replace_of_a_role_that_does_not_exist_simply_adds_it(sqlite_vault: Vault) -> None:
    v = sqlite_vault
    mark = v.head.seq
    v.admin().add_role(name_only(), replace=True)
    (entry,) = entries_after(v, mark)
    assert entry["detail"] == name_only().to_json()  # no "replaced": nothing was
    assert [name for name, _ in roles(v)] == ["p1"]


# -- bad input creates nothing ------------------------------------------------------------

LONG = "a" * 64


def assert_nothing_created(v: Vault, before: tuple[Rows, Rows], mark: int) -> None:
    assert (principals(v), roles(v)) == before
    assert [e for e in entries_after(v, mark) if e["outcome"] == "ok"] == []


@pytest.mark.parametrize(
    ("name", "role"),
    [("", "operator"), (LONG, "operator"), ("ops-1", ""), ("ops-1", LONG), ("ops-1", "janitor")],
    ids=["empty name", "name of 64", "empty role", "role of 64", "unknown role"],
)
def test_add_principal_with_bad_input_creates_nothing(
    sqlite_vault: Vault, name: str, role: str
) -> None:
    v = sqlite_vault
    before, mark = (principals(v), roles(v)), v.head.seq
    with pytest.raises(SchemaError):
        v.admin().add_principal(name, role=role)
    assert_nothing_created(v, before, mark)


def test_a_name_of_63_characters_is_the_longest_accepted(sqlite_vault: Vault) -> None:
    v = sqlite_vault
    v.admin().add_principal("a" * 63, role="operator")
    assert principals(v) == [("a" * 63, "operator", 0)]


def test_add_principal_twice_is_refused_and_keeps_the_first(sqlite_vault: Vault) -> None:
    v = sqlite_vault
    admin = v.admin()
    first = admin.add_principal("ops-1", role="operator")
    before, mark = (principals(v), roles(v)), v.head.seq
    with pytest.raises(SchemaError, match="already exists"):
        admin.add_principal("ops-1", role="auditor")
    assert_nothing_created(v, before, mark)
    assert v.login(first).role == "operator"


def role_with_name(name: str) -> Role:
    """A role that bypasses Role.build's checks, as a caller could construct one."""
    return Role.from_json({**name_only().to_json(), "name": name})


BAD_ROLES: dict[str, Callable[[], Role]] = {
    "empty name": lambda: role_with_name(""),
    "name of 64": lambda: role_with_name(LONG),
    "upper case": lambda: role_with_name("P1"),
    "built-in": lambda: role_with_name("operator"),
    "admin action": lambda: Role.from_json({**name_only().to_json(), "actions": ["admin"]}),
    "bad purpose": lambda: Role.from_json({**name_only().to_json(), "purposes": ["Bad Purpose"]}),
}


@pytest.mark.parametrize("bad", sorted(BAD_ROLES))
def test_add_role_with_bad_input_creates_nothing(sqlite_vault: Vault, bad: str) -> None:
    v = sqlite_vault
    role = BAD_ROLES[bad]()
    before, mark = (principals(v), roles(v)), v.head.seq
    with pytest.raises(SchemaError):
        v.admin().add_role(role)
    with pytest.raises(SchemaError):
        v.admin().add_role(role, replace=True)
    assert_nothing_created(v, before, mark)


@pytest.mark.parametrize("name", ["", LONG])
def test_role_build_refuses_bad_names(name: str) -> None:
    with pytest.raises(SchemaError, match="role name"):
        Role.build(name, actions=["read"])


def test_add_role_refuses_what_is_not_a_role(sqlite_vault: Vault) -> None:
    v = sqlite_vault
    before, mark = (principals(v), roles(v)), v.head.seq
    with pytest.raises(SchemaError, match=r"Role\.build"):
        v.admin().add_role(name_only().to_json())  # type: ignore[arg-type]
    assert_nothing_created(v, before, mark)
