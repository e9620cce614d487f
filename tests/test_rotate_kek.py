"""KEK rotation (DESIGN §3): a new active epoch re-wraps every DEK in batches of 2,000,
each DEK row naming the epoch that wraps it, so a rotation killed between batches
(``SHREDVAULT_CRASH_AT=rotate-kek:batch``, exit 97) leaves every DEK readable and a rerun
finishes the same epoch. Retiring an epoch deletes it once no DEK uses it, and its
wrapped bytes leave keys.db and its WAL. Every step is logged; key events are
checkpointed. Real vaults, real processes."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import fingerprint
from shredvault.vault import Auditor, StorageError, Vault, ids
from shredvault.vault.store import checkpoints, log

from processes import CRASH_EXIT_CODE, run_python

PURPOSE = "service"
BATCH = 2000
KEYSTORE_TS = "2026-01-01T00:00:00.000000Z"

_ROTATE_KEK = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url = sys.argv[1:4]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
print(vault.admin().rotate_kek())
vault.close()
"""


# -- a vault with real customers (records) and keystore-only DEKs (bulk) ----------------


@dataclass
class Populated:
    path: Path
    customers: list[str]
    keystore_only: list[str]
    expected: dict[str, tuple[str, dict[str, str]]]  # record id -> (customer, fields)

    @property
    def all_customers(self) -> list[str]:
        return self.customers + self.keystore_only


def populate(v: Vault, *, customers: int = 4, keystore_only: int = 0) -> Populated:
    """Real customers with three records each, plus DEKs made straight in the keystore
    (no records: they only give the rotation thousands of DEKs to re-wrap)."""
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    cids = [s.add_customer() for _ in range(customers)]
    items = [
        (c, "profile", {"name": f"{c[-5:]}-{i}", "phone": str(i)}) for c in cids for i in (1, 2, 3)
    ]
    rids = s.put_many(items, purpose=PURPOSE)
    expected = {rid: (c, dict(f)) for rid, (c, _k, f) in zip(rids, items, strict=True)}
    bulk = ids.new_ids(ids.CUSTOMER, keystore_only) if keystore_only else []
    if bulk:
        v._ctx.keys.create_customers(bulk, KEYSTORE_TS)
    return Populated(v.path, cids, bulk, expected)


def assert_records_read(v: Vault, pop: Populated) -> None:
    pairs = [(c, rid) for rid, (c, _f) in pop.expected.items()]
    got = v.admin().get_many(pairs, purpose=PURPOSE)
    assert {r.id: dict(r.fields) for r in got} == {rid: f for rid, (_c, f) in pop.expected.items()}


def assert_every_dek_unwraps(v: Vault, pop: Populated) -> None:
    v._ctx.keys.forget(pop.all_customers)  # unwrap from keys.db, not from the cache
    keys = v._ctx.keys.customer_keys(pop.all_customers)  # KeystoreError if any fails to unwrap
    assert set(keys) == set(pop.all_customers)


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def entry_hash(v: Vault, seq: int) -> str:
    return str(
        v._ctx.data.read(
            lambda c: c.execute(select(log.c.hash).where(log.c.seq == seq)).scalar_one()
        )
    )


def stored_checkpoints(v: Vault) -> dict[int, dict[str, Any]]:
    rows = v._ctx.data.read(
        lambda c: c.execute(select(checkpoints.c.seq, checkpoints.c.body)).all()
    )
    return {int(r.seq): json.loads(bytes(r.body)) for r in rows}


def keystore_snapshot(v: Vault) -> tuple[dict[int, bytes], list[tuple[str, int, int, bytes]]]:
    store = v._ctx.keys.store
    cids = [str(r[0]) for r in store._conn.execute("SELECT DISTINCT customer_id FROM deks")]
    deks = sorted((r.customer_id, r.version, r.epoch, r.wrapped) for r in store.deks(cids))
    return store.epochs(), deks


def keystore_files_holding(path: Path, needle: bytes) -> list[str]:
    return [p.name for p in sorted(path.glob("keys.db*")) if needle in p.read_bytes()]


