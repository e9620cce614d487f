"""Every public method of ``Session`` passes the one gate (issue 15): each method against
every shape of role, on one real vault.

For each (method, role shape) the test asserts, from a small statement of the policy
written here and independent of the library's ``Role``:

* an allowed call returns only what the role may see: no decrypted value of a field
  or kind it may not see appears anywhere in what comes back (its repr and its JSON);
* a refused call raises the typed error and leaves exactly one ``denied`` entry with
  the expected reason code, and changes nothing;
* every call leaves exactly the log entries the table lists for it, read straight
  from ``sv_log`` in ``data.db``.

A public method missing from the table fails :func:`test_every_public_session_method_is_classified`:
a new method must say what it needs before it ships.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import FLOOR, generate_keyfile
from shredvault.vault import (
    ACTIONS,
    AccessDeniedError,
    HandoverKey,
    Role,
    SchemaError,
    Session,
    StorageError,
    Vault,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
)

import logrows

# -- the schema and one customer's data ------------------------------------------------------

DECLARED = {
    "profile": frozenset({"service", "billing"}),
    "payment": frozenset({"billing"}),
    "note": frozenset({"support"}),
}
KIND_FIELDS = {"profile": ["name", "phone"], "payment": ["card_number"], "note": ["text"]}
DOSSIER = {
    "profile": {"name": "Ada Lovelace-g8", "phone": "+44 20 7946 0918"},
    "payment": {"card_number": "4111 2222 3333 4918"},
    "note": {"text": "prefers carrier pigeons g8"},
}
VALUES = {(kind, name): value for kind, rec in DOSSIER.items() for name, value in rec.items()}
HANDOVER = "business-transfer"
PASSWORD = b"handover key passphrase"

# -- the policy under test, stated independently ---------------------------------------------


@dataclass(frozen=True)
class Grant:
    """A role as this test expects it to act (None = no limit)."""

    role: str
    actions: frozenset[str]
    kinds: frozenset[str] | None = None
    fields: Mapping[str, frozenset[str]] | None = None
    purposes: frozenset[str] | None = None
    state: str | None = None  # the reason every call is refused: expiry, revocation


def grant(role: str, actions: set[str], **limits: Any) -> Grant:
    return Grant(role, frozenset(actions), **limits)


LIMITS: dict[str, Any] = {
    "kinds": frozenset({"profile", "note"}),
    "fields": {"profile": frozenset({"name"})},
    "purposes": frozenset({"service"}),
}
GRANTS = {
    "admin": grant("admin", set(ACTIONS)),
    "operator": grant("operator", {"read", "write", "delete", "list"}),
    "auditor": grant("auditor", {"list", "audit"}),
    # Custom roles: one limited in kinds, fields and purposes with each kind of action.
    "limited": grant("limited", {"read", "write", "delete", "list"}, **LIMITS),
    "lim_export": grant("lim_export", {"export", "list"}, **LIMITS),
    "lim_shred": grant("lim_shred", {"shred", "list"}, kinds=LIMITS["kinds"]),
    "lim_audit": grant("lim_audit", {"audit", "list"}, **LIMITS),
    # Shapes whose every call is refused, whatever the action.
    "role_expired": grant("temp", set(ACTIONS) - {"admin"}, state="role_expired"),
    "token_expired": grant("operator", {"read", "write", "delete", "list"}, state="token_expired"),
    "token_revoked": grant("operator", {"read", "write", "delete", "list"}, state="token_revoked"),
}
SHAPES = list(GRANTS)
CUSTOM_ROLES = {"limited", "lim_export", "lim_shred", "lim_audit"}


def access(
    shape: str, action: str, kind: str | None = None, purpose: str | None = None
) -> str | None:
    """The reason ``shape`` is refused ``action`` (on ``kind`` for ``purpose``), or None."""
    g = GRANTS[shape]
    if g.state is not None:
        return g.state
    if action not in g.actions:
        return "action_not_allowed"
    if kind is not None and g.kinds is not None and kind not in g.kinds:
        return "kind_not_allowed"
    if purpose is not None and g.purposes is not None and purpose not in g.purposes:
        return "purpose_not_allowed"
    if kind is not None and purpose is not None and purpose not in DECLARED[kind]:
        return "purpose_not_declared"
    return None


def covers(shape: str, kind: str) -> str | None:
    """Why ``kind`` is not ``shape``'s where nothing states a purpose (report, shred)."""
    g = GRANTS[shape]
    if g.kinds is not None and kind not in g.kinds:
        return "kind_not_allowed"
    if g.purposes is not None and not g.purposes & DECLARED[kind]:
        return "purpose_not_allowed"
    return None


def visible(shape: str, kind: str) -> set[str]:
    """The fields of ``kind`` a read by ``shape`` returns."""
    g = GRANTS[shape]
    limit = None if g.fields is None else g.fields.get(kind)
    return set(KIND_FIELDS[kind]) if limit is None else set(limit)


def may_see(shape: str) -> set[str]:
    """Every dossier value ``shape`` may ever get back (by a read or a report)."""
    g = GRANTS[shape]
    if g.state is not None or not g.actions & {"read", "export", "admin"}:
        return set()
    return {
        value
        for (kind, name), value in VALUES.items()
        if covers(shape, kind) is None and name in visible(shape, kind)
    }


# -- one vault for the module ------------------------------------------------------------------


