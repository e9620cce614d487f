"""Crash recovery of shredding and compaction (DESIGN §7): a real process is killed at
each named crash point (``SHREDVAULT_CRASH_AT``, exit code 97); opening the vault
afterwards finishes the shred exactly once, and a rerun of compact finishes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from shredvault.keys import Envelope, KeyStore, SecretBytes, dek_aad, fingerprint, record_aad
from shredvault.vault import Auditor, ShreddedError, Vault, verify_receipt
from shredvault.vault.store import DataStore, customers, log, records

from processes import CRASH_EXIT_CODE, REPO, run_python

PURPOSE = "service"

_SHRED = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
vault.admin().shred(customer, reason="erasure request")
vault.close()
"""

_ROTATE_DEK = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
vault.admin().rotate_dek(customer)
vault.close()
"""

_COMPACT = r"""
import os, sys
from shredvault.vault import Vault

path, keyfile, data_url, crash_in_batch = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
done = []

def after_batch(removed):
    done.append(removed)
    if len(done) + 1 == int(crash_in_batch):
        os.environ["SHREDVAULT_CRASH_AT"] = "compact:batch"  # die inside the next batch

if int(crash_in_batch) == 1:
    os.environ["SHREDVAULT_CRASH_AT"] = "compact:batch"
vault.admin().compact(progress=after_batch)
vault.close()
"""


# -- a vault with a target customer and bystanders ------------------------------------


@dataclass
class Setup:
    path: Path
    keyfile: Path
    data_url: str | None
    target: str
    target_rids: list[str]
    tag: str
    others: list[str]
    # record id -> (customer, kind, DEK version, record version, ciphertext)
    other_rows: dict[str, tuple[str, str, int, int, bytes]]
    other_deks: list[tuple[str, int, int, bytes]]

    def open(self) -> Vault:
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url)

    def args(self) -> list[str]:
        return [str(self.path), str(self.keyfile), self.data_url or ""]


def build(path: Path, keyfile: Path, data_url: str | None, *, target_records: int = 3) -> Setup:
    v = Vault.create(path, keyfile=keyfile, data_url=data_url)
    try:
        v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
        s = v.admin()
        target = s.add_customer(ref="crm-1")
        rids = s.put_many(
            [(target, "profile", {"name": f"T{i}"}) for i in range(target_records)],
            purpose=PURPOSE,
        )
        others = [s.add_customer(ref=f"crm-{i}") for i in (2, 3)]
        s.put_many(
            [(c, "profile", {"name": c[-4:], "phone": "0"}) for c in others], purpose=PURPOSE
        )
        held = s.add_customer()
        s.put(held, "profile", {"name": "held"}, purpose=PURPOSE)
        s.hold(held)
        others.append(held)
        tag = v._ctx.keys.customer_keys([target])[target].subject_tag.hex()
        rows, deks = record_rows(v, others), wrapped_deks(v, others)
    finally:
        v.close()
    return Setup(path, keyfile, data_url, target, rids, tag, others, rows, deks)


def record_rows(v: Vault, cids: list[str]) -> dict[str, tuple[str, str, int, int, bytes]]:
    stmt = select(
        records.c.id,
        records.c.customer_id,
        records.c.kind,
        records.c.dek_version,
        records.c.version,
        records.c.ciphertext,
    ).where(records.c.customer_id.in_(cids))
    return v._ctx.data.read(
        lambda c: {
            str(r.id): (
                str(r.customer_id),
                str(r.kind),
                int(r.dek_version),
                int(r.version),
                bytes(r.ciphertext),
            )
            for r in c.execute(stmt)
        }
    )


def wrapped_deks(v: Vault, cids: list[str]) -> list[tuple[str, int, int, bytes]]:
    return sorted(
        (r.customer_id, r.version, r.epoch, r.wrapped) for r in v._ctx.keys.store.deks(cids)
    )


def decrypt_with_raw_keys(
    v: Vault, rows: dict[str, tuple[str, str, int, int, bytes]]
) -> dict[str, Any]:
    """Open each ciphertext with its DEK unwrapped straight from keys.db: proves the
    bystanders' records are still readable, independently of the session code."""
    out = {}
    for rid, (cid, kind, version, record_version, blob) in rows.items():
        (dek,) = [d for d in v._ctx.keys.store.deks([cid]) if d.version == version]
        raw = v._ctx.keys._kek(dek.epoch).open(
            dek.wrapped, dek_aad(v.vault_id, cid, version, dek.epoch)
        )
        plain = Envelope(SecretBytes(raw), version).open(
            blob, record_aad(v.vault_id, cid, rid, kind, version, record_version)
        )
        out[rid] = json.loads(plain)
    return out


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def raw_state(setup: Setup, customer: str) -> str:
    """The customer's state read straight from the data store, without opening the vault
    (opening would roll forward)."""
    if setup.data_url:
        data = DataStore.connect(url=setup.data_url)
    else:
        data = DataStore.connect(sqlite_path=setup.path / "data.db")
    try:
        return str(
            data.read(
                lambda c: c.execute(
                    select(customers.c.state).where(customers.c.id == customer)
                ).scalar_one()
            )
        )
    finally:
        data.dispose()