def assert_verifies(v: Vault, data_url: str | None) -> None:
    report = v.verify_log()
    assert report.ok, report.message
    with Auditor.open(v.path, data_url=data_url) as auditor:
        audit = auditor.verify()
    assert audit.ok, audit.message


# -- rotation -----------------------------------------------------------------------------


def test_rotate_kek_makes_a_new_active_epoch_holding_every_dek(sqlite_vault: Vault) -> None:
    pop = populate(sqlite_vault, keystore_only=50)
    epochs_before, deks_before = keystore_snapshot(sqlite_vault)
    total = len(pop.all_customers)

    result = sqlite_vault.admin().rotate_kek()

    assert result == {"epoch": 2, "new_epoch": True, "rewrapped": total, "retired": []}
    status = sqlite_vault.admin().key_status()
    assert status.active_epoch == 2
    assert status.deks_per_epoch == {2: total}
    epochs_after, deks_after = keystore_snapshot(sqlite_vault)
    assert sorted(epochs_after) == [1, 2] and epochs_after[1] == epochs_before[1]
    assert [d[:2] for d in deks_after] == [d[:2] for d in deks_before]
    assert {d[2] for d in deks_after} == {2}
    # Every DEK was re-wrapped: none of the old wrapped bytes is still stored.
    assert not {d[3] for d in deks_before} & {d[3] for d in deks_after}


def test_every_record_reads_the_same_after_rotation_and_reopen(
    make_vault: Any, keyfile: Path, backend: str | None
) -> None:
    v = make_vault()
    pop = populate(v, customers=6)
    v.admin().rotate_kek()
    assert_records_read(v, pop)
    v.close()
    with Vault.open(pop.path, keyfile=keyfile, data_url=backend) as reopened:
        assert reopened._ctx.keys.active_epoch == 2
        assert_records_read(reopened, pop)
        assert_every_dek_unwraps(reopened, pop)
        assert_verifies(reopened, backend)


def test_rotate_kek_with_retire_deletes_the_old_epoch_and_its_bytes_leave_keys_db(
    tmp_path: Path, keyfile: Path
) -> None:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    try:
        pop = populate(v, keystore_only=20)
        old_wrapped = v._ctx.keys.store.epochs()[1]
        # Positive control: the scan finds the bytes while epoch 1 exists.
        assert keystore_files_holding(v.path, old_wrapped)

        result = v.admin().rotate_kek(retire=True)

        assert result["retired"] == [1]
        assert sorted(v._ctx.keys.store.epochs()) == [2]
        assert v.admin().key_status().deks_per_epoch == {2: len(pop.all_customers)}
        assert keystore_files_holding(v.path, old_wrapped) == []
        assert_records_read(v, pop)
    finally:
        v.close()
    assert keystore_files_holding(v.path, old_wrapped) == []
    with Vault.open(v.path, keyfile=keyfile) as reopened:
        assert_records_read(reopened, pop)


def test_retire_epoch_refuses_the_active_epoch_and_changes_nothing(sqlite_vault: Vault) -> None:
    populate(sqlite_vault)
    s = sqlite_vault.admin()
    s.rotate_kek()  # epoch 2 active, epoch 1 unused but kept
    before = keystore_snapshot(sqlite_vault), sqlite_vault.head

    with pytest.raises(StorageError, match="active"):
        s.retire_epoch(2)

    assert (keystore_snapshot(sqlite_vault), sqlite_vault.head) == before
    s.retire_epoch(1)  # the unused, inactive one may go
    assert sorted(sqlite_vault._ctx.keys.store.epochs()) == [2]