class ShiftedClock:
    """Real time moved forward by ``shift``: the tests expire grants by moving it."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift


@dataclass
class Dossier:
    """A customer holding one record of each kind (``DOSSIER``)."""

    cid: str
    records: dict[str, str]  # kind -> record id


@dataclass
class World:
    root: Path
    keyfile: Path
    clock: ShiftedClock
    vault: Vault
    admin: Session  # the unlocking administrator: prepares, never under test
    sessions: dict[str, Session]
    shared: Dossier  # read, never changed
    receipt: dict[str, Any]  # of a shredded dossier
    handover_pub: bytes
    handover_key: HandoverKey
    seller: Vault
    seller_customer: str
    names: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.names)}"

    def dossier(self, **customer: Any) -> Dossier:
        cid = self.admin.add_customer(**customer)
        kinds = list(DOSSIER)
        rids = self.admin.put_many([(cid, k, DOSSIER[k]) for k in kinds[:2]], purpose="billing")
        rids.append(self.admin.put(cid, "note", DOSSIER["note"], purpose="support"))
        return Dossier(cid, dict(zip(kinds, rids, strict=True)))

    def state(self, cid: str) -> str:
        return str(logrows.scalar(self.data_db, "SELECT state FROM sv_customers WHERE id = ?", cid))

    def count(self, sql: str, *params: Any) -> int:
        return int(logrows.scalar(self.data_db, sql, *params))

    @property
    def data_db(self) -> Path:
        return self.root / "vault" / "data.db"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gate")
    keyfile = root / "vault.key"
    generate_keyfile(keyfile)
    clock = ShiftedClock()
    vault = Vault.create(root / "vault", keyfile=keyfile, clock=clock)
    for kind, names in KIND_FIELDS.items():
        search = {"phone": "digits"} if kind == "profile" else None  # for find
        vault.declare_kind(kind, fields=names, purposes=sorted(DECLARED[kind]), searchable=search)
    admin = vault.admin()
    soon = clock() + timedelta(hours=1)
    for shape in CUSTOM_ROLES:
        g = GRANTS[shape]
        admin.add_role(
            Role.build(
                g.role,
                actions=g.actions,
                kinds=g.kinds,
                fields=None
                if g.fields is None
                else [f"{k}.{f}" for k, names in g.fields.items() for f in names],
                purposes=g.purposes,
            )
        )
    admin.add_role(Role.build("temp", actions=GRANTS["role_expired"].actions, expires=soon))
    sessions = {}
    for shape, g in GRANTS.items():
        expires = soon if shape == "token_expired" else None
        token = admin.add_principal(f"p-{shape}", role=g.role, expires=expires)
        sessions[shape] = vault.login(token)
    admin.revoke_principal("p-token_revoked")
    clock.shift = timedelta(hours=2)  # the role "temp" and p-token_expired's token expire

    pub, key_file, _fp = handover_keygen(root / "acquirer", PASSWORD, params=FLOOR)
    seller_key = root / "seller.key"
    generate_keyfile(seller_key)
    seller = Vault.create(root / "seller", keyfile=seller_key)
    seller.declare_kind("profile", fields=KIND_FIELDS["profile"], purposes=["service"])
    seller_admin = seller.admin()
    seller_customer = seller_admin.add_customer(consent={"transfer": True})
    seller_admin.put(seller_customer, "profile", {"name": "Seller's customer"}, purpose="service")

    w = World(
        root,
        keyfile,
        clock,
        vault,
        admin,
        sessions,
        Dossier("", {}),
        {},
        read_handover_public_key(pub),
        open_handover_key(key_file, PASSWORD),
        seller,
        seller_customer,
    )
    w.shared = w.dossier()
    w.receipt = admin.shred(w.dossier().cid, reason="contract ended").to_json()
    yield w
    seller.close()
    vault.close()


# -- the table ---------------------------------------------------------------------------------

Entry = tuple[str, str, str | None]  # (action, outcome, reason code)
Given = dict[str, Any]


def ok(*actions: str) -> list[Entry]:
    return [(action, "ok", None) for action in actions]


@dataclass(frozen=True)
class Case:
    """How to call one method and what the gate should make of it.

    ``refusal(shape, given)``: the expected reason code, or None when allowed.
    ``entries(shape, given, result)``: the entries an allowed call leaves.
    ``check(world, shape, given, result, refused)``: what else must hold (state
    changed or untouched, positive content of the result)."""

    log: str
    call: Callable[[Session, Given], Any]
    refusal: Callable[[str, Given], str | None]
    prepare: Callable[[World, str], Given] = lambda world, shape: {}
    entries: Callable[[str, Given, Any], list[Entry]] | None = None
    check: Callable[[World, str, Given, Any, bool], None] | None = None

    def expected_entries(self, shape: str, given: Given, result: Any) -> list[Entry]:
        if self.entries is None:
            return ok(self.log)
        return self.entries(shape, given, result)


def needs(action: str) -> Callable[[str, Given], str | None]:
    return lambda shape, given: access(shape, action)


CASES: dict[str, Case] = {}


def case(name: str, log: str, **kw: Any) -> None:
    CASES[name] = Case(log, **kw)


# schema and checkpoints


def _declared_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    stored = world.count("SELECT COUNT(*) FROM sv_kinds WHERE name = ?", given["kind"])
    assert stored == (0 if refused else 1)


case(
    "declare_kind",
    "schema.declare",
    prepare=lambda w, shape: {"kind": w.unique("kind").replace("-", "_")},
    call=lambda s, g: s.declare_kind(g["kind"], fields=["a"], purposes=["service"]),
    refusal=needs("admin"),
    check=_declared_check,
)


def _kind_to_alter(w: World, shape: str) -> Given:
    kind = w.unique("kind").replace("-", "_")
    w.admin.declare_kind(kind, fields=["a"], purposes=["service"])
    return {"kind": kind}


def _altered_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT spec FROM sv_kinds WHERE name = ?"
    assert ('"b"' in str(logrows.scalar(world.data_db, sql, given["kind"]))) is not refused


case(
    "alter_kind",
    "schema.alter",
    prepare=_kind_to_alter,
    call=lambda s, g: s.alter_kind(g["kind"], add_fields=["b"]),
    refusal=needs("admin"),
    check=_altered_check,
)
case("kinds", "schema.list", call=lambda s, g: s.kinds(), refusal=needs("list"))
case("checkpoint", "audit.checkpoint", call=lambda s, g: s.checkpoint(), refusal=needs("audit"))
case("check_store", "store.check", call=lambda s, g: s.check_store(), refusal=needs("audit"))

# customers


def _customers_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    assert world.count("SELECT COUNT(*) FROM sv_customers") == given["before"] + (not refused)


case(
    "add_customer",
    "customer.add",
    prepare=lambda w, shape: {"before": w.count("SELECT COUNT(*) FROM sv_customers")},
    call=lambda s, g: s.add_customer(ref="gate"),
    refusal=needs("write"),
    check=_customers_check,
)


def _two_customers_check(
    world: World, shape: str, given: Given, result: Any, refused: bool
) -> None:
    assert world.count("SELECT COUNT(*) FROM sv_customers") == given["before"] + 2 * (not refused)


case(
    "add_customers",
    "customer.add",
    prepare=lambda w, shape: {"before": w.count("SELECT COUNT(*) FROM sv_customers")},
    call=lambda s, g: s.add_customers([{"ref": "gate"}, {}]),
    refusal=needs("write"),
    entries=lambda shape, given, result: ok("customer.add", "customer.add"),
    check=_two_customers_check,
)
case(
    "customer",
    "customer.show",
    prepare=lambda w, shape: {"cid": w.shared.cid},
    call=lambda s, g: s.customer(g["cid"]),
    refusal=needs("list"),
)
case("list_customers", "customer.list", call=lambda s, g: s.list_customers(), refusal=needs("list"))
case(
    "customer_by_ref",
    "customer.show",
    prepare=lambda w, shape: {"ref": w.admin.customer(w.admin.add_customer(ref=w.unique("r"))).ref},
    call=lambda s, g: s.customer_by_ref(g["ref"]),
    refusal=needs("list"),
)
# Off: the shared vault's customers share refs ("gate"), so turning it on is refused.
case(
    "set_unique_refs",
    "customer.refs",
    call=lambda s, g: s.set_unique_refs(False),
    refusal=needs("admin"),
)


def _fresh_customer(w: World, shape: str) -> Given:
    return {"cid": w.admin.add_customer()}


def _held_customer(w: World, shape: str) -> Given:
    cid = w.admin.add_customer()
    w.admin.hold(cid)
    return {"cid": cid}


def _hold_check(held: bool) -> Callable[[World, str, Given, Any, bool], None]:
    def check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
        sql = "SELECT legal_hold FROM sv_customers WHERE id = ?"
        assert bool(world.count(sql, given["cid"])) is (held != refused)

    return check


case(
    "hold",
    "customer.hold",
    prepare=_fresh_customer,
    call=lambda s, g: s.hold(g["cid"]),
    refusal=needs("admin"),
    check=_hold_check(True),
)
case(
    "release",
    "customer.release",
    prepare=_held_customer,
    call=lambda s, g: s.release(g["cid"]),
    refusal=needs("admin"),
    check=_hold_check(False),
)
case(
    "set_retention",
    "customer.retain",
    prepare=_fresh_customer,
    call=lambda s, g: s.set_retention(g["cid"], "2099-01-01T00:00:00Z"),
    refusal=needs("admin"),
)

# erasure


def shred_refusal(shape: str, given: Given) -> str | None:
    """Shredding destroys everything: every kind the customer holds must be covered."""
    return access(shape, "shred") or next(
        (r for r in (covers(shape, k) for k in sorted(DOSSIER)) if r is not None), None
    )


def _dossier(w: World, shape: str) -> Given:
    d = w.dossier()
    return {"cid": d.cid, "records": d.records}


def _shred_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    assert world.state(given["cid"]) == ("active" if refused else "shredded")
    if refused:  # nothing changed: every record still readable by the administrator
        got = world.admin.get_many([(given["cid"], given["records"]["profile"])], purpose="service")
        assert dict(got[0].fields) == DOSSIER["profile"]
    else:
        assert result.customer == given["cid"]


case(
    "shred",
    "customer.shred",
    prepare=_dossier,
    call=lambda s, g: s.shred(g["cid"], reason="contract ended"),
    refusal=shred_refusal,
    entries=lambda shape, g, r: ok("customer.shred-intent", "customer.shred"),
    check=_shred_check,
)


def _expired_dossier(w: World, shape: str) -> Given:
    d = w.dossier(retain_until=w.clock() - timedelta(days=1))
    return {"cid": d.cid, "due": list(w.admin.expired_customers().due)}


def _shred_expired_entries(shape: str, given: Given, result: Any) -> list[Entry]:
    """Per customer due: shredded, or (every one being a dossier) one denial each."""
    reason = shred_refusal(shape, given)
    each = ok("customer.shred-intent", "customer.shred")
    return [
        e
        for _cid in given["due"]
        for e in (each if reason is None else [("customer.shred", "denied", reason)])
    ]


def _shred_expired_check(
    world: World, shape: str, given: Given, result: Any, refused: bool
) -> None:
    if refused:
        assert world.state(given["cid"]) == "active"
    elif shred_refusal(shape, given) is None:
        assert [r.customer for r in result.receipts] == given["due"]
        assert world.state(given["cid"]) == "shredded"
    else:
        assert result.receipts == [] and sorted(result.failed) == sorted(given["due"])
        assert world.state(given["cid"]) == "active"


case(
    "shred_expired",
    "customer.shred",
    prepare=_expired_dossier,
    call=lambda s, g: s.shred_expired(),
    refusal=needs("shred"),
    entries=_shred_expired_entries,
    check=_shred_expired_check,
)
case(
    "expired_customers",
    "customer.list",
    call=lambda s, g: s.expired_customers(),
    refusal=needs("shred"),
)
case("compact", "vault.compact", call=lambda s, g: s.compact(), refusal=needs("admin"))


def _scratch_vault(w: World, shape: str) -> Given:
    """Decommissioning destroys its vault: an allowed one runs on a vault of its own."""
    if access(shape, "admin") is not None:
        return {}
    scratch = Vault.create(w.root / w.unique("scratch"), keyfile=w.keyfile)
    token = scratch.admin().add_principal(f"p-{shape}", role=GRANTS[shape].role)
    return {"vault": scratch, "session": scratch.login(token)}


case(
    "decommission",
    "vault.decommission",
    prepare=_scratch_vault,
    call=lambda s, g: g.get("session", s).decommission(reason="closing the business"),
    refusal=needs("admin"),
    entries=lambda shape, g, r: ok(
        "vault.decommission-intent", "vault.compact", "vault.decommission"
    ),
)

# keys


def _rotated_away(w: World, shape: str) -> Given:
    """An epoch no DEK uses: the one active before a fresh rotation."""
    if access(shape, "admin") is not None:
        return {"epoch": 1}
    return {"epoch": int(w.admin.rotate_kek()["epoch"]) - 1}


def _rotate_kek_entries(shape: str, given: Given, result: Any) -> list[Entry]:
    batches = -(-int(result["rewrapped"]) // 500)  # vault/rotate.py re-wraps 500 per batch
    return ok("keys.rotate-kek.start", *["keys.rotate-kek.batch"] * batches, "keys.rotate-kek.done")


def _rotated_some(result: list[str]) -> None:
    assert result, "the aged keys were due"


def _aged_keys(w: World, shape: str) -> Given:
    if access(shape, "admin") is None:
        w.clock.shift += timedelta(days=2)  # every DEK made so far is now 2 days old
    return {}


case(
    "rotate_kek",
    "keys.rotate-kek",
    call=lambda s, g: s.rotate_kek(),
    refusal=needs("admin"),
    entries=_rotate_kek_entries,
)
case(
    "retire_epoch",
    "keys.retire-epoch",
    prepare=_rotated_away,
    call=lambda s, g: s.retire_epoch(g["epoch"]),
    refusal=needs("admin"),
)
case(
    "rotate_dek",
    "keys.rotate-dek",
    prepare=_dossier,
    call=lambda s, g: s.rotate_dek(g["cid"]),
    refusal=needs("admin"),
)
case(
    "rotate_deks",
    "keys.rotate-dek",
    prepare=_aged_keys,
    call=lambda s, g: s.rotate_deks(older_than_days=1),
    refusal=needs("admin"),
    # One entry per customer rotated (a run with none due logs nothing: see the report).
    entries=lambda shape, g, result: ok(*["keys.rotate-dek"] * len(result)),
    check=lambda w, shape, g, result, refused: refused or _rotated_some(result),
)


def _new_keyfile(w: World, shape: str) -> Given:
    path = w.root / w.unique("new-key")
    generate_keyfile(path)
    return {"keyfile": str(path)}


def _rekeyed(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    if not refused:
        world.keyfile = Path(given["keyfile"])  # what unlocks the vault (and its backups) now


case(
    "change_passphrase",
    "keys.change-passphrase",
    prepare=_new_keyfile,
    call=lambda s, g: s.change_passphrase(keyfile=g["keyfile"]),
    refusal=needs("admin"),
    check=_rekeyed,
)
case("key_status", "keys.status", call=lambda s, g: s.key_status(), refusal=needs("audit"))

# reports


def _report_entries(shape: str, given: Given, result: Any) -> list[Entry]:
    shown = [k for k in DOSSIER if covers(shape, k) is None]
    summary = ok("customer.report") if len(shown) < len(DOSSIER) or not shown else []
    return ok(*["customer.report"] * len(shown)) + summary


def _report_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    if refused:
        return
    expected = [
        (k, {n: v for n, v in DOSSIER[k].items() if n in visible(shape, k)})
        for k in DOSSIER
        if covers(shape, k) is None
    ]
    # Records made in one put_many share a creation time: their order is not defined.
    assert sorted((r["kind"], r["fields"]) for r in result["records"]) == sorted(expected)
    reasons: dict[str, int] = {}
    for k in DOSSIER:
        why = covers(shape, k)
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    partial = sum(1 for k, fs in expected if set(fs) != set(DOSSIER[k]))
    assert result["withheld"] == {
        "records": sum(reasons.values()),
        "reasons": reasons,
        "records_with_fields_withheld": partial,
    }


case(
    "customer_report",
    "customer.report",
    prepare=lambda w, shape: {"cid": w.shared.cid},
    call=lambda s, g: s.customer_report(g["cid"]),
    refusal=needs("export"),
    entries=_report_entries,
    check=_report_check,
)
case(
    "customer_report_from_receipt",
    "customer.report",
    prepare=lambda w, shape: {"receipt": w.receipt},
    call=lambda s, g: s.customer_report_from_receipt(g["receipt"]),
    refusal=needs("export"),
)
case(
    "audit_query",
    "audit.query",
    call=lambda s, g: s.audit_query(actor="admin"),
    refusal=needs("audit"),
)
case(
    "audit_report",
    "audit.report",
    call=lambda s, g: s.audit_report(),
    refusal=needs("audit"),
    entries=lambda shape, g, r: ok("keys.status", "backup.list", "audit.report"),
)

# backups


def backup_refusal(shape: str, given: Given) -> str | None:
    """A backup copies every kind and field: any limit refuses it."""
    g = GRANTS[shape]
    limits = [
        (g.kinds, "kind_not_allowed"),
        (g.fields, "field_not_allowed"),
        (g.purposes, "purpose_not_allowed"),
    ]
    return access(shape, "export") or next((r for lim, r in limits if lim is not None), None)


def _archive_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    assert Path(given["out"]).exists() is not refused


case(
    "backup",
    "backup.create",
    prepare=lambda w, shape: {"out": str(w.root / w.unique("backup"))},
    call=lambda s, g: s.backup(g["out"]),
    refusal=backup_refusal,
    check=_archive_check,
)
case("backups", "backup.list", call=lambda s, g: s.backups(), refusal=needs("audit"))


def _backed_up(w: World, shape: str) -> Given:
    manifest = w.admin.backup(str(w.root / w.unique("to-forget")))
    return {"id": manifest["backup"]}


def _forgotten_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    stored = world.count(
        "SELECT COUNT(*) FROM sv_backup_state WHERE id = ? AND forgotten IS NOT NULL", given["id"]
    )
    assert stored == (0 if refused else 1)


case(
    "forget_backup",
    "backup.forget",
    prepare=_backed_up,
    call=lambda s, g: s.forget_backup(g["id"]),
    refusal=needs("admin"),
    check=_forgotten_check,
)

# the routine: restore drills and access reviews (issue 23, items 4 and 5)


def _drill_archive(w: World, shape: str) -> Given:
    out = w.root / w.unique("drilled")
    w.admin.backup(str(out))
    return {"archive": out, "keyfile": w.keyfile}


def _drill_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    assert [p for p in world.root.iterdir() if ".drill-" in p.name] == []  # no copy left
    assert refused or (result.ok and result.copy_removed)


case(
    "restore_drill",
    "backup.drill",
    prepare=_drill_archive,
    call=lambda s, g: s.restore_drill(g["archive"], keyfile=g["keyfile"], sample=1),
    refusal=needs("admin"),
    check=_drill_check,
)
case(
    "set_drill_interval",
    "policy.set",
    call=lambda s, g: s.set_drill_interval(90),
    refusal=needs("admin"),
)
case("role_review", "role.review-list", call=lambda s, g: s.role_review(), refusal=needs("audit"))
case("review_done", "role.review", call=lambda s, g: s.review_done(), refusal=needs("admin"))
case(
    "set_review_interval",
    "policy.set",
    call=lambda s, g: s.set_review_interval(90),
    refusal=needs("admin"),
)

# handover


def handover_refusal(shape: str, given: Given) -> str | None:
    """Whole records of every kind exported, for the handover's own purpose."""
    g = GRANTS[shape]
    if (reason := access(shape, "export", purpose=HANDOVER)) is not None:
        return reason
    if (reason := access(shape, "export", kind="profile")) is not None:
        return reason
    return "field_not_allowed" if g.fields is not None and "profile" in g.fields else None