def keystore_holds(setup: Setup, customer: str) -> bool:
    store = KeyStore.open(setup.path / "keys.db")
    try:
        return bool(store.deks([customer])) or bool(store.subject_tags([customer]))
    finally:
        store.close()


def assert_verifies(v: Vault, data_url: str | None) -> None:
    report = v.verify_log()
    assert report.ok, report.message
    with Auditor.open(v.path, data_url=data_url) as auditor:
        audit = auditor.verify()
    assert audit.ok, audit.message


def assert_bystanders_untouched(v: Vault, setup: Setup) -> None:
    assert record_rows(v, setup.others) == setup.other_rows
    assert wrapped_deks(v, setup.others) == setup.other_deks
    plain = decrypt_with_raw_keys(v, setup.other_rows)
    assert sorted(p["name"] for p in plain.values()) == sorted(
        [c[-4:] for c in setup.others[:2]] + ["held"]
    )
    states = v._ctx.data.read(
        lambda c: {
            str(r.id): str(r.state)
            for r in c.execute(
                select(customers.c.id, customers.c.state).where(customers.c.id.in_(setup.others))
            )
        }
    )
    assert set(states.values()) == {"active"}
    session = v.admin()
    for rid, (cid, _kind, _version, _record_version, _blob) in setup.other_rows.items():
        assert session.get(cid, rid, purpose=PURPOSE).fields == plain[rid]


# -- shred crash loop ---------------------------------------------------------------------


@pytest.fixture(
    params=[
        ("sqlite", "shred:after-intent"),
        ("sqlite", "shred:after-keys"),
        pytest.param(("postgres", "shred:after-keys"), marks=pytest.mark.postgres),
    ],
    ids=["sqlite-after-intent", "sqlite-after-keys", "postgres-after-keys"],
)
def crashed_shred(
    request: pytest.FixtureRequest, tmp_path: Path, keyfile: Path
) -> tuple[Setup, str]:
    """A vault whose target customer's shred was killed at a crash point."""
    store, crash_at = request.param
    data_url = request.getfixturevalue("pg_url") if store == "postgres" else None
    setup = build(tmp_path / "vault", keyfile, data_url)
    done = run_python(_SHRED, *setup.args(), setup.target, crash_at=crash_at)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    return setup, crash_at


def test_crash_leaves_the_customer_shredding_with_keys_as_far_as_the_protocol_got(
    crashed_shred: tuple[Setup, str],
) -> None:
    setup, crash_at = crashed_shred
    assert raw_state(setup, setup.target) == "shredding"
    assert keystore_holds(setup, setup.target) is (crash_at == "shred:after-intent")


def test_reopen_finishes_an_interrupted_shred_exactly_once(
    crashed_shred: tuple[Setup, str],
) -> None:
    setup, _ = crashed_shred
    with setup.open() as v:
        assert [r.customer for r in v.recovered_receipts] == [setup.target]
        receipt = v.recovered_receipts[0].to_json()
        report = verify_receipt(receipt, public_key=v.public_key)
        assert report.ok, report.message
        assert report.customer == setup.target
        assert receipt["subject_tag"] == setup.tag

        entries = log_entries(v)
        intents = [e for e in entries if e["action"] == "customer.shred-intent"]
        shreds = [e for e in entries if e["action"] == "customer.shred"]
        assert len(intents) == 1 and len(shreds) == 1
        assert intents[0]["subject"] == shreds[0]["subject"] == setup.tag
        assert shreds[0]["detail"]["intent_seq"] == intents[0]["seq"]
        assert shreds[0]["detail"]["reason"] == "erasure request"
        assert shreds[0]["detail"]["records"] == 3
        assert receipt["entry"]["seq"] == shreds[0]["seq"]

        row = v._ctx.data.read(
            lambda c: c.execute(select(customers).where(customers.c.id == setup.target)).one()
        )
        assert (row.state, row.ref) == ("shredded", None)
        assert not keystore_holds(setup, setup.target)
        with pytest.raises(ShreddedError):
            v.admin().get(setup.target, setup.target_rids[0], purpose=PURPOSE)
        assert_verifies(v, setup.data_url)
        assert_bystanders_untouched(v, setup)


