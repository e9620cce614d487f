"""``key_status`` (DESIGN §3, §9 ``keys status``): key ages from the injected clock, DEKs
per epoch, KDF parameters against today's recommendation, the last rotation and the
violations of a :class:`KeyPolicy`. Auditors may ask for it; operators may not. Every
call is logged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import recommended_params
from shredvault.vault import AccessDeniedError, KeyPolicy, Vault
from shredvault.vault.clock import format_ts
from shredvault.vault.store import log

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PASSPHRASE = b"correct horse battery staple"


class FakeClock:
    """A clock the test moves by hand (always timezone-aware)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(tmp_path: Path, keyfile: Path, clock: FakeClock) -> Iterator[Vault]:
    """A keyfile vault created at T0 on the fake clock."""
    v = Vault.create(tmp_path / "vault", keyfile=keyfile, clock=clock)
    yield v
    v.close()


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def last_entry(v: Vault, action: str) -> dict[str, Any]:
    return [e for e in log_entries(v) if e["action"] == action][-1]


# -- figures ------------------------------------------------------------------------------


def test_status_reports_epoch_and_dek_ages_in_days_from_the_clock(
    vault: Vault, clock: FakeClock
) -> None:
    s = vault.admin()
    clock.advance(days=1)
    s.add_customer()  # the oldest DEK: T0 + 1 day
    clock.advance(days=10)
    s.add_customer()
    clock.advance(days=90, hours=12)  # now: T0 + 101.5 days

    status = s.key_status()

    assert status.active_epoch == 1
    assert status.active_epoch_created == format_ts(T0)
    assert status.active_epoch_age_days == pytest.approx(101.5)
    assert status.oldest_dek_created == format_ts(T0 + timedelta(days=1))
    assert status.oldest_dek_age_days == pytest.approx(100.5)
    assert status.deks_per_epoch == {1: 2}
    assert status.last_rotation is None
    assert status.violations == []
    report = status.to_json()
    assert report["active_epoch_age_days"] == 101.5 and report["deks_per_epoch"] == {"1": 2}


def test_status_of_an_empty_vault_has_no_oldest_dek(vault: Vault) -> None:
    status = vault.admin().key_status()
    assert status.deks_per_epoch == {}
    assert status.oldest_dek_created is None and status.oldest_dek_age_days is None
    assert status.active_epoch_age_days == 0


def test_status_counts_deks_per_epoch_and_kek_rotation_does_not_make_deks_younger(
    vault: Vault, clock: FakeClock
) -> None:
    s = vault.admin()
    for _ in range(3):
        s.add_customer()
    clock.advance(days=40)
    s.rotate_kek()
    clock.advance(days=5)

    status = s.key_status()

    assert status.active_epoch == 2 and status.deks_per_epoch == {2: 3}
    assert status.active_epoch_created == format_ts(T0 + timedelta(days=40))
    assert status.active_epoch_age_days == pytest.approx(5)
    assert status.oldest_dek_age_days == pytest.approx(45)  # re-wrapped, not replaced


def test_last_rotation_is_the_timestamp_of_the_newest_rotation_entry(
    vault: Vault, clock: FakeClock
) -> None:
    s = vault.admin()
    customer = s.add_customer()
    clock.advance(days=3, microseconds=17)
    s.rotate_kek()
    done = last_entry(vault, "keys.rotate-kek.done")
    clock.advance(days=1)

    assert s.key_status().last_rotation == done["ts"] == format_ts(clock() - timedelta(days=1))

    clock.advance(days=2)
    s.rotate_dek(customer)
    assert s.key_status().last_rotation == last_entry(vault, "keys.rotate-dek")["ts"]


def test_a_keyfile_vault_reports_no_kdf_and_no_rehash(vault: Vault) -> None:
    status = vault.admin().key_status()
    assert status.key_source == "keyfile"
    assert status.kdf is None
    assert status.kdf_recommended == recommended_params().to_dict()
    assert status.rehash_due is False


