"""Who may do what (DESIGN §6), as a matrix: every built-in role and one custom role
against every action path, with an allowed, a not-allowed and an undeclared purpose,
and with fields inside and outside the custom role's allow-list.

Each case asserts both what the caller gets (a value, or the typed denial) and the
entries the decision left in the access log (read straight from ``sv_log`` in
``data.db``). The expected decisions come from a small, independent statement of
the policy below (:func:`decide`), not from the library's own ``Role.denial``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from shredvault.keys import generate_keyfile
from shredvault.vault import (
    ACTIONS,
    AccessDeniedError,
    Customer,
    NotFoundError,
    PurposeError,
    Receipt,
    Record,
    Role,
    SchemaError,
    Session,
    Vault,
)
from shredvault.vault.store import records

import logrows

# -- the policy under test, stated independently ----------------------------------------

PROFILE_FIELDS = frozenset({"name", "phone", "address"})
PROFILE_PURPOSES = frozenset({"service", "billing"})
CUSTOM = "handover"  # e.g. an acquirer's staff during a handover


@dataclass(frozen=True)
class Grant:
    """What a role may do, as the matrix expects it (None = no restriction)."""

    actions: frozenset[str]
    purposes: frozenset[str] | None = None
    profile_fields: frozenset[str] | None = None


GRANTS = {
    "admin": Grant(frozenset(ACTIONS)),
    "operator": Grant(frozenset({"read", "write", "delete", "list"})),
    "auditor": Grant(frozenset({"list", "audit"})),
    CUSTOM: Grant(
        frozenset({"read", "write", "delete", "list"}),
        purposes=frozenset({"service", "marketing"}),
        profile_fields=frozenset({"name", "phone"}),
    ),
}
ROLES = list(GRANTS)

# service: declared and allowed to every role; billing: declared, but not in the
# custom role's purposes; marketing: in the custom role's purposes, declared for no kind.
PURPOSES = ["service", "billing", "marketing"]
FIELD_CASES = ["allowed", "restricted"]

STORED = {
    "allowed": {"name": "Ada Lovelace", "phone": "+44 20 7946 0000"},
    "restricted": {
        "name": "Ada Lovelace",
        "phone": "+44 20 7946 0000",
        "address": "12 St James's Square",
    },
}
WRITTEN = {
    "allowed": {"name": "Ada Lovelace", "phone": "+44 20 7946 0000"},
    "restricted": {"name": "Ada Lovelace", "address": "12 St James's Square"},
}
UPDATED = {"allowed": {"phone": "+44 20 7946 0999"}, "restricted": {"address": "1 New Street"}}


def decide(
    role: str, action: str, purpose: str | None = None, written: frozenset[str] = frozenset()
) -> str | None:
    """The reason code ``role`` is refused ``action``, or None when it is allowed."""
    grant = GRANTS[role]
    if action not in grant.actions:
        return "action_not_allowed"
    if purpose is not None:
        if grant.purposes is not None and purpose not in grant.purposes:
            return "purpose_not_allowed"
        if purpose not in PROFILE_PURPOSES:
            return "purpose_not_declared"
    if grant.profile_fields is not None and written - grant.profile_fields:
        return "field_not_allowed"
    return None


def visible(role: str, fields: dict[str, Any]) -> dict[str, Any]:
    allowed = GRANTS[role].profile_fields
    return dict(fields) if allowed is None else {k: v for k, v in fields.items() if k in allowed}


def error_for(reason: str) -> type[Exception]:
    return PurposeError if reason == "purpose_not_declared" else AccessDeniedError


def cases(purpose: bool = False, fields: bool = False) -> list[Any]:
    """pytest params over role (x purpose) (x field case)."""
    axes: list[list[Any]] = [ROLES]
    if purpose:
        axes.append(PURPOSES)
    if fields:
        axes.append(FIELD_CASES)
    return [pytest.param(*combo, id="-".join(combo)) for combo in itertools.product(*axes)]


# -- one vault for the module ----------------------------------------------------------


@dataclass
class World:
    vault: Vault
    admin: Session
    sessions: dict[str, Session]
    data_db: Path
    names: Iterator[int] = field(default_factory=itertools.count)

    def actor(self, role: str) -> str:
        return f"p-{role}"

    def head(self) -> int:
        return self.vault.head.seq

    def entries_after(self, seq: int) -> list[dict[str, Any]]:
        return logrows.entries_after(self.data_db, seq)

    def scalar(self, sql: str, *params: Any) -> Any:
        return logrows.scalar(self.data_db, sql, *params)

    def customer(self) -> tuple[str, str]:
        """A fresh customer (made by the administrator) and its subject tag."""
        mark = self.head()
        cid = self.admin.add_customer()
        (entry,) = self.entries_after(mark)
        assert entry["action"] == "customer.add"
        return cid, entry["subject"]

    def record(self, cid: str, fields: dict[str, Any]) -> str:
        return self.admin.put(cid, "profile", fields, purpose="service")

    def record_count(self, cid: str) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM sv_records WHERE customer_id = ?", cid))

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.names)}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("matrix")
    generate_keyfile(root / "vault.key")
    v = Vault.create(root / "vault", keyfile=root / "vault.key")
    v.declare_kind("profile", fields=sorted(PROFILE_FIELDS), purposes=sorted(PROFILE_PURPOSES))
    v.declare_kind("note", fields=["text", "tag"], purposes=["service"])
    v.declare_kind("secret", fields=["code"], purposes=["service"])
    admin = v.admin()
    admin.add_role(
        Role.build(
            CUSTOM,
            actions=["read", "write", "delete", "list"],
            kinds=["profile", "note"],
            fields=["profile.name", "profile.phone"],
            purposes=["service", "marketing"],
        )
    )
    sessions = {}
    for role in ROLES:
        token = admin.add_principal(f"p-{role}", role=role)
        sessions[role] = v.login(token)
    yield World(v, admin, sessions, root / "vault" / "data.db")
    v.close()


# -- what a logged decision must look like ---------------------------------------------

TAG = re.compile(r"^[0-9a-f]{32}$")


def assert_allowed(
    entries: list[dict[str, Any]],
    world: World,
    role: str,
    action: str,
    *,
    count: int = 1,
    purpose: str | None = None,
    subject: str | None = None,
) -> None:
    assert [e["action"] for e in entries] == [action] * count
    for entry in entries:
        assert entry["outcome"] == "ok"
        assert entry["actor"] == world.actor(role)
        assert entry["role"] == role
        assert entry["purpose"] == purpose
        assert entry["subject"] == subject
        assert "reason_code" not in entry["detail"]


def assert_denied(
    entries: list[dict[str, Any]],
    world: World,
    role: str,
    action: str,
    reason: str,
    *,
    purpose: str | None = None,
    subject: str | None = None,
    kind: str | None = None,
) -> None:
    """Exactly one ``denied`` entry, naming who, what, why, and for whom when the
    decision was about a known customer's record. ``subject=None`` skips that check."""
    assert len(entries) == 1, entries
    (entry,) = entries
    assert entry["outcome"] == "denied"
    assert entry["action"] == action
    assert entry["actor"] == world.actor(role)
    assert entry["role"] == role
    assert entry["purpose"] == purpose
    assert entry["record"] is None
    assert entry["detail"]["reason_code"] == reason
    if kind is not None:
        assert entry["detail"]["kind"] == kind
    if subject is not None:
        assert entry["subject"] == subject


