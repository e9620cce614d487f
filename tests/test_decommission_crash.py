"""Crash safety of decommission: a real process is killed at each named crash point
(``SHREDVAULT_CRASH_AT``, exit 97); running the decommission again finishes it, and the
result equals an uninterrupted decommission: the same counts, every customer shredded
once, one final entry, a verifying log and certificate, no keys left. Once the
decommission has begun the vault serves no data. Both data stores."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import (
    Auditor,
    Certificate,
    Vault,
    VaultDecommissionedError,
    decommission_state,
    decommissioned_certificate,
    verify_certificate,
)
from shredvault.vault.store import log

REPO = Path(__file__).resolve().parents[1]
CRASH_EXIT_CODE = 97
PURPOSE = "service"
ACTIVE = 6
RECORDS = ACTIVE  # one per customer (the shredded-before customer's went with its shred)

_DECOMMISSION = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url = sys.argv[1:4]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
vault.admin().decommission(reason="deregistered", override_holds=True)
vault.close()
"""

# Before the keystore says "decommissioning" the vault still serves; from then on not.
BEFORE_STATE = ["decommission:after-intent"]
AFTER_STATE = [
    "decommission:after-state",
    "decommission:batch-intent",
    "decommission:batch-keys",
    "decommission:after-shred",
    "compact:batch",
    "decommission:after-compact",
    "decommission:after-keys",
    "decommission:after-final",
    "decommission:after-certificate",
]
AFTER_SEED = ["decommission:after-seed"]


@dataclass
class Setup:
    path: Path
    keyfile: Path
    data_url: str | None
    held: str
    needles: dict[str, bytes]  # wrapped epochs, DEKs, seed and tags, read before

    def args(self) -> list[str]:
        return [str(self.path), str(self.keyfile), self.data_url or ""]

    def open(self) -> Vault:
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url)


def build(path: Path, keyfile: Path, data_url: str | None) -> Setup:
    with Vault.create(path, keyfile=keyfile, data_url=data_url) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        cids = [s.add_customer() for _ in range(ACTIVE + 1)]
        s.put_many([(c, "profile", {"name": c[-5:]}) for c in cids], purpose=PURPOSE)
        s.shred(cids.pop(), reason="erasure request")
        s.hold(cids[0])
    return Setup(path, keyfile, data_url, cids[0], wrapped_keys(path))