def test_a_passphrase_vault_at_recommended_parameters_needs_no_rehash(
    tmp_path: Path, clock: FakeClock
) -> None:
    with Vault.create(tmp_path / "vault", passphrase=PASSPHRASE, clock=clock) as v:  # one Argon2id
        status = v.admin().key_status()
    assert status.key_source == "passphrase"
    assert status.kdf == status.kdf_recommended == recommended_params().to_dict()
    assert status.rehash_due is False
    assert status.violations == []


# -- policy -------------------------------------------------------------------------------


def test_violations_name_each_key_older_than_the_policy(vault: Vault, clock: FakeClock) -> None:
    s = vault.admin()
    customer = s.add_customer()  # DEK made at T0, like the epoch
    policy = KeyPolicy(max_kek_age_days=30, max_dek_age_days=60)

    clock.advance(days=30)  # exactly at the limit: not over it
    assert s.key_status(policy).violations == []

    clock.advance(days=15)  # 45 days: KEK over, DEK not
    assert s.key_status(policy).violations == ["active KEK epoch is 45 days old (policy 30)"]

    clock.advance(days=45)  # 90 days: both over
    assert s.key_status(policy).violations == [
        "active KEK epoch is 90 days old (policy 30)",
        "oldest DEK is 90 days old (policy 60)",
    ]

    s.rotate_kek()  # a fresh epoch; the DEK is only re-wrapped
    assert s.key_status(policy).violations == ["oldest DEK is 90 days old (policy 60)"]

    s.rotate_dek(customer)
    assert s.key_status(policy).violations == []


def test_the_default_policy_allows_a_year_for_keks_and_two_for_deks(
    vault: Vault, clock: FakeClock
) -> None:
    s = vault.admin()
    s.add_customer()
    clock.advance(days=366)
    assert s.key_status().violations == ["active KEK epoch is 366 days old (policy 365)"]
    clock.advance(days=365)
    assert len(s.key_status().violations) == 2


def test_status_is_logged_with_the_number_of_violations(vault: Vault, clock: FakeClock) -> None:
    s = vault.admin()
    clock.advance(days=2)
    s.key_status(KeyPolicy(max_kek_age_days=1))
    entry = last_entry(vault, "keys.status")
    assert (entry["actor"], entry["outcome"], entry["detail"]) == ("admin", "ok", {"violations": 1})


# -- who may ask --------------------------------------------------------------------------


def test_an_auditor_may_read_the_key_status(vault: Vault, clock: FakeClock) -> None:
    admin = vault.admin()
    admin.add_customer()
    clock.advance(days=7)
    auditor = vault.login(admin.add_principal("ines", role="auditor"))

    status = auditor.key_status()

    assert status.active_epoch == 1 and status.deks_per_epoch == {1: 1}
    assert status.active_epoch_age_days == pytest.approx(7)
    entry = last_entry(vault, "keys.status")
    assert (entry["actor"], entry["role"], entry["outcome"]) == ("ines", "auditor", "ok")


def test_an_operator_may_not_read_the_key_status(vault: Vault) -> None:
    admin = vault.admin()
    operator = vault.login(admin.add_principal("olu", role="operator"))
    head = vault.head.seq

    with pytest.raises(AccessDeniedError):
        operator.key_status()

    entries = log_entries(vault)[head:]
    assert [(e["action"], e["actor"], e["outcome"]) for e in entries] == [
        ("keys.status", "olu", "denied")
    ]


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_only_an_admin_may_rotate_keys(vault: Vault, role: str) -> None:
    admin = vault.admin()
    customer = admin.add_customer()
    session = vault.login(admin.add_principal("someone", role=role))
    for rotate in (
        session.rotate_kek,
        lambda: session.rotate_dek(customer),
        lambda: session.retire_epoch(1),
        session.rotate_deks,
    ):
        with pytest.raises(AccessDeniedError):
            rotate()
    assert vault._ctx.keys.store.epochs().keys() == {1}
    assert [r.version for r in vault._ctx.keys.store.deks([customer])] == [1]