def refused(reason: str, call: Callable[[], object]) -> None:
    """``call`` raises the typed denial for ``reason`` (and only PurposeError for an
    undeclared purpose: a role refusal is not a schema problem)."""
    with pytest.raises(error_for(reason)) as info:
        call()
    if reason != "purpose_not_declared":
        assert not isinstance(info.value, SchemaError)


def record_subject_check(reason: str) -> bool:
    # field_not_allowed denials carry no subject (see
    # test_field_denial_names_the_customer_subject): checked there, not here.
    return reason != "field_not_allowed"


# -- customers --------------------------------------------------------------------------


@pytest.mark.parametrize("role", cases())
def test_add_customer(world: World, role: str) -> None:
    before = world.scalar("SELECT COUNT(*) FROM sv_customers")
    reason = decide(role, "write")
    mark = world.head()
    if reason is None:
        cid = world.sessions[role].add_customer(ref=world.unique("ref"))
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "customer.add", subject=entries[0]["subject"])
        assert TAG.match(entries[0]["subject"])
        assert world.admin.customer(cid).state == "active"
    else:
        refused(reason, lambda: world.sessions[role].add_customer())
        assert_denied(world.entries_after(mark), world, role, "customer.add", reason)
        assert world.scalar("SELECT COUNT(*) FROM sv_customers") == before


