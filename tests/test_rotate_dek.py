"""DEK rotation (DESIGN §3): version n+1 is written, the customer's records are
re-encrypted under it, then version n is deleted (its bytes leave keys.db). Reads accept
any version still present, so a process killed at ``rotate-dek:after-key`` or
``rotate-dek:after-data`` (exit 97) leaves every record readable, and a rerun finishes
with one version. ``rotate_deks(older_than_days=N)`` picks customers by the injected
clock. Real vaults, real processes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import Auditor, NotFoundError, ShreddedError, Vault, ids
from shredvault.vault.store import checkpoints, customers, log, records

from processes import CRASH_EXIT_CODE, run_python

PURPOSE = "service"
T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)

_ROTATE_DEK = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
vault.admin().rotate_dek(customer)
vault.close()
"""


class FakeClock:
    """A clock the test moves by hand (always timezone-aware)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# -- a target customer with records and a bystander ---------------------------------------


@dataclass
class Setup:
    path: Path
    target: str
    bystander: str
    expected: dict[str, tuple[str, dict[str, str]]]  # record id -> (customer, fields)

    def rids_of(self, customer: str) -> list[str]:
        return [rid for rid, (c, _f) in self.expected.items() if c == customer]


def build(v: Vault, *, target_records: int = 5) -> Setup:
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    target, bystander = s.add_customer(ref="crm-1"), s.add_customer(ref="crm-2")
    items = [
        (target, "profile", {"name": f"T{i}", "phone": f"+44 {i}"}) for i in range(target_records)
    ]
    items += [(bystander, "profile", {"name": f"B{i}"}) for i in range(2)]
    rids = s.put_many(items, purpose=PURPOSE)
    expected = {rid: (c, dict(f)) for rid, (c, _k, f) in zip(rids, items, strict=True)}
    return Setup(v.path, target, bystander, expected)


def record_rows(v: Vault, customer: str) -> dict[str, tuple[int, bytes]]:
    """record id -> (dek_version, ciphertext), straight from sv_records."""
    stmt = select(records.c.id, records.c.dek_version, records.c.ciphertext).where(
        records.c.customer_id == customer
    )
    return v._ctx.data.read(
        lambda c: {str(r.id): (int(r.dek_version), bytes(r.ciphertext)) for r in c.execute(stmt)}
    )


def customer_dek_version(v: Vault, customer: str) -> int:
    stmt = select(customers.c.dek_version).where(customers.c.id == customer)
    return int(v._ctx.data.read(lambda c: c.execute(stmt).scalar_one()))


def keystore_versions(v: Vault, customer: str) -> list[int]:
    return sorted(r.version for r in v._ctx.keys.store.deks([customer]))


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def assert_records_read(v: Vault, setup: Setup) -> None:
    pairs = [(c, rid) for rid, (c, _f) in setup.expected.items()]
    got = v.admin().get_many(pairs, purpose=PURPOSE)
    assert {r.id: dict(r.fields) for r in got} == {
        rid: f for rid, (_c, f) in setup.expected.items()
    }


def assert_verifies(v: Vault, data_url: str | None) -> None:
    report = v.verify_log()
    assert report.ok, report.message
    with Auditor.open(v.path, data_url=data_url) as auditor:
        audit = auditor.verify()
    assert audit.ok, audit.message


# -- rotation -----------------------------------------------------------------------------


def test_rotate_dek_gives_version_two_and_reencrypts_every_record(
    make_vault: Any, keyfile: Path, backend: str | None
) -> None:
    v = make_vault()
    setup = build(v)
    before = record_rows(v, setup.target)
    bystander_before = record_rows(v, setup.bystander)
    bystander_deks = v._ctx.keys.store.deks([setup.bystander])

    assert v.admin().rotate_dek(setup.target) == 2

    after = record_rows(v, setup.target)
    assert sorted(after) == sorted(before) == sorted(setup.rids_of(setup.target))
    assert {version for version, _ct in after.values()} == {2}
    assert all(after[rid][1] != before[rid][1] for rid in before)  # re-encrypted
    assert customer_dek_version(v, setup.target) == 2
    assert keystore_versions(v, setup.target) == [2]
    assert record_rows(v, setup.bystander) == bystander_before
    assert v._ctx.keys.store.deks([setup.bystander]) == bystander_deks
    assert_records_read(v, setup)
    v.close()
    with Vault.open(setup.path, keyfile=keyfile, data_url=backend) as reopened:
        assert_records_read(reopened, setup)


def test_each_rotation_adds_one_version_and_keeps_only_the_newest(sqlite_vault: Vault) -> None:
    setup = build(sqlite_vault, target_records=2)
    s = sqlite_vault.admin()
    assert [s.rotate_dek(setup.target) for _ in range(3)] == [2, 3, 4]
    assert keystore_versions(sqlite_vault, setup.target) == [4]
    assert {v for v, _ct in record_rows(sqlite_vault, setup.target).values()} == {4}
    assert_records_read(sqlite_vault, setup)


def test_the_old_dek_version_bytes_leave_keys_db(sqlite_vault: Vault) -> None:
    setup = build(sqlite_vault)
    (old,) = sqlite_vault._ctx.keys.store.deks([setup.target])

    def files_holding(needle: bytes) -> list[str]:
        return [p.name for p in sorted(setup.path.glob("keys.db*")) if needle in p.read_bytes()]

    assert files_holding(old.wrapped)  # positive control: the scan finds it before
    sqlite_vault.admin().rotate_dek(setup.target)
    assert files_holding(old.wrapped) == []


def test_rotate_dek_is_logged_with_the_subject_tag_and_a_checkpoint(sqlite_vault: Vault) -> None:
    setup = build(sqlite_vault)
    tag = sqlite_vault._ctx.keys.customer_keys([setup.target])[setup.target].subject_tag.hex()
    head = sqlite_vault.head.seq

    sqlite_vault.admin().rotate_dek(setup.target)

    entries = [e for e in log_entries(sqlite_vault)[head:] if e["action"] == "keys.rotate-dek"]
    assert len(entries) == 1
    (entry,) = entries
    assert entry["subject"] == tag and entry["outcome"] == "ok"
    assert entry["detail"] == {"version": 2, "records": len(setup.rids_of(setup.target))}
    cps = sqlite_vault._ctx.data.read(
        lambda c: c.execute(select(checkpoints.c.seq)).scalars().all()
    )
    assert entry["seq"] in set(cps)
    assert_verifies(sqlite_vault, None)


def test_rotate_dek_of_a_shredded_customer_raises_shredded_error(sqlite_vault: Vault) -> None:
    setup = build(sqlite_vault)
    s = sqlite_vault.admin()
    s.shred(setup.target, reason="erasure request")
    with pytest.raises(ShreddedError):
        s.rotate_dek(setup.target)
    assert sqlite_vault._ctx.keys.store.deks([setup.target]) == []  # no key was made for it


def test_rotate_dek_of_an_unknown_customer_raises_not_found_error(sqlite_vault: Vault) -> None:
    build(sqlite_vault)
    s = sqlite_vault.admin()
    unknown = ids.new_id(ids.CUSTOMER)
    with pytest.raises(NotFoundError) as raised:
        s.rotate_dek(unknown)
    assert not isinstance(raised.value, ShreddedError)
    with pytest.raises(NotFoundError):
        s.rotate_dek("cus_not-an-id")
    assert sqlite_vault._ctx.keys.store.deks([unknown]) == []


# -- crash loop ---------------------------------------------------------------------------


@dataclass
class Crashed:
    setup: Setup
    keyfile: Path
    data_url: str | None
    crash_at: str

    def open(self) -> Vault:
        return Vault.open(self.setup.path, keyfile=self.keyfile, data_url=self.data_url)


@pytest.fixture(
    params=[
        ("sqlite", "rotate-dek:after-key"),
        ("sqlite", "rotate-dek:after-data"),
        pytest.param(("postgres", "rotate-dek:after-key"), marks=pytest.mark.postgres),
    ],
    ids=["sqlite-after-key", "sqlite-after-data", "postgres-after-key"],
)
def crashed(request: pytest.FixtureRequest, tmp_path: Path, keyfile: Path) -> Crashed:
    """A vault whose target customer's DEK rotation was killed at a crash point."""
    store, crash_at = request.param
    data_url = request.getfixturevalue("pg_url") if store == "postgres" else None
    with Vault.create(tmp_path / "vault", keyfile=keyfile, data_url=data_url) as v:
        setup = build(v)
    args = [str(setup.path), str(keyfile), data_url or "", setup.target]
    done = run_python(_ROTATE_DEK, *args, crash_at=crash_at)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    return Crashed(setup, keyfile, data_url, crash_at)