def test_retire_epoch_refuses_an_epoch_that_still_wraps_deks_mid_rotation(
    sqlite_vault: Vault,
) -> None:
    pop = populate(sqlite_vault, keystore_only=BATCH + 500)
    s = sqlite_vault.admin()
    refusals: list[tuple[str, dict[int, int]]] = []  # (message, DEKs per epoch) at refusal

    def try_retiring_epoch_1(_rewrapped: int) -> None:
        if refusals:
            return
        before = keystore_snapshot(sqlite_vault), sqlite_vault.head
        with pytest.raises(StorageError) as refused:
            s.retire_epoch(1)
        assert (keystore_snapshot(sqlite_vault), sqlite_vault.head) == before  # nothing changed
        refusals.append((str(refused.value), sqlite_vault._ctx.keys.store.dek_counts()))

    s.rotate_kek(progress=try_retiring_epoch_1)

    total = len(pop.all_customers)
    assert len(refusals) == 1
    message, counts = refusals[0]
    assert "still wraps" in message
    assert counts == {1: total - BATCH, 2: BATCH}
    assert s.key_status().deks_per_epoch == {2: total}


def test_retire_epoch_of_an_unknown_epoch_raises_storage_error(sqlite_vault: Vault) -> None:
    before = keystore_snapshot(sqlite_vault)
    with pytest.raises(StorageError):
        sqlite_vault.admin().retire_epoch(7)
    assert keystore_snapshot(sqlite_vault) == before


def test_rotation_logs_start_batches_done_and_retire_with_checkpoints(
    sqlite_vault: Vault,
) -> None:
    pop = populate(sqlite_vault, keystore_only=2 * BATCH + 300)
    total = len(pop.all_customers)
    old_wrapped = sqlite_vault._ctx.keys.store.epochs()[1]
    head = sqlite_vault.head.seq
    progress: list[int] = []

    sqlite_vault.admin().rotate_kek(retire=True, progress=progress.append)

    assert progress == [BATCH, BATCH, total - 2 * BATCH]
    entries = log_entries(sqlite_vault)[head:]
    assert [e["action"] for e in entries] == [
        "keys.rotate-kek.start",
        "keys.rotate-kek.batch",
        "keys.rotate-kek.batch",
        "keys.rotate-kek.batch",
        "keys.rotate-kek.done",
        "keys.retire-epoch",
    ]
    start, *batches, done, retire = entries
    assert start["detail"] == {"epoch": 2, "resumed": False}
    assert [b["detail"] for b in batches] == [{"epoch": 2, "deks": n} for n in progress]
    assert done["detail"] == {"epoch": 2, "deks": total}
    assert retire["detail"] == {
        "epoch": 1,
        "key_fingerprint": fingerprint(old_wrapped),
        "wal_truncated": True,
        "event": retire["detail"]["event"],  # its id for crash recovery (16 hex digits)
    }
    assert len(retire["detail"]["event"]) == 16
    assert all(e["outcome"] == "ok" and e["actor"] == "admin" for e in entries)

    cps = stored_checkpoints(sqlite_vault)
    for entry in (start, done, retire):
        assert entry["seq"] in cps, entry["action"]
        assert cps[entry["seq"]]["head"] == entry_hash(sqlite_vault, entry["seq"])
    assert not {b["seq"] for b in batches} & set(cps)
    anchor = sqlite_vault._ctx.keys.store.anchor()
    assert anchor is not None and anchor[0] == retire["seq"]
    assert_verifies(sqlite_vault, None)


# -- crash after a committed batch ----------------------------------------------------------


@dataclass
class Crashed:
    pop: Populated
    keyfile: Path
    data_url: str | None
    head: int  # log head before the crashed rotation

    def open(self) -> Vault:
        return Vault.open(self.pop.path, keyfile=self.keyfile, data_url=self.data_url)

    def args(self) -> list[str]:
        return [str(self.pop.path), str(self.keyfile), self.data_url or ""]


def crash_rotation(v: Vault, pop: Populated, keyfile: Path, data_url: str | None) -> Crashed:
    head = v.head.seq
    v.close()
    crashed = Crashed(pop, keyfile, data_url, head)
    done = run_python(_ROTATE_KEK, *crashed.args(), crash_at="rotate-kek:batch")
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    return crashed