@pytest.mark.parametrize("role", cases())
def test_customer_metadata(world: World, role: str) -> None:
    cid, tag = world.customer()
    world.record(cid, STORED["restricted"])
    reason = decide(role, "list")
    mark = world.head()
    if reason is None:
        got = world.sessions[role].customer(cid)
        assert isinstance(got, Customer)
        assert got.id == cid
        assert got.state == "active"
        assert_allowed(world.entries_after(mark), world, role, "customer.show", subject=tag)
    else:
        refused(reason, lambda: world.sessions[role].customer(cid))
        assert_denied(world.entries_after(mark), world, role, "customer.show", reason)


@pytest.mark.parametrize("role", cases())
def test_list_customers(world: World, role: str) -> None:
    cid, _tag = world.customer()
    reason = decide(role, "list")
    mark = world.head()
    if reason is None:
        got = world.sessions[role].list_customers()
        assert cid in {c.id for c in got}
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "customer.list")
        assert entries[0]["detail"] == {"count": len(got)}
    else:
        refused(reason, lambda: world.sessions[role].list_customers())
        assert_denied(world.entries_after(mark), world, role, "customer.list", reason)


# -- records: write ------------------------------------------------------------------


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_put(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    written = WRITTEN[fields]
    reason = decide(role, "write", purpose, frozenset(written))
    mark = world.head()
    if reason is None:
        rid = world.sessions[role].put(cid, "profile", written, purpose=purpose)
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.put", purpose=purpose, subject=tag)
        assert entries[0]["record"] == rid
        assert entries[0]["detail"] == {"kind": "profile", "fields": sorted(written)}
        assert dict(world.admin.get(cid, rid, purpose="service").fields) == written
    else:
        refused(reason, lambda: world.sessions[role].put(cid, "profile", written, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.put",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag if record_subject_check(reason) else None,
        )
        assert world.record_count(cid) == 0


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_put_many(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    # Only the second item leaves the allow-list: the whole batch must go or stay.
    items = [(cid, "profile", WRITTEN["allowed"]), (cid, "profile", WRITTEN[fields])]
    names = frozenset(WRITTEN["allowed"]) | frozenset(WRITTEN[fields])
    reason = decide(role, "write", purpose, names)
    mark = world.head()
    if reason is None:
        rids = world.sessions[role].put_many(items, purpose=purpose)
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.put", count=2, purpose=purpose, subject=tag)
        assert [e["record"] for e in entries] == rids
        assert [e["detail"]["fields"] for e in entries] == [sorted(f) for _, _, f in items]
        assert world.record_count(cid) == 2
    else:
        refused(reason, lambda: world.sessions[role].put_many(items, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.put",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag if record_subject_check(reason) else None,
        )
        assert world.record_count(cid) == 0


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_update(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    rid = world.record(cid, STORED["restricted"])
    change = UPDATED[fields]
    reason = decide(role, "write", purpose, frozenset(change))
    mark = world.head()
    if reason is None:
        got = world.sessions[role].update(cid, rid, change, purpose=purpose)
        merged = {**STORED["restricted"], **change}
        assert isinstance(got, Record)
        assert got.version == 2
        assert dict(got.fields) == visible(role, merged)
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.update", purpose=purpose, subject=tag)
        assert entries[0]["record"] == rid
        assert entries[0]["detail"] == {"kind": "profile", "fields": sorted(change), "version": 2}
        # Fields the role cannot see survive its write untouched.
        assert dict(world.admin.get(cid, rid, purpose="service").fields) == merged
    else:
        refused(reason, lambda: world.sessions[role].update(cid, rid, change, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.update",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag if record_subject_check(reason) else None,
        )
        unchanged = world.admin.get(cid, rid, purpose="service")
        assert (unchanged.version, dict(unchanged.fields)) == (1, STORED["restricted"])


@pytest.mark.parametrize(("role", "purpose"), cases(purpose=True))
def test_delete(world: World, role: str, purpose: str) -> None:
    cid, tag = world.customer()
    rid = world.record(cid, STORED["restricted"])
    reason = decide(role, "delete", purpose)
    mark = world.head()
    if reason is None:
        world.sessions[role].delete(cid, rid, purpose=purpose)
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.delete", purpose=purpose, subject=tag)
        assert entries[0]["record"] == rid
        assert entries[0]["detail"] == {"kind": "profile"}
        with pytest.raises(NotFoundError):
            world.admin.get(cid, rid, purpose="service")
    else:
        refused(reason, lambda: world.sessions[role].delete(cid, rid, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.delete",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag,
        )
        assert world.record_count(cid) == 1


# -- records: read --------------------------------------------------------------------


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_get(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    rid = world.record(cid, STORED[fields])
    reason = decide(role, "read", purpose)
    mark = world.head()
    if reason is None:
        got = world.sessions[role].get(cid, rid, purpose=purpose)
        assert dict(got.fields) == visible(role, STORED[fields])
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.get", purpose=purpose, subject=tag)
        assert entries[0]["record"] == rid
        assert entries[0]["detail"] == {"kind": "profile", "fields": sorted(got.fields)}
    else:
        refused(reason, lambda: world.sessions[role].get(cid, rid, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.get",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag,
        )


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_get_many(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    rids = [world.record(cid, STORED["allowed"]), world.record(cid, STORED[fields])]
    reason = decide(role, "read", purpose)
    pairs = [(cid, rid) for rid in rids]
    mark = world.head()
    if reason is None:
        got = world.sessions[role].get_many(pairs, purpose=purpose)
        assert [r.id for r in got] == rids
        assert [dict(r.fields) for r in got] == [
            visible(role, STORED["allowed"]),
            visible(role, STORED[fields]),
        ]
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.get", count=2, purpose=purpose, subject=tag)
        assert [e["record"] for e in entries] == rids
        assert [e["detail"]["fields"] for e in entries] == [sorted(r.fields) for r in got]
    else:
        refused(reason, lambda: world.sessions[role].get_many(pairs, purpose=purpose))
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.get",
            reason,
            purpose=purpose,
            kind="profile",
            subject=tag,
        )


@pytest.mark.parametrize(("role", "purpose", "fields"), cases(purpose=True, fields=True))
def test_list_records(world: World, role: str, purpose: str, fields: str) -> None:
    cid, tag = world.customer()
    rid = world.record(cid, STORED[fields])
    reason = decide(role, "read", purpose)
    mark = world.head()
    if reason is None:
        got = world.sessions[role].list_records(cid, purpose=purpose, kind="profile")
        assert [(r.id, dict(r.fields)) for r in got] == [(rid, visible(role, STORED[fields]))]
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "record.list", purpose=purpose, subject=tag)
        assert entries[0]["record"] == rid
        assert entries[0]["detail"] == {"kind": "profile", "fields": sorted(got[0].fields)}
    else:
        refused(
            reason,
            lambda: world.sessions[role].list_records(cid, purpose=purpose, kind="profile"),
        )
        # Subject of a denied listing: test_list_records_denial_names_the_customer_subject.
        assert_denied(
            world.entries_after(mark),
            world,
            role,
            "record.list",
            reason,
            purpose=purpose,
            kind="profile",
        )


# -- erasure, legal hold, compaction -------------------------------------------------


@pytest.mark.parametrize("role", cases())
def test_shred(world: World, role: str) -> None:
    cid, tag = world.customer()
    world.record(cid, STORED["restricted"])
    reason = decide(role, "shred")
    mark = world.head()
    if reason is None:
        receipt = world.sessions[role].shred(cid, reason="contract ended")
        assert isinstance(receipt, Receipt)
        entries = world.entries_after(mark)
        assert [e["action"] for e in entries] == ["customer.shred-intent", "customer.shred"]
        assert all(e["outcome"] == "ok" and e["subject"] == tag for e in entries)
        assert all(e["actor"] == world.actor(role) and e["role"] == role for e in entries)
        assert world.admin.customer(cid).state == "shredded"
    else:
        refused(reason, lambda: world.sessions[role].shred(cid, reason="contract ended"))
        assert_denied(world.entries_after(mark), world, role, "customer.shred", reason)
        assert world.admin.customer(cid).state == "active"
        assert world.record_count(cid) == 1


@pytest.mark.parametrize("role", cases())
def test_hold(world: World, role: str) -> None:
    cid, tag = world.customer()
    reason = decide(role, "admin")
    mark = world.head()
    if reason is None:
        world.sessions[role].hold(cid)
        assert_allowed(world.entries_after(mark), world, role, "customer.hold", subject=tag)
        assert world.admin.customer(cid).legal_hold is True
    else:
        refused(reason, lambda: world.sessions[role].hold(cid))
        assert_denied(world.entries_after(mark), world, role, "customer.hold", reason)
        assert world.admin.customer(cid).legal_hold is False


@pytest.mark.parametrize("role", cases())
def test_compact(world: World, role: str) -> None:
    cid, _tag = world.customer()
    rid = world.record(cid, STORED["restricted"])
    row = world.vault._ctx.data.read(
        lambda c: dict(c.execute(select(records).where(records.c.id == rid)).one()._mapping)
    )
    world.admin.shred(cid, reason="contract ended")
    # As a vault from before shreds deleted record rows left it: compact's work.
    with world.vault._ctx.data.engine.begin() as conn:
        conn.execute(insert(records), [row])
    reason = decide(role, "admin")
    mark = world.head()
    if reason is None:
        removed = world.sessions[role].compact()
        assert removed == 1
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "vault.compact", count=len(entries))
        assert sum(e["detail"]["records"] for e in entries) == removed
        assert world.record_count(cid) == 0
    else:
        refused(reason, lambda: world.sessions[role].compact())
        assert_denied(world.entries_after(mark), world, role, "vault.compact", reason)
        assert world.record_count(cid) == 1


# -- reports: the export and audit actions ---------------------------------------------


@pytest.mark.parametrize("role", cases())
def test_customer_report(world: World, role: str) -> None:
    """``export``: the subject access report decrypts everything, so only roles granted
    export may run it; a refusal is logged on the customer's subject."""
    cid, tag = world.customer()
    world.record(cid, STORED["restricted"])
    reason = decide(role, "export")
    mark = world.head()
    if reason is None:
        report = world.sessions[role].customer_report(cid)
        assert [r["fields"] for r in report["records"]] == [STORED["restricted"]]
        assert_allowed(
            world.entries_after(mark),
            world,
            role,
            "customer.report",
            purpose="subject-access",
            subject=tag,
        )
    else:
        refused(reason, lambda: world.sessions[role].customer_report(cid))
        assert_denied(
            world.entries_after(mark), world, role, "customer.report", reason, subject=tag
        )


@pytest.mark.parametrize("role", cases())
def test_audit_query(world: World, role: str) -> None:
    """``audit``: the breach-scope query (ids and metadata, never plaintext)."""
    cid, _tag = world.customer()
    world.record(cid, STORED["restricted"])
    reason = decide(role, "audit")
    mark = world.head()
    if reason is None:
        result = world.sessions[role].audit_query(actor=world.admin.actor)
        assert cid in {c["customer"] for c in result["customers"]}
        assert all(value not in json.dumps(result) for value in STORED["restricted"].values())
        assert_allowed(world.entries_after(mark), world, role, "audit.query")
    else:
        refused(reason, lambda: world.sessions[role].audit_query())
        assert_denied(world.entries_after(mark), world, role, "audit.query", reason)


# -- principals and roles --------------------------------------------------------------


@pytest.mark.parametrize("role", cases())
def test_add_principal(world: World, role: str) -> None:
    name = world.unique(f"new-{role}")
    reason = decide(role, "admin")
    mark = world.head()
    if reason is None:
        token = world.sessions[role].add_principal(name, role="operator")
        assert token.startswith("svp_")
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "principal.add")
        assert entries[0]["detail"] == {"principal": name, "role": "operator", "expires": None}
        assert name in {p.name for p in world.admin.list_principals()}
    else:
        refused(reason, lambda: world.sessions[role].add_principal(name, role="operator"))
        assert_denied(world.entries_after(mark), world, role, "principal.add", reason)
        assert name not in {p.name for p in world.admin.list_principals()}


@pytest.mark.parametrize("role", cases())
def test_add_role(world: World, role: str) -> None:
    new = Role.build(world.unique(f"role-{role}"), actions=["list"], purposes=["service"])
    reason = decide(role, "admin")
    mark = world.head()
    if reason is None:
        world.sessions[role].add_role(new)
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "role.add")
        assert entries[0]["detail"]["name"] == new.name
        assert new.name in {r.name for r in world.admin.list_roles()}
    else:
        refused(reason, lambda: world.sessions[role].add_role(new))
        assert_denied(world.entries_after(mark), world, role, "role.add", reason)
        assert new.name not in {r.name for r in world.admin.list_roles()}


# -- schema and checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("role", cases())
def test_declare_kind(world: World, role: str) -> None:
    kind = world.unique(f"kind-{role}")
    reason = decide(role, "admin")
    mark = world.head()
    declare = world.sessions[role].declare_kind
    if reason is None:
        spec = declare(kind, fields=["a", "b"], purposes=["service"])
        assert (spec.name, spec.fields) == (kind, frozenset({"a", "b"}))
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "schema.declare")
        assert entries[0]["detail"] == {"kind": kind, "fields": ["a", "b"], "purposes": ["service"]}
    else:
        refused(reason, lambda: declare(kind, fields=["a"], purposes=["service"]))
        assert_denied(world.entries_after(mark), world, role, "schema.declare", reason)
    stored = world.scalar("SELECT COUNT(*) FROM sv_kinds WHERE name = ?", kind)
    assert stored == (1 if reason is None else 0)


@pytest.mark.parametrize("role", cases())
def test_list_kinds(world: World, role: str) -> None:
    reason = decide(role, "list")
    mark = world.head()
    if reason is None:
        found = world.sessions[role].kinds()
        assert {"profile", "note", "secret"} <= set(found)
        assert found["profile"].fields == PROFILE_FIELDS
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "schema.list")
        assert entries[0]["detail"] == {"count": world.scalar("SELECT COUNT(*) FROM sv_kinds")}
    else:
        refused(reason, lambda: world.sessions[role].kinds())
        assert_denied(world.entries_after(mark), world, role, "schema.list", reason)


@pytest.mark.parametrize("role", cases())
def test_checkpoint(world: World, role: str) -> None:
    reason = decide(role, "audit")
    mark = world.head()
    signed_before = world.scalar("SELECT COUNT(*) FROM sv_checkpoints")
    if reason is None:
        checkpoint = world.sessions[role].checkpoint()
        entries = world.entries_after(mark)
        assert_allowed(entries, world, role, "audit.checkpoint")
        seq = entries[0]["seq"]
        assert checkpoint.seq == seq and checkpoint.verify(world.vault.public_key)
        assert checkpoint.head == world.scalar("SELECT hash FROM sv_log WHERE seq = ?", seq)
        assert world.scalar("SELECT COUNT(*) FROM sv_checkpoints") == signed_before + 1
    else:
        refused(reason, lambda: world.sessions[role].checkpoint())
        entries = world.entries_after(mark)
        assert_denied(entries, world, role, "audit.checkpoint", reason)
        # Only the every-1000-entries rule may sign at the denial's entry.
        periodic = 1 if entries[0]["seq"] % 1000 == 0 else 0
        assert world.scalar("SELECT COUNT(*) FROM sv_checkpoints") == signed_before + periodic


ADMIN_ONLY: dict[str, tuple[str, Callable[[Session, str], object]]] = {
    "revoke_principal": ("principal.revoke", lambda s, name: s.revoke_principal(name)),
    "list_principals": ("principal.list", lambda s, name: s.list_principals()),
    "list_roles": ("role.list", lambda s, name: s.list_roles()),
}


@pytest.mark.parametrize("method", sorted(ADMIN_ONLY))
@pytest.mark.parametrize("role", ["operator", "auditor", CUSTOM])
def test_principal_administration_is_admin_only(world: World, role: str, method: str) -> None:
    victim = world.unique("victim")
    world.admin.add_principal(victim, role="operator")
    action, call = ADMIN_ONLY[method]
    mark = world.head()
    refused("action_not_allowed", lambda: call(world.sessions[role], victim))
    assert_denied(world.entries_after(mark), world, role, action, "action_not_allowed")
    (listed,) = [p for p in world.admin.list_principals() if p.name == victim]
    assert listed.revoked is False


@pytest.mark.parametrize("method", sorted(ADMIN_ONLY))
def test_principal_administration_by_an_admin_principal(world: World, method: str) -> None:
    victim = world.unique("victim")
    world.admin.add_principal(victim, role="operator")
    action, call = ADMIN_ONLY[method]
    mark = world.head()
    call(world.sessions["admin"], victim)
    assert_allowed(world.entries_after(mark), world, "admin", action)


# -- what the custom role's restrictions mean -----------------------------------------


def test_custom_role_is_refused_kinds_it_does_not_name(world: World) -> None:
    cid, tag = world.customer()
    rid = world.admin.put(cid, "secret", {"code": "1234"}, purpose="service")
    mark = world.head()
    refused("kind_not_allowed", lambda: world.sessions[CUSTOM].get(cid, rid, purpose="service"))
    assert_denied(
        world.entries_after(mark),
        world,
        CUSTOM,
        "record.get",
        "kind_not_allowed",
        purpose="service",
        kind="secret",
        subject=tag,
    )


def test_custom_role_cannot_write_kinds_it_does_not_name(world: World) -> None:
    cid, _tag = world.customer()
    mark = world.head()
    refused(
        "kind_not_allowed",
        lambda: world.sessions[CUSTOM].put(cid, "secret", {"code": "1"}, purpose="service"),
    )
    assert_denied(
        world.entries_after(mark),
        world,
        CUSTOM,
        "record.put",
        "kind_not_allowed",
        purpose="service",
        kind="secret",
    )
    assert world.record_count(cid) == 0


def test_listing_skips_kinds_the_custom_role_may_not_read(world: World) -> None:
    cid, _tag = world.customer()
    mine = world.record(cid, STORED["restricted"])
    world.admin.put(cid, "secret", {"code": "1234"}, purpose="service")
    mark = world.head()
    got = world.sessions[CUSTOM].list_records(cid, purpose="service")
    assert [(r.id, r.kind) for r in got] == [(mine, "profile")]
    assert [e["record"] for e in world.entries_after(mark)] == [mine]


def test_kinds_not_named_in_fields_keep_every_field(world: World) -> None:
    cid, _tag = world.customer()
    rid = world.admin.put(cid, "note", {"text": "call back", "tag": "vip"}, purpose="service")
    mark = world.head()
    got = world.sessions[CUSTOM].get(cid, rid, purpose="service")
    assert dict(got.fields) == {"text": "call back", "tag": "vip"}
    (entry,) = world.entries_after(mark)
    assert entry["detail"] == {"kind": "note", "fields": ["tag", "text"]}


def test_auditor_sees_customer_metadata_but_no_record_plaintext(world: World) -> None:
    cid, _tag = world.customer()
    rid = world.record(cid, STORED["restricted"])
    auditor = world.sessions["auditor"]
    shown = auditor.customer(cid)
    assert "Ada" not in json.dumps(shown.to_json())
    for read in (
        lambda: auditor.get(cid, rid, purpose="service"),
        lambda: auditor.get_many([(cid, rid)], purpose="service"),
        lambda: auditor.list_records(cid, purpose="service"),
    ):
        refused("action_not_allowed", read)


def test_listing_for_a_purpose_no_kind_declares_is_denied_and_logged(world: World) -> None:
    """Without a kind, a purpose that no kind declares is refused (minimal collection):
    PurposeError, nothing decrypted, one denied entry naming the customer's subject."""
    cid, tag = world.customer()
    world.record(cid, STORED["restricted"])
    mark = world.head()
    with pytest.raises(PurposeError):
        world.sessions["operator"].list_records(cid, purpose="marketing")
    (entry,) = world.entries_after(mark)
    assert (entry["outcome"], entry["subject"], entry["detail"]["reason_code"]) == (
        "denied",
        tag,
        "purpose_not_declared",
    )


@pytest.mark.parametrize("actions", [["admin"], ["read", "admin"]])
def test_custom_roles_cannot_hold_the_admin_action(actions: list[str]) -> None:
    with pytest.raises(SchemaError, match="admin"):
        Role.build("sneaky", actions=actions)


@pytest.mark.parametrize("name", ["admin", "operator", "auditor"])
def test_custom_roles_cannot_take_a_built_in_name(name: str) -> None:
    with pytest.raises(SchemaError, match="built-in"):
        Role.build(name, actions=["list"])


def test_unknown_actions_are_refused() -> None:
    with pytest.raises(SchemaError, match="unknown action"):
        Role.build("typo", actions=["raed"])


# -- library bugs: denials about a known customer that do not name its subject ---------


@pytest.mark.parametrize("method", ["put", "update"])
def test_field_denial_names_the_customer_subject(world: World, method: str) -> None:
    cid, tag = world.customer()
    rid = world.record(cid, STORED["allowed"])
    custom = world.sessions[CUSTOM]
    mark = world.head()
    with pytest.raises(AccessDeniedError):
        if method == "put":
            custom.put(cid, "profile", WRITTEN["restricted"], purpose="service")
        else:
            custom.update(cid, rid, UPDATED["restricted"], purpose="service")
    (entry,) = world.entries_after(mark)
    assert entry["detail"]["reason_code"] == "field_not_allowed"
    assert entry["subject"] == tag


def test_list_records_denial_names_the_customer_subject(world: World) -> None:
    cid, tag = world.customer()
    world.record(cid, STORED["allowed"])
    mark = world.head()
    with pytest.raises(AccessDeniedError):
        world.sessions["auditor"].list_records(cid, purpose="service")
    (entry,) = world.entries_after(mark)
    assert entry["subject"] == tag