def test_after_a_crash_every_record_reads_under_the_version_it_names(crashed: Crashed) -> None:
    setup = crashed.setup
    reached = 1 if crashed.crash_at == "rotate-dek:after-key" else 2
    with crashed.open() as v:
        assert keystore_versions(v, setup.target) == [1, 2]
        assert {ver for ver, _ct in record_rows(v, setup.target).values()} == {reached}
        assert customer_dek_version(v, setup.target) == reached
        assert_records_read(v, setup)
        assert_verifies(v, crashed.data_url)


CRASH_CASES = [
    ("sqlite", "rotate-dek:after-key"),
    ("sqlite", "rotate-dek:after-data"),
    pytest.param(("postgres", "rotate-dek:after-key"), marks=pytest.mark.postgres),
]
CRASH_IDS = ["sqlite-after-key", "sqlite-after-data", "postgres-after-key"]


@pytest.mark.parametrize("crashed", CRASH_CASES, ids=CRASH_IDS, indirect=True)
def test_rerun_after_a_crash_finishes_the_interrupted_version(crashed: Crashed) -> None:
    setup = crashed.setup
    with crashed.open() as v:
        version = v.admin().rotate_dek(setup.target)

        assert version == 2  # the interrupted run's version, finished: no extra one
        assert keystore_versions(v, setup.target) == [2]
        assert {ver for ver, _ct in record_rows(v, setup.target).values()} == {2}
        assert customer_dek_version(v, setup.target) == 2
        assert_records_read(v, setup)
        assert_verifies(v, crashed.data_url)