def test_a_second_reopen_after_recovery_recovers_nothing(
    crashed_shred: tuple[Setup, str],
) -> None:
    setup, _ = crashed_shred
    with setup.open():
        pass
    with setup.open() as v:
        assert v.recovered_receipts == []
        shreds = [e for e in log_entries(v) if e["action"] == "customer.shred"]
        assert len(shreds) == 1
        assert_verifies(v, setup.data_url)


def test_a_customer_left_shredding_is_unreadable_to_a_vault_that_was_already_open(
    tmp_path: Path, keyfile: Path
) -> None:
    setup = build(tmp_path / "vault", keyfile, None)
    with setup.open() as v:
        s = v.admin()
        cid = s.add_customer()
        rid = s.put(cid, "profile", {"name": "Ada"}, purpose=PURPOSE)
        assert s.get(cid, rid, purpose=PURPOSE).fields == {"name": "Ada"}
        assert cid in v._ctx.keys._customers  # its DEK is cached in this process
        done = run_python(_SHRED, *setup.args(), cid, crash_at="shred:after-intent")
        assert done.returncode == CRASH_EXIT_CODE, done.stderr
        with pytest.raises(ShreddedError):
            s.get(cid, rid, purpose=PURPOSE)
        assert cid not in v._ctx.keys._customers


def test_shredding_again_in_a_live_vault_finishes_an_interrupted_shred(
    tmp_path: Path, keyfile: Path
) -> None:
    setup = build(tmp_path / "vault", keyfile, None)
    with setup.open() as v:
        done = run_python(_SHRED, *setup.args(), setup.target, crash_at="shred:after-intent")
        assert done.returncode == CRASH_EXIT_CODE, done.stderr
        receipt = v.admin().shred(setup.target, reason="second attempt")
        assert verify_receipt(receipt.to_json(), public_key=v.public_key).ok
        # The interrupted shred's reason stands: it is the one the intent recorded.
        assert receipt.document["entry"]["detail"]["reason"] == "erasure request"
        assert not keystore_holds(setup, setup.target)
    with setup.open() as v:
        assert v.recovered_receipts == []
        entries = log_entries(v)
        assert len([e for e in entries if e["action"] == "customer.shred-intent"]) == 1
        assert len([e for e in entries if e["action"] == "customer.shred"]) == 1
        assert_verifies(v, None)
        assert_bystanders_untouched(v, setup)


def test_shred_destroys_every_key_version_an_interrupted_rotation_left(
    tmp_path: Path, keyfile: Path
) -> None:
    setup = build(tmp_path / "vault", keyfile, None)
    done = run_python(_ROTATE_DEK, *setup.args(), setup.target, crash_at="rotate-dek:after-data")
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with setup.open() as v:
        rows = sorted(v._ctx.keys.store.deks([setup.target]), key=lambda r: r.version)
        assert [r.version for r in rows] == [1, 2]  # records under 2, version 1 not yet dropped
        receipt = v.admin().shred(setup.target, reason="erasure request")
        detail = receipt.document["entry"]["detail"]
        assert detail["key_fingerprints"] == [fingerprint(r.wrapped) for r in rows]
        assert not keystore_holds(setup, setup.target)
        assert_bystanders_untouched(v, setup)
    for path in sorted(setup.path.glob("keys.db*")):
        data = path.read_bytes()
        assert not [r.version for r in rows if r.wrapped in data], path.name


# -- compact crash ----------------------------------------------------------------------


@pytest.mark.parametrize("crash_in_batch", [1, 2], ids=["first-batch", "second-batch"])
def test_interrupted_compact_loses_no_active_rows_and_a_rerun_finishes(
    tmp_path: Path, keyfile: Path, crash_in_batch: int
) -> None:
    setup = build(tmp_path / "vault", keyfile, None, target_records=1500)
    with setup.open() as v:
        left_behind = v._ctx.data.read(
            lambda c: [
                dict(r._mapping)
                for r in c.execute(select(records).where(records.c.customer_id == setup.target))
            ]
        )
        v.admin().shred(setup.target, reason="erasure request")
        # As a vault from before shreds deleted record rows left them: compact's work.
        with v._ctx.data.engine.begin() as conn:
            conn.execute(insert(records), left_behind)
        head = v.head.seq

    done = run_python(_COMPACT, *setup.args(), str(crash_in_batch))
    assert done.returncode == CRASH_EXIT_CODE, done.stderr

    with setup.open() as v:
        entries = log_entries(v)[head:]
        partial = [e for e in entries if e["action"] == "vault.compact"]
        committed = 1000 * (crash_in_batch - 1)  # each batch of 1,000 commits on its own
        assert sum(e["detail"]["records"] for e in partial) == committed
        left = len(record_rows(v, [setup.target]))
        assert left == 1500 - committed
        assert_bystanders_untouched(v, setup)
        assert_verifies(v, None)

        assert v.admin().compact() == left
        assert record_rows(v, [setup.target]) == {}
        compacts = [e for e in log_entries(v)[head:] if e["action"] == "vault.compact"]
        assert sum(e["detail"]["records"] for e in compacts) == 1500
        assert_bystanders_untouched(v, setup)
        assert_verifies(v, None)