def _consenting(w: World, shape: str) -> Given:
    cid = w.admin.add_customer(consent={"transfer": True})
    w.admin.put(cid, "profile", DOSSIER["profile"], purpose="service")
    return {"cid": cid, "out": str(w.root / w.unique("package")), "pub": w.handover_pub}


def _exported(w: World, shape: str) -> Given:
    given = _consenting(w, shape)
    w.admin.handover_export(w.handover_pub, given["out"], customers=[given["cid"]])
    return given


def _from_seller(w: World, shape: str) -> Given:
    out = str(w.root / w.unique("bought"))
    w.seller.admin().handover_export(w.handover_pub, out, customers=[w.seller_customer])
    return {"out": out, "key": w.handover_key, "seller": w.seller.public_key}


case(
    "handover_export",
    "handover.export",
    prepare=_consenting,
    call=lambda s, g: s.handover_export(g["pub"], g["out"], customers=[g["cid"]]),
    refusal=handover_refusal,
    entries=lambda shape, g, r: ok("customer.handover", "handover.export"),
    check=_archive_check,
)
case(
    "handover_import",
    "handover.import",
    prepare=_from_seller,
    call=lambda s, g: s.handover_import(g["out"], g["key"], seller_public_key=g["seller"]),
    refusal=needs("admin"),
    entries=lambda shape, g, r: ok("customer.import", "record.put", "handover.import"),
)
case(
    "handover_complete",
    "handover.complete",
    prepare=_exported,
    call=lambda s, g: s.handover_complete(g["out"]),
    refusal=needs("admin"),
    entries=lambda shape, g, r: ok("customer.shred-intent", "customer.shred", "handover.complete"),
)