@pytest.mark.parametrize(
    "crashed",
    [("sqlite", "rotate-dek:after-key"), ("sqlite", "rotate-dek:after-data")],
    ids=["sqlite-after-key", "sqlite-after-data"],
    indirect=True,
)
def test_rerun_after_a_crash_leaves_a_single_version_under_every_record(crashed: Crashed) -> None:
    """Whatever version number the rerun picks, exactly one remains and all records use it."""
    setup = crashed.setup
    with crashed.open() as v:
        s = v.admin()
        # A record written between the crash and the rerun must survive the rerun too.
        rid = s.put(setup.target, "profile", {"name": "late"}, purpose=PURPOSE)
        setup.expected[rid] = (setup.target, {"name": "late"})

        version = s.rotate_dek(setup.target)

        assert keystore_versions(v, setup.target) == [version]
        assert {ver for ver, _ct in record_rows(v, setup.target).values()} == {version}
        assert customer_dek_version(v, setup.target) == version
        assert_records_read(v, setup)
    with crashed.open() as reopened:
        assert_records_read(reopened, setup)
        assert_verifies(reopened, crashed.data_url)


# -- rotate_deks(older_than_days=N) with an injected clock --------------------------------


@pytest.fixture
def clocked(tmp_path: Path, keyfile: Path) -> Any:
    clock = FakeClock(T0)
    v = Vault.create(tmp_path / "vault", keyfile=keyfile, clock=clock)
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    yield v, clock
    v.close()


def test_rotate_deks_older_than_rotates_only_customers_whose_newest_dek_is_older(
    clocked: tuple[Vault, FakeClock],
) -> None:
    v, clock = clocked
    s = v.admin()
    old = s.add_customer()  # DEK made at T0
    clock.advance(days=80)
    young = s.add_customer()  # DEK made at T0 + 80 days
    rids = {c: s.put(c, "profile", {"name": c[-4:]}, purpose=PURPOSE) for c in (old, young)}
    clock.advance(days=20)  # now: old is 100 days old, young 20

    assert s.rotate_deks(older_than_days=50) == [old]

    assert keystore_versions(v, old) == [2] and keystore_versions(v, young) == [1]
    assert s.rotate_deks(older_than_days=50) == []  # old's new DEK is 0 days old
    for c, rid in rids.items():
        assert dict(s.get(c, rid, purpose=PURPOSE).fields) == {"name": c[-4:]}


def test_rotate_deks_older_than_is_strict_at_the_boundary(
    clocked: tuple[Vault, FakeClock],
) -> None:
    v, clock = clocked
    s = v.admin()
    customer = s.add_customer()
    clock.advance(days=30)  # exactly 30 days old: not older than 30
    assert s.rotate_deks(older_than_days=30) == []
    clock.advance(microseconds=1)
    assert s.rotate_deks(older_than_days=30) == [customer]
    assert keystore_versions(v, customer) == [2]


def test_rotate_deks_without_an_age_rotates_every_active_customer_and_skips_shredded(
    clocked: tuple[Vault, FakeClock],
) -> None:
    v, _clock = clocked
    s = v.admin()
    active = [s.add_customer() for _ in range(3)]
    shredded = s.add_customer()
    s.shred(shredded, reason="erasure request")
    ticks: list[int] = []

    done = s.rotate_deks(progress=ticks.append)

    assert sorted(done) == sorted(active)
    assert sum(ticks) == 3  # per batch: one batch here
    assert all(keystore_versions(v, c) == [2] for c in active)
    assert keystore_versions(v, shredded) == []