@pytest.fixture
def crashed_after_first_batch(make_vault: Any, keyfile: Path, backend: str | None) -> Crashed:
    """A vault with 5,000+ DEKs (three batches) whose rotation died after batch one."""
    v = make_vault()
    pop = populate(v, keystore_only=2 * BATCH + 1000)
    return crash_rotation(v, pop, keyfile, backend)


def test_after_a_crash_every_dek_unwraps_from_one_of_two_epochs(
    crashed_after_first_batch: Crashed,
) -> None:
    crashed = crashed_after_first_batch
    total = len(crashed.pop.all_customers)
    with crashed.open() as v:
        assert v._ctx.keys.store.dek_counts() == {1: total - BATCH, 2: BATCH}
        assert sorted(v._ctx.keys.store.epochs()) == [1, 2] and v._ctx.keys.active_epoch == 2
        assert_every_dek_unwraps(v, crashed.pop)
        assert_records_read(v, crashed.pop)
        with pytest.raises(StorageError, match="still wraps"):
            v.admin().retire_epoch(1)  # half the DEKs still need it
        actions = [e["action"] for e in log_entries(v)[crashed.head :]]
        assert actions[:2] == ["vault.unlock", "keys.rotate-kek.start"]
        assert actions.count("keys.rotate-kek.batch") == 1
        assert "keys.rotate-kek.done" not in actions
        assert_verifies(v, crashed.data_url)


def test_rerunning_rotate_kek_after_a_crash_finishes_the_same_epoch(
    crashed_after_first_batch: Crashed,
) -> None:
    crashed = crashed_after_first_batch
    total = len(crashed.pop.all_customers)
    with crashed.open() as v:
        result = v.admin().rotate_kek(retire=True)

        assert result == {
            "epoch": 2,
            "new_epoch": False,
            "rewrapped": total - BATCH,
            "retired": [1],
        }
        assert sorted(v._ctx.keys.store.epochs()) == [2]
        assert v._ctx.keys.store.dek_counts() == {2: total}
        starts = [e for e in log_entries(v) if e["action"] == "keys.rotate-kek.start"]
        assert [s["detail"] for s in starts] == [
            {"epoch": 2, "resumed": False},
            {"epoch": 2, "resumed": True},
        ]
        assert_every_dek_unwraps(v, crashed.pop)
        assert_records_read(v, crashed.pop)
        assert_verifies(v, crashed.data_url)


def test_rerun_after_a_crash_at_the_last_batch_finishes_without_a_third_epoch(
    tmp_path: Path, keyfile: Path
) -> None:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    pop = populate(v)  # fewer than 2,000 DEKs: the first batch is the last
    crashed = crash_rotation(v, pop, keyfile, None)
    with crashed.open() as reopened:
        assert reopened._ctx.keys.store.dek_counts() == {2: len(pop.all_customers)}
        actions = [e["action"] for e in log_entries(reopened)[crashed.head :]]
        assert "keys.rotate-kek.done" not in actions  # the rotation never said it finished

        result = reopened.admin().rotate_kek()

        assert (result["epoch"], result["new_epoch"]) == (2, False)
        assert sorted(reopened._ctx.keys.store.epochs()) == [1, 2]


@pytest.mark.slow
def test_a_retired_epoch_is_logged_even_when_the_wal_cannot_be_truncated(
    sqlite_vault: Vault,
) -> None:
    from shredvault.keys import KeystoreError

    populate(sqlite_vault)
    s = sqlite_vault.admin()
    s.rotate_kek()
    reader = sqlite3.connect(sqlite_vault.path / "keys.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM deks").fetchone()  # holds a WAL snapshot
        with pytest.raises((StorageError, KeystoreError)) as raised:
            s.retire_epoch(1)
    finally:
        reader.close()
    gone = 1 not in sqlite_vault._ctx.keys.store.epochs()
    logged = [e for e in log_entries(sqlite_vault) if e["action"] == "keys.retire-epoch"]
    # A key deletion that happened must be in the log, with a checkpoint at it.
    assert not gone or [e["detail"]["epoch"] for e in logged] == [1]
    assert isinstance(raised.value, StorageError)