# the privacy routine: requests, consent, notices (docs/requests.md)


def _opened_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT COUNT(*) FROM sv_requests WHERE customer_id = ?"
    assert world.count(sql, given["cid"]) == (0 if refused else 1)


def _notices_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    written = sorted(p.name for p in given["out"].iterdir())
    assert written == ([] if refused else sorted(Path(f).name for f in result.files))
    assert refused or written


def _open_request(w: World, shape: str) -> Given:
    cid = w.admin.add_customer()
    return {"cid": cid, "rid": w.admin.open_request(cid, type="complaint", channel="phone").id}


def _closed_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT state FROM sv_requests WHERE id = ?"
    assert logrows.scalar(world.data_db, sql, given["rid"]) == ("open" if refused else "closed")


def _consent_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT COUNT(*) FROM sv_consent_history WHERE customer_id = ?"
    assert world.count(sql, given["cid"]) == (0 if refused else 2)


def _notice_for(w: World, shape: str) -> Given:
    cid = w.admin.add_customer(consent={"transfer": True})
    out = w.root / w.unique("notices")
    out.mkdir()
    batch = w.admin.prepare_notices(
        reason="transfer", effective="2099-01-01", recipients=["Acme Ltd"], out_dir=out
    )
    (nid,) = [n.id for n in batch.notices if n.customer == cid]
    return {"cid": cid, "nid": nid}


