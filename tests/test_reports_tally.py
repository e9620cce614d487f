"""The audit report's running totals (docs/decisions.md, "Audit report totals").

A report verifies and counts only the entries after the totals the previous report
stored; the totals carry the vault's authenticator, so an edited or foreign tally is
ignored and the log is counted afresh, and the figures always equal a full recount.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from shredvault.vault import Session, Vault
from shredvault.vault.errors import AccessDeniedError
from shredvault.vault.store import log, meta

FIGURES = ("shreds", "denials_by_actor", "principals")


@pytest.fixture
def vault(make_vault: Callable[..., Vault]) -> Iterator[Vault]:
    yield make_vault()


def busy(vault: Vault) -> tuple[Session, Session]:
    """An administrator and an operator; a shred, denials and logins in the log."""
    admin = vault.admin()
    vault.declare_kind("profile", fields=["name"], purposes=["service"])
    token = admin.add_principal("olga", role="operator")
    olga = vault.login(token)
    cid = admin.add_customer()
    admin.shred(cid, reason="customer request")
    for _ in range(2):
        with pytest.raises(AccessDeniedError):
            olga.audit_report()
    return admin, olga


def tally(vault: Vault) -> dict[str, Any]:
    stored = vault._ctx.data.read(
        lambda conn: conn.execute(select(meta.c.v).where(meta.c.k == "audit_tally")).scalar()
    )
    doc: dict[str, Any] = json.loads(str(stored))
    return doc


def set_tally(vault: Vault, value: str) -> None:
    vault._ctx.data.run(
        lambda conn, head: conn.execute(
            update(meta).where(meta.c.k == "audit_tally").values(v=value)
        )
    )


def test_a_second_report_verifies_only_the_entries_since_the_first(vault: Vault) -> None:
    admin, olga = busy(vault)
    first = admin.audit_report()
    assert first["log"]["first_seq"] == 1
    with pytest.raises(AccessDeniedError):
        olga.audit_report()
    second = admin.audit_report()
    assert second["log"]["ok"] is True
    assert second["log"]["first_seq"] == tally_seq_before(first) + 1
    assert second["denials_by_actor"] == {"olga": 3}
    assert second["shreds"] == 1
    full = admin.audit_report(full=True)
    for figure in FIGURES:
        assert second[figure] == full[figure], figure
    assert full["log"]["first_seq"] == 1


def tally_seq_before(report: dict[str, Any]) -> int:
    seq: int = report["log"]["last_seq"]
    return seq


def test_edited_totals_are_ignored_and_the_log_counted_afresh(vault: Vault) -> None:
    admin, _olga = busy(vault)
    admin.audit_report()
    doc = tally(vault)
    inner = json.loads(doc["tally"])
    inner["shreds"], inner["denials"] = 0, {}
    doc["tally"] = json.dumps(inner, sort_keys=True, separators=(",", ":"))
    set_tally(vault, json.dumps(doc))
    report = admin.audit_report()
    assert report["log"]["first_seq"] == 1  # counted from the start again
    assert report["shreds"] == 1 and report["denials_by_actor"] == {"olga": 2}


def test_totals_moved_to_a_later_seq_are_ignored(vault: Vault) -> None:
    admin, _olga = busy(vault)
    admin.audit_report()
    doc = tally(vault)
    doc["seq"] += 1  # the authenticator binds the seq the totals stand at
    set_tally(vault, json.dumps(doc))
    assert admin.audit_report()["log"]["first_seq"] == 1


def test_garbage_in_the_tally_row_is_a_recount_not_a_crash(vault: Vault) -> None:
    admin, _olga = busy(vault)
    admin.audit_report()
    set_tally(vault, "{not json")
    report = admin.audit_report()
    assert report["log"]["ok"] is True and report["shreds"] == 1


def test_a_tally_from_another_vault_is_not_believed(tmp_path: Path, keyfile: Path) -> None:
    with (
        Vault.create(tmp_path / "a", keyfile=keyfile) as first,
        Vault.create(tmp_path / "b", keyfile=keyfile) as second,
    ):
        busy(first)[0].audit_report()
        busy(second)
        value = json.dumps(tally(first))
        second._ctx.data.run(
            lambda conn, head: conn.execute(insert(meta).values(k="audit_tally", v=value))
        )
        assert second.admin().audit_report()["log"]["first_seq"] == 1


def test_an_entry_edited_behind_the_totals_is_found_by_a_full_report(vault: Vault) -> None:
    admin, _olga = busy(vault)
    admin.audit_report()
    vault._ctx.data.run(
        lambda conn, head: conn.execute(update(log).where(log.c.seq == 2).values(actor="mallory"))
    )
    assert admin.audit_report()["log"]["ok"] is True  # verified from the totals on
    full = admin.audit_report(full=True)["log"]
    assert (full["ok"], full["reason"], full["bad_seq"]) == (False, "modified", 2)
