"""Third-party access reviews (issue 23, item 5; docs/access-control.md, "Reviews"):
grants, last use and activity since the last review; marking it done is logged and
starts the counts again; an overdue review shows in the audit report and key status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import AccessDeniedError, Auditor, Role, SchemaError, Vault

from conftest import VaultFactory


def _entries(vault: Vault, url: str | None, action: str) -> list[dict[str, Any]]:
    with Auditor.open(vault.path, data_url=url) as auditor:
        return [e for e in auditor.entries() if e["action"] == action]


def _shop(make_vault: VaultFactory) -> tuple[Vault, str, str]:
    """A vault with a third party (an acquirer's role limited to profiles for
    transfer) who read one record and was refused a payment; and an auditor."""
    vault = make_vault()
    vault.declare_kind("profile", fields=["name", "phone"], purposes=["service", "transfer"])
    vault.declare_kind("payment", fields=["card"], purposes=["billing"])
    admin = vault.admin()
    admin.add_role(
        Role.build(
            "acquirer",
            actions=["read", "list"],
            kinds=["profile"],
            fields=["profile.name"],
            purposes=["transfer"],
            expires="2099-01-01",
        )
    )
    token = admin.add_principal("acme-staff", role="acquirer")
    auditor_token = admin.add_principal("inspector", role="auditor")
    cid = admin.add_customer()
    rid = admin.put(cid, "profile", {"name": "Ada", "phone": "555"}, purpose="service")
    pay = admin.put(cid, "payment", {"card": "4111"}, purpose="billing")
    third = vault.login(token)
    third.get(cid, rid, purpose="transfer")
    with pytest.raises(AccessDeniedError):
        third.get(cid, pay, purpose="billing")
    return vault, token, auditor_token


def test_a_review_lists_grants_last_use_and_activity_per_role_and_principal(
    make_vault: VaultFactory, backend: str | None
) -> None:
    vault, _token, auditor_token = _shop(make_vault)
    review = vault.login(auditor_token).role_review()  # an auditor may list
    (role,) = review["roles"]
    assert role["name"] == "acquirer"
    assert role["kinds"] == ["profile"] and role["fields"] == ["profile.name"]
    assert role["purposes"] == ["transfer"]
    assert role["role_expires"] == "2099-01-01T00:00:00.000000Z"
    assert role["principals"] == ["acme-staff"]
    people = {p["name"]: p for p in review["principals"]}
    staff = people["acme-staff"]
    assert staff["grants"]["actions"] == ["list", "read"]
    # auth.login, the record.get and the denied one
    assert (staff["entries_since_review"], staff["denied_since_review"]) == (3, 1)
    assert staff["last_use"] is not None and role["last_use"] == staff["last_use"]
    assert role["entries_since_review"] == 3
    assert review["last_review"] is None and review["since"] is None
    (entry,) = _entries(vault, backend, "role.review-list")
    assert entry["actor"] == "inspector" and entry["detail"] == {"principals": 2, "roles": 1}


def test_marking_the_review_done_is_logged_and_starts_the_counts_again(
    make_vault: VaultFactory, backend: str | None
) -> None:
    vault, token, auditor_token = _shop(make_vault)
    with pytest.raises(AccessDeniedError):
        vault.login(auditor_token).review_done()  # only an admin marks it done
    admin = vault.admin()
    done = admin.review_done(note="acquirer access still needed until the handover")
    (entry,) = [e for e in _entries(vault, backend, "role.review") if e["outcome"] == "ok"]
    assert entry["seq"] == done["seq"]
    assert entry["detail"]["note"] == "acquirer access still needed until the handover"
    assert entry["detail"]["entries_since_last"] >= 3
    review = admin.role_review()
    assert review["last_review"]["seq"] == done["seq"]
    staff = next(p for p in review["principals"] if p["name"] == "acme-staff")
    assert staff["entries_since_review"] == 0 and staff["last_use"] is not None
    vault.login(token).list_customers()
    review = admin.role_review()
    staff = next(p for p in review["principals"] if p["name"] == "acme-staff")
    assert (staff["entries_since_review"], staff["denied_since_review"]) == (2, 0)


def test_a_review_note_is_checked_before_anything_is_logged(
    sqlite_vault: Vault,
) -> None:
    admin = sqlite_vault.admin()
    for bad in ("", "   ", "x" * 301, "a\x00b"):
        with pytest.raises(SchemaError):
            admin.review_done(note=bad)
    assert _entries(sqlite_vault, None, "role.review") == []


def test_an_overdue_review_shows_in_the_audit_report_and_key_status(
    tmp_path: Path, keyfile: Path
) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "vault", keyfile=keyfile, clock=lambda: now[0]) as vault:
        admin = vault.admin()
        admin.set_review_interval(30)
        now[0] += timedelta(days=29)
        assert admin.audit_report()["routine"]["review"]["overdue"] is False
        now[0] += timedelta(days=2)
        report = admin.audit_report()
        assert report["routine"]["review"]["overdue"] is True
        assert any("access review" in w for w in report["routine"]["warnings"])
        assert any("access review" in v for v in admin.key_status().routine["warnings"])
        admin.review_done()
        assert admin.audit_report()["routine"]["review"]["overdue"] is False
        (policy,) = [
            e
            for e in _entries(vault, None, "policy.set")
            if e["detail"]["policy"] == "review_interval_days"
        ]
        assert policy["detail"]["days"] == 30