def _marked_check(column: str) -> Callable[[World, str, Given, Any, bool], None]:
    def check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
        sql = f"SELECT COUNT(*) FROM sv_notices WHERE id = ? AND {column} IS NOT NULL"
        assert world.count(sql, given["nid"]) == (0 if refused else 1)

    return check


def _notice_dir(w: World, shape: str) -> Given:
    out = w.root / w.unique("notices")
    out.mkdir()
    return {"out": out}


case(
    "open_request",
    "request.open",
    prepare=_fresh_customer,
    call=lambda s, g: s.open_request(g["cid"], type="access", channel="email", note="see file"),
    refusal=needs("write"),
    check=_opened_check,
)
case("list_requests", "request.list", call=lambda s, g: s.list_requests(), refusal=needs("list"))
case(
    "close_request",
    "request.close",
    prepare=_open_request,
    call=lambda s, g: s.close_request(g["rid"], outcome="refused", reason="not verified"),
    refusal=needs("write"),
    check=_closed_check,
)
case("request_policy", "request.list", call=lambda s, g: s.request_policy(), refusal=needs("list"))
case(
    "set_request_policy",
    "request.policy",
    call=lambda s, g: s.set_request_policy("complaint", 30),
    refusal=needs("admin"),
)
case(
    "set_consent",
    "customer.consent",
    prepare=_fresh_customer,
    call=lambda s, g: s.set_consent(g["cid"], {"transfer": True}, channel="web"),
    refusal=needs("write"),
    check=_consent_check,
)
case(
    "prepare_notices",
    "notice.prepare",
    prepare=_notice_dir,
    call=lambda s, g: s.prepare_notices(
        reason="new-purpose",
        purpose="research",
        effective="2099-01-01",
        recipients=["Acme Ltd"],
        out_dir=g["out"],
    ),
    refusal=needs("write"),
    check=_notices_check,
)
case(
    "notice_delivered",
    "notice.deliver",
    prepare=_notice_for,
    call=lambda s, g: s.notice_delivered(g["cid"], g["nid"], channel="email"),
    refusal=needs("write"),
    check=_marked_check("delivered"),
)
case(
    "notice_objected",
    "notice.object",
    prepare=_notice_for,
    call=lambda s, g: s.notice_objected(g["cid"], g["nid"], channel="phone"),
    refusal=needs("write"),
    check=_marked_check("objected"),
)