def wrapped_keys(path: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(path / "keys.db")
    try:
        found = {
            f"{table} {i}": bytes(blob)
            for table, column in (
                ("kek_epochs", "wrapped"),
                ("deks", "wrapped"),
                ("signing", "wrapped"),
                ("subject_tags", "tag"),
            )
            for i, (blob,) in enumerate(conn.execute(f"SELECT {column} FROM {table}"))
        }
    finally:
        conn.close()
    assert len(found) == 1 + 2 * ACTIVE + 1
    return found


def residue(path: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for name in ("keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal"):
        if (path / name).exists():
            data = (path / name).read_bytes()
            hits += [f"{name}: {n}" for n, b in needles.items() if b in data]
    return hits


def run(setup: Setup, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHREDVAULT_CRASH_AT"}
    if crash_at is not None:
        env["SHREDVAULT_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", _DECOMMISSION, *setup.args()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def log_entries(auditor: Auditor) -> list[dict[str, Any]]:
    rows = auditor._data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def assert_finished(setup: Setup) -> Certificate:
    """The state an uninterrupted decommission leaves."""
    assert decommission_state(setup.path) == "decommissioned"
    cert = decommissioned_certificate(setup.path)
    assert cert.document["counts"] == {
        "customers_shredded": ACTIVE,
        "customers_shredded_before": 1,
        "records_deleted": RECORDS,
        "legal_holds_overridden": 1,
        "stray_deks_destroyed": 0,
    }
    conn = sqlite3.connect(setup.path / "keys.db")
    try:
        for table in ("kek_epochs", "deks", "subject_tags", "signing", "receipt_salts"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    finally:
        conn.close()
    assert residue(setup.path, setup.needles) == []
    with Auditor.open(setup.path, data_url=setup.data_url) as auditor:
        report = auditor.verify()
        assert report.ok, report.message
        entries = log_entries(auditor)
        export = setup.path.parent / "log.jsonl"
        with open(export, "wb") as out:
            auditor.export(out)
    finals = [e for e in entries if e["action"] == "vault.decommission" and e["outcome"] == "ok"]
    assert len(finals) == 1 and finals[0] == entries[-1]
    shreds = [e for e in entries if e["action"] == "customer.shred"]
    assert len(shreds) == ACTIVE + 1  # each customer logged once
    assert len({e["subject"] for e in shreds}) == ACTIVE + 1
    checked = verify_certificate(cert.to_json(), log_export=export, trust_embedded_key=True)
    assert checked.ok, checked.message
    with pytest.raises(VaultDecommissionedError):
        setup.open()
    return cert


@pytest.fixture
def setup(tmp_path: Path, keyfile: Path, backend: str | None) -> Setup:
    return build(tmp_path / "vault", keyfile, backend)


def test_an_uninterrupted_run_is_the_reference(setup: Setup) -> None:
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert_finished(setup)


@pytest.mark.parametrize("point", BEFORE_STATE)
def test_a_crash_before_the_state_is_recorded_leaves_a_serving_vault_then_a_rerun_finishes(
    setup: Setup, point: str
) -> None:
    crashed = run(setup, crash_at=point)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert decommission_state(setup.path) == "active"
    with setup.open() as v:  # nothing was destroyed: it still serves
        assert len(v.admin().list_customers(state="active")) == ACTIVE
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert_finished(setup)


@pytest.mark.slow
@pytest.mark.parametrize("point", AFTER_STATE)
def test_a_crash_after_the_state_is_recorded_serves_no_data_and_a_rerun_finishes(
    setup: Setup, point: str
) -> None:
    crashed = run(setup, crash_at=point)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert decommission_state(setup.path) == "decommissioning"
    with setup.open() as v:
        s = v.admin()
        with pytest.raises(VaultDecommissionedError):
            s.list_customers()
        with pytest.raises(VaultDecommissionedError):
            s.add_customer()
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert_finished(setup)


@pytest.mark.parametrize("point", AFTER_SEED)
def test_a_crash_after_the_seed_is_destroyed_is_finished_without_a_passphrase(
    setup: Setup, point: str
) -> None:
    crashed = run(setup, crash_at=point)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert decommission_state(setup.path) == "decommissioned"
    with pytest.raises(VaultDecommissionedError):
        setup.open()
    decommissioned_certificate(setup.path)  # truncates what the crash left in the WAL
    assert_finished(setup)


def test_a_crash_after_the_certificate_re_emits_the_same_certificate(setup: Setup) -> None:
    crashed = run(setup, crash_at="decommission:after-certificate")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    with setup.open() as v:
        handed: list[Certificate] = []
        cert = v.admin().decommission(
            reason="ignored: the first reason stands", on_certificate=handed.append
        )
    assert handed == [cert]
    assert cert.document["reason"] == "deregistered"
    assert assert_finished(setup).document == cert.document


def test_a_failing_certificate_handler_keeps_the_seed_so_a_rerun_can_finish(
    setup: Setup,
) -> None:
    def refuse(_cert: Certificate) -> None:
        raise OSError("disk full")

    with setup.open() as v, pytest.raises(OSError):
        v.admin().decommission(reason="deregistered", override_holds=True, on_certificate=refuse)
    assert decommission_state(setup.path) == "decommissioning"
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert_finished(setup)


def test_a_vault_opened_before_another_process_decommissioned_it_logs_nothing_more(
    setup: Setup,
) -> None:
    with setup.open() as stale:
        crashed = run(setup, crash_at="decommission:after-final")
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        cert = stale.admin().decommission(reason="deregistered")
        with pytest.raises(VaultDecommissionedError):
            stale.admin().decommission(reason="deregistered")
    assert assert_finished(setup).document == cert.document


def test_a_vault_opened_before_the_decommission_refuses_to_start_another(setup: Setup) -> None:
    with setup.open() as stale:
        done = run(setup)
        assert done.returncode == 0, done.stderr
        with pytest.raises(VaultDecommissionedError):
            stale.admin().decommission(reason="deregistered")
    assert_finished(setup)