# -- a live shred is not a crash ------------------------------------------------------


_SHRED_AND_REPORT = r"""
import json, sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
receipt = vault.admin().shred(customer, reason="erasure request")
print(json.dumps(receipt.to_json()))
vault.close()
"""


@pytest.mark.parametrize("pause_at", ["shred:after-intent", "shred:after-keys"])
def test_opening_while_another_process_shreds_waits_instead_of_finishing_its_shred(
    tmp_path: Path, keyfile: Path, pause_at: str
) -> None:
    """A customer in ``shredding`` because a live process is mid-shred is not a crash
    leftover: an open in another process waits for the shred lock, and the shredder
    finishes its own shred and gets its receipt (before the lock, the opener rolled it
    forward and the shredder failed, or the opener failed on the dropped salt)."""
    import threading

    s = build(tmp_path / "v", keyfile, None)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SHREDVAULT_CRASH_AT"}
    env.update(SHREDVAULT_PAUSE_AT=pause_at, SHREDVAULT_PAUSE_DIR=str(pause))
    shredder = subprocess.Popen(
        [sys.executable, "-c", _SHRED_AND_REPORT, *s.args(), s.target],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3000):
            if (pause / "reached").exists() or shredder.poll() is not None:
                break
            threading.Event().wait(0.01)
        assert (pause / "reached").exists(), shredder.communicate()[1]
        opened: list[Vault] = []
        failed: list[BaseException] = []

        def open_vault() -> None:
            try:
                opened.append(s.open())
            except BaseException as error:  # reported below
                failed.append(error)

        opener = threading.Thread(target=open_vault)
        opener.start()
        opener.join(0.5)
        assert opener.is_alive(), "the open did not wait for the live shred"
        (pause / "go").touch()
        out, err = shredder.communicate(timeout=60)
        opener.join(60)
    finally:
        (pause / "go").touch()
        if shredder.poll() is None:
            shredder.kill()
    assert shredder.returncode == 0, err
    assert not failed, failed
    v = opened[0]
    try:
        assert v.recovered_receipts == []
        receipt = json.loads(out)
        assert receipt["customer"] == s.target
        assert receipt["entry"]["actor"] == "admin"
        assert verify_receipt(receipt, trust_embedded_key=True).ok
        with pytest.raises(ShreddedError):
            v.admin().list_records(s.target, purpose=PURPOSE)
        assert v.verify_log().ok
        shreds = [e for e in log_entries(v) if e["action"] == "customer.shred"]
        assert len(shreds) == 1
    finally:
        v.close()


_SHRED_EXPIRED = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url = sys.argv[1:4]
with Vault.open(path, keyfile=keyfile, data_url=data_url or None) as vault:
    vault.admin().shred_expired()
"""


def test_a_bulk_shred_killed_midway_leaves_a_scrub_that_the_next_open_does(
    tmp_path: Path, keyfile: Path
) -> None:
    """shred --expired rebuilds the keystore once at its end; killed before that, the
    keystore keeps a mark and the next open rebuilds it (and finishes the receipts)."""
    from datetime import UTC, datetime

    path = tmp_path / "v"
    with Vault.create(path, keyfile=keyfile) as v:
        s = v.admin()
        due = [s.add_customer(retain_until=datetime(2000, 1, 1, tzinfo=UTC)) for _ in range(3)]
    done = run_python(_SHRED_EXPIRED, str(path), str(keyfile), "", crash_at="shred:after-finish")
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    store = KeyStore.open(path / "keys.db")
    try:
        assert store.get_meta("scrub_due") == "1"
    finally:
        store.close()
    with Vault.open(path, keyfile=keyfile) as v:
        (first,) = [r.customer for r in v.recovered_receipts]
        assert first in due
        assert v._ctx.keys.store.get_meta("scrub_due") is None
        result = v.admin().shred_expired()
        assert sorted(r.customer for r in result.receipts) == sorted(set(due) - {first})
        assert not result.scrub_pending
        assert v.verify_log().ok