# principals and roles


def _principal(w: World, shape: str) -> Given:
    name = w.unique("victim")
    w.admin.add_principal(name, role="operator")
    return {"name": name}


def _principal_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT COUNT(*) FROM sv_principals WHERE name = ?"
    assert world.count(sql, given["name"]) == (0 if refused else 1)


def _revoked_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT revoked FROM sv_principals WHERE name = ?"
    assert bool(world.count(sql, given["name"])) is not refused


case(
    "add_principal",
    "principal.add",
    prepare=lambda w, shape: {"name": w.unique("new")},
    call=lambda s, g: s.add_principal(g["name"], role="operator"),
    refusal=needs("admin"),
    check=_principal_check,
)
case(
    "revoke_principal",
    "principal.revoke",
    prepare=_principal,
    call=lambda s, g: s.revoke_principal(g["name"]),
    refusal=needs("admin"),
    check=_revoked_check,
)
case(
    "list_principals",
    "principal.list",
    call=lambda s, g: s.list_principals(),
    refusal=needs("admin"),
)
case(
    "add_role",
    "role.add",
    prepare=lambda w, shape: {"role": Role.build(w.unique("role"), actions=["list"])},
    call=lambda s, g: s.add_role(g["role"]),
    refusal=needs("admin"),
)
case("list_roles", "role.list", call=lambda s, g: s.list_roles(), refusal=needs("admin"))

# records


def _records_check(count: int) -> Callable[[World, str, Given, Any, bool], None]:
    def check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
        stored = world.count("SELECT COUNT(*) FROM sv_records WHERE customer_id = ?", given["cid"])
        assert stored == (0 if refused else count)

    return check


def put_refusal(shape: str, given: Given) -> str | None:
    reason = access(shape, "write", "profile", "service")
    if reason is None and not set(given["fields"]) <= visible(shape, "profile"):
        return "field_not_allowed"
    return reason


case(
    "put",
    "record.put",
    prepare=lambda w, shape: {"cid": w.admin.add_customer(), "fields": DOSSIER["profile"]},
    call=lambda s, g: s.put(g["cid"], "profile", g["fields"], purpose="service"),
    refusal=put_refusal,
    check=_records_check(1),
)
NAME_ONLY = {"name": DOSSIER["profile"]["name"]}
case(
    "put_many",
    "record.put",
    prepare=lambda w, shape: {"cid": w.admin.add_customer(), "fields": NAME_ONLY},
    call=lambda s, g: s.put_many([(g["cid"], "profile", g["fields"])] * 2, purpose="service"),
    refusal=put_refusal,
    entries=lambda shape, g, r: ok("record.put", "record.put"),
    check=_records_check(2),
)


def _update_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    rid = given["records"]["profile"]
    version = world.count("SELECT version FROM sv_records WHERE id = ?", rid)
    assert version == (1 if refused else 2)
    if not refused:
        assert dict(result.fields) == {
            k: v for k, v in DOSSIER["profile"].items() if k in visible(shape, "profile")
        }


case(
    "update",
    "record.update",
    prepare=_dossier,
    call=lambda s, g: s.update(g["cid"], g["records"]["profile"], NAME_ONLY, purpose="service"),
    refusal=lambda shape, g: access(shape, "write", "profile", "service"),
    check=_update_check,
)


def _delete_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    sql = "SELECT COUNT(*) FROM sv_records WHERE id = ?"
    assert world.count(sql, given["records"]["payment"]) == (1 if refused else 0)


case(
    "delete",
    "record.delete",
    prepare=_dossier,
    call=lambda s, g: s.delete(g["cid"], g["records"]["payment"], purpose="billing"),
    refusal=lambda shape, g: access(shape, "delete", "payment", "billing"),
    check=_delete_check,
)


def _shared(w: World, shape: str) -> Given:
    return {"cid": w.shared.cid, "records": w.shared.records}


def _read_check(kind: str) -> Callable[[World, str, Given, Any, bool], None]:
    def check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
        if not refused:
            records = result if isinstance(result, list) else [result]
            assert [dict(r.fields) for r in records] == [
                {k: v for k, v in DOSSIER[kind].items() if k in visible(shape, kind)}
            ]

    return check


case(
    "get",
    "record.get",
    prepare=_shared,
    call=lambda s, g: s.get(g["cid"], g["records"]["payment"], purpose="billing"),
    refusal=lambda shape, g: access(shape, "read", "payment", "billing"),
    check=_read_check("payment"),
)
case(
    "get_many",
    "record.get",
    prepare=_shared,
    call=lambda s, g: s.get_many([(g["cid"], g["records"]["profile"])], purpose="service"),
    refusal=lambda shape, g: access(shape, "read", "profile", "service"),
    check=_read_check("profile"),
)
case(
    "list_records",
    "record.list",
    prepare=_shared,
    # Of the dossier only the profile record may be used for service.
    call=lambda s, g: s.list_records(g["cid"], purpose="service"),
    refusal=lambda shape, g: access(shape, "read", purpose="service"),
    check=_read_check("profile"),
)


def _find_refusal(shape: str, given: Given) -> str | None:
    reason = access(shape, "read", "profile", "service")
    if reason is None and "phone" not in visible(shape, "profile"):
        return "field_not_allowed"  # a role may search only a field it may see
    return reason


def _found_check(world: World, shape: str, given: Given, result: Any, refused: bool) -> None:
    if not refused:
        assert given["records"]["profile"] in [r.id for r in result]
        shown = {k: v for k, v in DOSSIER["profile"].items() if k in visible(shape, "profile")}
        assert all(dict(r.fields) == shown for r in result)


case(
    "find",
    "record.find",
    prepare=_shared,
    call=lambda s, g: s.find("profile", "phone", DOSSIER["profile"]["phone"], purpose="service"),
    refusal=_find_refusal,
    entries=lambda shape, g, result: ok(*["record.find"] * max(1, len(result))),
    check=_found_check,
)


# -- the matrix --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as JSON-able data, with everything it holds (records' fields included)."""
    if hasattr(value, "to_json"):
        return plain(value.to_json())
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def rendered(value: Any) -> str:
    """Every way a caller could look at ``value``: its repr and its JSON."""
    as_json = json.dumps(plain(value), ensure_ascii=False, sort_keys=True, default=repr)
    return f"{value!r}\n{as_json}"


def assert_nothing_unseen(shape: str, value: Any) -> None:
    text = rendered(value)
    leaked = sorted(v for v in VALUES.values() if v in text and v not in may_see(shape))
    assert leaked == [], f"{shape} got values it may not see"


def test_every_public_session_method_is_classified() -> None:
    public = {
        name
        for name, member in inspect.getmembers(Session)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }
    assert sorted(public - set(CASES)) == [], "classify these in CASES"
    assert sorted(set(CASES) - public) == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", sorted(CASES))
def test_every_call_passes_the_gate(world: World, method: str, shape: str) -> None:
    spec = CASES[method]
    given = spec.prepare(world, shape)
    vault = given.get("vault", world.vault)
    data_db = vault.path / "data.db"
    reason = spec.refusal(shape, given)
    mark = vault.head.seq
    result: Any = None
    try:
        if reason is None:
            result = spec.call(world.sessions[shape], given)
            expected = spec.expected_entries(shape, given, result)
        else:
            with pytest.raises(AccessDeniedError) as refused:
                spec.call(world.sessions[shape], given)
            assert not isinstance(refused.value, SchemaError)  # a refusal, not bad input
            assert_nothing_unseen(shape, str(refused.value))
            expected = [(spec.log, "denied", reason)]
        got = logrows.entries_after(data_db, mark)
    finally:
        if "vault" in given:
            given["vault"].close()
    assert [(e["action"], e["outcome"], e["detail"].get("reason_code")) for e in got] == expected
    for entry in got:
        assert (entry["actor"], entry["role"]) == (f"p-{shape}", GRANTS[shape].role)
        assert_nothing_unseen("auditor", entry)  # the log never holds a value
    assert_nothing_unseen(shape, result)
    if spec.check is not None:
        spec.check(world, shape, given, result, reason is not None)


# -- the rules the matrix rests on, one by one -------------------------------------------------


def login_with_role(world: World, role: Role) -> Session:
    world.admin.add_role(role)
    return world.vault.login(world.admin.add_principal(world.unique("p"), role=role.name))


def test_a_kind_limited_role_shreds_a_customer_all_of_whose_kinds_it_covers(world: World) -> None:
    cid = world.admin.add_customer()
    world.admin.put(cid, "profile", DOSSIER["profile"], purpose="service")
    world.admin.put(cid, "note", DOSSIER["note"], purpose="support")
    mark = world.vault.head.seq
    receipt = world.sessions["lim_shred"].shred(cid, reason="contract ended")
    assert receipt.customer == cid
    got = logrows.entries_after(world.data_db, mark)
    assert [(e["action"], e["outcome"], e["detail"].get("reason_code")) for e in got] == ok(
        "customer.shred-intent", "customer.shred"
    )


def test_a_refused_shred_names_the_kind_and_the_customers_subject(world: World) -> None:
    d = world.dossier()
    subject = world.admin.customer_report(d.cid)["subject_tag"]
    mark = world.vault.head.seq
    with pytest.raises(AccessDeniedError, match="kind payment"):
        world.sessions["lim_shred"].shred(d.cid, reason="contract ended")
    (entry,) = logrows.entries_after(world.data_db, mark)
    assert entry["subject"] == subject
    assert entry["detail"] == {"kind": "payment", "reason_code": "kind_not_allowed"}


def test_a_purpose_limited_role_may_not_shred_a_kind_declared_for_other_purposes(
    world: World,
) -> None:
    session = login_with_role(
        world, Role.build(world.unique("erasure-desk"), actions=["shred"], purposes=["service"])
    )
    cid = world.admin.add_customer()
    world.admin.put(cid, "note", DOSSIER["note"], purpose="support")
    mark = world.vault.head.seq
    with pytest.raises(AccessDeniedError):
        session.shred(cid, reason="contract ended")
    (entry,) = logrows.entries_after(world.data_db, mark)
    assert entry["detail"] == {"kind": "note", "reason_code": "purpose_not_allowed"}
    assert world.state(cid) == "active"


def test_a_customer_without_records_may_be_shredded_by_any_shred_role(world: World) -> None:
    cid = world.admin.add_customer()
    assert world.sessions["lim_shred"].shred(cid, reason="contract ended").customer == cid


def test_a_limited_report_logs_what_it_withheld(world: World) -> None:
    mark = world.vault.head.seq
    world.sessions["lim_export"].customer_report(world.shared.cid)
    got = logrows.entries_after(world.data_db, mark)
    assert [e["record"] for e in got] == [world.shared.records["profile"], None]
    assert got[0]["detail"] == {"kind": "profile", "fields": ["name"]}
    assert got[1]["detail"] == {
        "records": 1,
        "withheld": {"kind_not_allowed": 1, "purpose_not_allowed": 1},
    }


def test_a_limited_report_in_markdown_says_it_is_incomplete(world: World) -> None:
    from shredvault.vault import render_markdown

    text = render_markdown(world.sessions["lim_export"].customer_report(world.shared.cid))
    assert "This report is incomplete" in text
    assert "kind_not_allowed: 1" in text and "purpose_not_allowed: 1" in text
    assert_nothing_unseen("lim_export", text)
    assert DOSSIER["profile"]["name"] in text


def test_a_full_report_does_not_say_it_is_incomplete(world: World) -> None:
    from shredvault.vault import render_markdown

    text = render_markdown(world.sessions["admin"].customer_report(world.shared.cid))
    assert "incomplete" not in text
    assert all(value in text for value in VALUES.values())


@pytest.mark.parametrize(
    ("limit", "reason"),
    [
        ({"kinds": ["profile", "payment", "note"]}, "kind_not_allowed"),
        ({"fields": ["payment.card_number"]}, "field_not_allowed"),
        ({"purposes": ["service", "billing", "support"]}, "purpose_not_allowed"),
    ],
)
def test_any_limit_refuses_a_backup_even_one_naming_everything_declared(
    world: World, limit: dict[str, list[str]], reason: str
) -> None:
    session = login_with_role(
        world, Role.build(world.unique("backup-role"), actions=["export"], **limit)
    )
    out = world.root / world.unique("refused-backup")
    mark = world.vault.head.seq
    with pytest.raises(AccessDeniedError):
        session.backup(str(out))
    (entry,) = logrows.entries_after(world.data_db, mark)
    assert (entry["action"], entry["detail"]["reason_code"]) == ("backup.create", reason)
    assert not out.exists()


def test_an_export_role_limited_to_the_handover_purpose_may_hand_over(world: World) -> None:
    session = login_with_role(
        world, Role.build(world.unique("transfer"), actions=["export"], purposes=[HANDOVER])
    )
    given = _consenting(world, "admin")
    done = session.handover_export(given["pub"], given["out"], customers=[given["cid"]])
    assert (done.customers, done.records) == (1, 1)


@pytest.mark.parametrize("token", ["", "   ", "svp_", "not a token"])
def test_login_with_an_empty_or_malformed_token_is_a_logged_denial(
    world: World, token: str
) -> None:
    mark = world.vault.head.seq
    with pytest.raises(AccessDeniedError):
        world.vault.login(token)
    (entry,) = logrows.entries_after(world.data_db, mark)
    assert (entry["action"], entry["outcome"], entry["actor"], entry["role"]) == (
        "auth.login",
        "denied",
        "unknown",
        "none",
    )
    assert entry["detail"] == {"reason_code": "unknown_token"}


def test_a_role_narrowed_during_a_handover_export_exports_nothing(world: World) -> None:
    name = world.unique("mover")
    session = login_with_role(world, Role.build(name, actions=["export"]))
    given = _consenting(world, "admin")

    def narrow(_n: int) -> None:  # while the package is being written
        world.admin.add_role(Role.build(name, actions=["export"], kinds=["note"]), replace=True)

    mark = world.vault.head.seq
    with pytest.raises(AccessDeniedError):
        session.handover_export(
            given["pub"], given["out"], customers=[given["cid"]], progress=narrow
        )
    got = logrows.entries_after(world.data_db, mark)
    assert [(e["action"], e["outcome"]) for e in got] == [
        ("role.add", "ok"),
        ("handover.export", "denied"),
    ]
    assert got[1]["detail"] == {"kind": "profile", "reason_code": "kind_not_allowed"}
    assert not Path(given["out"]).exists()


def test_a_record_of_a_kind_added_during_a_handover_export_stops_it(world: World) -> None:
    """Kinds are gated before reading; a kind that appears later was never gated."""
    cids = [world.admin.add_customer(consent={"transfer": True}) for _ in range(101)]
    world.admin.put_many([(c, "profile", DOSSIER["profile"]) for c in cids], purpose="service")
    out = world.root / world.unique("package")
    added: list[str] = []

    def add_payment(_n: int) -> None:  # the first batch of 100 is written, not the 101st
        if not added:
            added.append(
                world.admin.put(cids[-1], "payment", DOSSIER["payment"], purpose="billing")
            )

    mark = world.vault.head.seq
    with pytest.raises(StorageError, match="kind payment was added"):
        world.admin.handover_export(
            world.handover_pub, str(out), customers=cids, progress=add_payment
        )
    assert added
    assert not out.exists()
    got = logrows.entries_after(world.data_db, mark)
    assert [e["action"] for e in got] == ["record.put"]  # no customer.handover, no export
