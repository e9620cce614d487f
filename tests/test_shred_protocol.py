"""Crypto-shredding protocol (DESIGN §7): what a shred makes impossible, what it logs,
what it refuses, and what it costs. Real vaults on both data stores, real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from shredvault.vault import (
    AccessDeniedError,
    Auditor,
    LegalHoldError,
    NotFoundError,
    SchemaError,
    Session,
    ShreddedError,
    Vault,
    verify_receipt,
)
from shredvault.vault.ids import CUSTOMER, new_id
from shredvault.vault.store import checkpoints, customers, log, records

REPO = Path(__file__).resolve().parents[1]
PURPOSE = "service"
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- helpers -------------------------------------------------------------------------


def open_profile_vault(make_vault: Callable[..., Vault], **kwargs: Any) -> Vault:
    v = make_vault(**kwargs)
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE, "billing"])
    return v


def add_with_records(s: Session, count: int, *, ref: str | None = None) -> tuple[str, list[str]]:
    cid = s.add_customer(ref=ref)
    if count == 0:
        return cid, []
    rids = s.put_many(
        [
            (cid, "profile", {"name": f"Person {i}", "phone": f"+44 20 7946 {i:04d}"})
            for i in range(count)
        ],
        purpose=PURPOSE,
    )
    return cid, rids


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def customer_row(v: Vault, cid: str) -> dict[str, Any]:
    row = v._ctx.data.read(
        lambda c: c.execute(select(customers).where(customers.c.id == cid)).one()._mapping
    )
    return dict(row)


def record_count(v: Vault, cid: str) -> int:
    rows = v._ctx.data.read(
        lambda c: c.execute(select(records.c.id).where(records.c.customer_id == cid)).all()
    )
    return len(rows)


def tag_of(v: Vault, cid: str) -> str:
    return v._ctx.keys.customer_keys([cid])[cid].subject_tag.hex()


def state_snapshot(v: Vault) -> tuple[Any, ...]:
    """Everything a refused shred must leave as it was: customer rows, ciphertext rows,
    wrapped DEKs and subject tags."""
    cust = v._ctx.data.read(lambda c: sorted(tuple(r) for r in c.execute(select(customers)).all()))
    recs = v._ctx.data.read(
        lambda c: sorted(
            (str(r.id), str(r.customer_id), bytes(r.ciphertext))
            for r in c.execute(select(records.c.id, records.c.customer_id, records.c.ciphertext))
        )
    )
    conn = v._ctx.keys.store._conn
    deks = sorted(conn.execute("SELECT customer_id, version, epoch, wrapped FROM deks"))
    tags = sorted(conn.execute("SELECT customer_id, tag FROM subject_tags"))
    return cust, recs, deks, tags


def keystore_has(v: Vault, cid: str) -> tuple[bool, bool]:
    store = v._ctx.keys.store
    return bool(store.deks([cid])), bool(store.subject_tags([cid]))


def assert_log_verifies(v: Vault, data_url: str | None) -> None:
    report = v.verify_log()
    assert report.ok, report.message
    with Auditor.open(v.path, data_url=data_url) as auditor:
        audit = auditor.verify()
    assert audit.ok, audit.message


def every_record_call(s: Session, cid: str, rid: str) -> dict[str, Callable[[], object]]:
    return {
        "get": lambda: s.get(cid, rid, purpose=PURPOSE),
        "get_many": lambda: s.get_many([(cid, rid)], purpose=PURPOSE),
        "list_records": lambda: s.list_records(cid, purpose=PURPOSE),
        "update": lambda: s.update(cid, rid, {"phone": "+1 555 0100"}, purpose=PURPOSE),
        "delete": lambda: s.delete(cid, rid, purpose=PURPOSE),
        "put": lambda: s.put(cid, "profile", {"name": "New"}, purpose=PURPOSE),
    }


@pytest.fixture
def vault(make_vault: Callable[..., Vault]) -> Vault:
    return open_profile_vault(make_vault)


# -- what a shred makes impossible ---------------------------------------------------


@pytest.mark.parametrize("call", ["get", "get_many", "list_records", "update", "delete", "put"])
def test_every_record_call_raises_shredded_after_shred(vault: Vault, call: str) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 3)
    s.get(cid, rids[0], purpose=PURPOSE)
    s.shred(cid, reason="erasure request")
    before = state_snapshot(vault)
    with pytest.raises(ShreddedError) as caught:
        every_record_call(s, cid, rids[0])[call]()
    assert isinstance(caught.value, NotFoundError)
    assert state_snapshot(vault) == before  # nothing written
    assert record_count(vault, cid) == 0  # the shred took the rows (docs/shredding.md)


def test_shred_drops_the_cached_key_and_the_keystore_rows(vault: Vault) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 2)
    s.get(cid, rids[0], purpose=PURPOSE)
    assert cid in vault._ctx.keys._customers
    s.shred(cid, reason="erasure request")
    assert cid not in vault._ctx.keys._customers
    assert keystore_has(vault, cid) == (False, False)
    assert vault._ctx.keys.customer_keys([cid]) == {}


def test_shred_marks_the_row_shredded_and_clears_its_ref(vault: Vault) -> None:
    s = vault.admin()
    cid, _ = add_with_records(s, 1, ref="crm-4711")
    s.shred(cid, reason="erasure request")
    row = customer_row(vault, cid)
    assert row["state"] == "shredded"
    assert row["ref"] is None
    assert row["shred_intent_seq"] is None
    assert DATE_ONLY.match(row["shredded"])
    shown = s.customer(cid)
    assert (shown.state, shown.ref) == ("shredded", None)


def test_shred_logs_one_intent_one_shred_and_a_checkpoint_at_the_shred(vault: Vault) -> None:
    s = vault.admin()
    cid, _ = add_with_records(s, 4)
    other, other_rids = add_with_records(s, 1)
    tag = tag_of(vault, cid)
    fingerprints = vault._ctx.keys.fingerprints(cid)
    receipt = s.shred(cid, reason="erasure request")

    entries = log_entries(vault)
    intents = [e for e in entries if e["action"] == "customer.shred-intent"]
    shreds = [e for e in entries if e["action"] == "customer.shred"]
    assert len(intents) == 1 and len(shreds) == 1
    intent, shred = intents[0], shreds[0]
    assert intent["subject"] == shred["subject"] == tag
    assert intent["outcome"] == shred["outcome"] == "ok"
    assert intent["seq"] < shred["seq"]
    assert shred["detail"]["intent_seq"] == intent["seq"]
    assert shred["detail"]["reason"] == "erasure request"
    assert shred["detail"]["records"] == 4
    assert shred["detail"]["key_fingerprints"] == fingerprints

    cp_seqs = vault._ctx.data.read(
        lambda c: [int(r.seq) for r in c.execute(select(checkpoints.c.seq))]
    )
    assert shred["seq"] in cp_seqs
    assert receipt.document["checkpoint"]["checkpoint"]["seq"] == shred["seq"]
    assert receipt.document["entry"]["seq"] == shred["seq"]
    assert verify_receipt(receipt.to_json(), public_key=vault.public_key).ok
    assert s.get(other, other_rids[0], purpose=PURPOSE).fields["name"] == "Person 0"


def test_log_verifies_after_shred(vault: Vault, backend: str | None) -> None:
    s = vault.admin()
    cid, _ = add_with_records(s, 3)
    s.shred(cid, reason="erasure request")
    assert_log_verifies(vault, backend)


# -- another process with the key cached -------------------------------------------

_READER = r"""
import json, sys
from shredvault.vault import NotFoundError, ShreddedError, Vault

path, keyfile, data_url, cid, rid, other, other_rid = sys.argv[1:8]
v = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
s = v.admin()
fields = s.get(cid, rid, purpose="service").fields  # unwraps the DEK and caches it here
print(json.dumps({"fields": fields, "cached": cid in v._ctx.keys._customers}), flush=True)
sys.stdin.readline()  # the test process shreds cid now
calls = {
    "get": lambda: s.get(cid, rid, purpose="service"),
    "get_many": lambda: s.get_many([(cid, rid)], purpose="service"),
    "list_records": lambda: s.list_records(cid, purpose="service"),
    "update": lambda: s.update(cid, rid, {"phone": "+1 555 0100"}, purpose="service"),
    "delete": lambda: s.delete(cid, rid, purpose="service"),
    "put": lambda: s.put(cid, "profile", {"name": "New"}, purpose="service"),
}
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = "returned data"
    except ShreddedError as error:
        out[name] = "ShreddedError" if isinstance(error, NotFoundError) else "not a NotFoundError"
    except Exception as error:
        out[name] = type(error).__name__
out["cached_after"] = cid in v._ctx.keys._customers
out["other"] = s.get(other, other_rid, purpose="service").fields["name"]
v.close()
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def reader_process(
    vault: Vault, keyfile: Path, backend: str | None
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start another process that opens the vault, reads one record (so the customer's
    DEK is cached there), prints what it read and waits for a line on stdin."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(vault.path), str(keyfile), backend or "", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "SHREDVAULT_CRASH_AT"},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_other_process_with_a_cached_key_cannot_read_after_shred(
    vault: Vault, reader_process: Callable[..., subprocess.Popen[str]]
) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 2)
    other, other_rids = add_with_records(s, 1)
    proc = reader_process(cid, rids[0], other, other_rids[0])
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    assert json.loads(line) == {
        "fields": {"name": "Person 0", "phone": "+44 20 7946 0000"},
        "cached": True,
    }

    s.shred(cid, reason="erasure request")
    out_text, err_text = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, err_text
    out = json.loads(out_text)
    for call in ("get", "get_many", "list_records", "update", "delete", "put"):
        assert out[call] == "ShreddedError", (call, out)
    assert out["cached_after"] is False
    assert out["other"] == "Person 0"
    assert record_count(vault, cid) == 0
    assert record_count(vault, other) == 1
    assert customer_row(vault, cid)["state"] == "shredded"


# -- refusals change nothing -------------------------------------------------------


def test_shred_of_an_unknown_customer_raises_not_found_and_changes_nothing(
    vault: Vault,
) -> None:
    s = vault.admin()
    other, other_rids = add_with_records(s, 2)
    before = state_snapshot(vault)
    seq = vault.head.seq
    unknown = new_id(CUSTOMER)
    with pytest.raises(NotFoundError) as caught:
        s.shred(unknown, reason="erasure request")
    assert not isinstance(caught.value, ShreddedError)
    assert state_snapshot(vault) == before
    new = log_entries(vault)[seq:]
    assert [(e["action"], e["outcome"]) for e in new] == [("customer.shred", "error")]
    assert unknown not in json.dumps(new)
    assert s.get(other, other_rids[1], purpose=PURPOSE).fields["name"] == "Person 1"


def test_shred_of_a_shredded_customer_raises_shredded_and_changes_nothing(
    vault: Vault, backend: str | None
) -> None:
    s = vault.admin()
    cid, _ = add_with_records(s, 2)
    other, other_rids = add_with_records(s, 1)
    s.shred(cid, reason="erasure request")
    before = state_snapshot(vault)
    seq = vault.head.seq
    with pytest.raises(ShreddedError):
        s.shred(cid, reason="again")
    assert state_snapshot(vault) == before
    new = log_entries(vault)[seq:]
    assert [(e["action"], e["outcome"]) for e in new] == [("customer.shred", "error")]
    ok_shreds = [
        e for e in log_entries(vault) if e["action"] == "customer.shred" and e["outcome"] == "ok"
    ]
    assert len(ok_shreds) == 1
    assert s.get(other, other_rids[0], purpose=PURPOSE).fields["name"] == "Person 0"
    assert_log_verifies(vault, backend)


def test_shred_of_a_held_customer_raises_legal_hold_and_keeps_its_keys(vault: Vault) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 2)
    s.hold(cid)
    tag = tag_of(vault, cid)
    before = state_snapshot(vault)
    seq = vault.head.seq
    with pytest.raises(LegalHoldError):
        s.shred(cid, reason="erasure request")
    assert state_snapshot(vault) == before
    assert keystore_has(vault, cid) == (True, True)
    new = log_entries(vault)[seq:]
    assert [(e["action"], e["outcome"], e["subject"]) for e in new] == [
        ("customer.shred", "denied", tag)
    ]
    row = customer_row(vault, cid)
    assert (row["state"], bool(row["legal_hold"])) == ("active", True)
    assert s.get(cid, rids[1], purpose=PURPOSE).fields["name"] == "Person 1"


def test_release_then_shred_succeeds(vault: Vault, backend: str | None) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 2)
    s.hold(cid)
    with pytest.raises(LegalHoldError):
        s.shred(cid, reason="erasure request")
    s.release(cid)
    receipt = s.shred(cid, reason="erasure request")
    assert verify_receipt(receipt.to_json(), public_key=vault.public_key).ok
    with pytest.raises(ShreddedError):
        s.get(cid, rids[0], purpose=PURPOSE)
    row = customer_row(vault, cid)
    assert (row["state"], bool(row["legal_hold"])) == ("shredded", False)
    assert_log_verifies(vault, backend)


def test_shred_by_a_non_admin_is_denied_and_changes_nothing(vault: Vault) -> None:
    s = vault.admin()
    cid, rids = add_with_records(s, 1)
    operator = vault.login(s.add_principal("ops-1", role="operator"))
    before = state_snapshot(vault)
    seq = vault.head.seq
    with pytest.raises(AccessDeniedError):
        operator.shred(cid, reason="erasure request")
    assert state_snapshot(vault) == before
    new = log_entries(vault)[seq:]
    assert [(e["action"], e["outcome"], e["actor"]) for e in new] == [
        ("customer.shred", "denied", "ops-1")
    ]
    assert s.get(cid, rids[0], purpose=PURPOSE).fields["name"] == "Person 0"


# -- retention ---------------------------------------------------------------------


class ManualClock:
    """An aware clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def test_shred_expired_shreds_only_customers_past_retention_and_not_held(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    clock = ManualClock(datetime(2030, 1, 1, 9, 0, tzinfo=UTC))
    v = open_profile_vault(make_vault, clock=clock)
    s = v.admin()
    start = clock.now
    due = s.add_customer(retain_until=start + timedelta(days=1))
    due_held = s.add_customer(retain_until=start + timedelta(days=1))
    not_due = s.add_customer(retain_until=start + timedelta(days=30))
    forever = s.add_customer()
    s.hold(due_held)
    s.put(not_due, "profile", {"name": "Kept"}, purpose=PURPOSE)

    early = s.shred_expired()
    assert (early.receipts, early.held) == ([], [])

    clock.advance(days=2)
    result = s.shred_expired(reason="retention period ended")
    assert [r.customer for r in result.receipts] == [due]
    assert result.held == [due_held]
    assert verify_receipt(result.receipts[0].to_json(), public_key=v.public_key).ok
    states = {c: customer_row(v, c)["state"] for c in (due, due_held, not_due, forever)}
    assert states == {due: "shredded", due_held: "active", not_due: "active", forever: "active"}
    assert keystore_has(v, due_held) == (True, True)
    assert customer_row(v, due)["shredded"] == "2030-01-03"

    again = s.shred_expired()
    assert (again.receipts, again.held) == ([], [due_held])
    assert_log_verifies(v, backend)


def test_the_dry_run_lists_who_is_due_and_who_is_held_and_changes_nothing(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    clock = ManualClock(datetime(2030, 1, 1, 9, 0, tzinfo=UTC))
    v = open_profile_vault(make_vault, clock=clock)
    s = v.admin()
    due = s.add_customer(retain_until=clock.now + timedelta(days=1))
    held = s.add_customer(retain_until=clock.now + timedelta(hours=1))
    later = s.add_customer(retain_until=clock.now + timedelta(days=30))
    s.hold(held)
    assert s.expired_customers().to_json() == {"due": {}, "held": {}, "refs": {}}
    clock.advance(days=2)
    before = {c: customer_row(v, c) for c in (due, held, later)}
    preview = s.expired_customers()
    assert preview.due == {due: "2030-01-02T09:00:00.000000Z"}
    assert preview.held == {held: "2030-01-01T10:00:00.000000Z"}
    assert {c: customer_row(v, c) for c in (due, held, later)} == before
    assert keystore_has(v, due) == (True, True)
    last = log_entries(v)[-1]
    assert (last["action"], last["outcome"]) == ("customer.list", "ok")
    assert last["detail"] == {"dry_run": True, "expired": 1, "held": 1}
    # What the dry run listed is what the real run does.
    result = s.shred_expired()
    assert [r.customer for r in result.receipts] == list(preview.due)
    assert result.held == list(preview.held)
    assert_log_verifies(v, backend)


def test_the_dry_run_needs_the_shred_action(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    v = open_profile_vault(make_vault)
    admin = v.admin()
    admin.add_customer(retain_until=datetime(2000, 1, 1, tzinfo=UTC))
    token = admin.add_principal("olga", role="operator")
    with pytest.raises(AccessDeniedError):
        v.login(token).expired_customers()
    last = log_entries(v)[-1]
    assert (last["action"], last["outcome"], last["actor"]) == ("customer.list", "denied", "olga")


# -- cost ----------------------------------------------------------------------------


class DayClock:
    """1 ms per reading; ``next_day`` moves to the next UTC day."""

    def __init__(self) -> None:
        self.now = datetime(2031, 3, 4, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def next_day(self) -> None:
        self.now += timedelta(days=1)


class StatementTrace:
    """Every statement the data store and the keystore run, and the rows they change."""

    def __init__(self, v: Vault) -> None:
        self.v = v
        self.data: list[str] = []
        self.data_rows_changed = 0
        self.keystore: list[str] = []
        self._changes_at_start = 0

    def _after(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.data.append(statement)
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            self.data_rows_changed += max(cursor.rowcount, 0)

    def __enter__(self) -> StatementTrace:
        event.listen(self.v._ctx.data.engine, "after_cursor_execute", self._after)
        conn = self.v._ctx.keys.store._conn
        self._changes_at_start = conn.total_changes
        conn.set_trace_callback(self.keystore.append)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.v._ctx.data.engine, "after_cursor_execute", self._after)
        conn = self.v._ctx.keys.store._conn
        conn.set_trace_callback(None)
        self.keystore_rows_changed = conn.total_changes - self._changes_at_start


def test_shred_runs_the_same_statements_for_one_record_as_for_two_thousand(
    make_vault: Callable[..., Vault],
) -> None:
    clock = DayClock()
    v = open_profile_vault(make_vault, checkpoint_interval=10**9, clock=clock)
    s = v.admin()
    warm, _ = add_with_records(s, 1)
    small, _ = add_with_records(s, 1)
    large, _ = add_with_records(s, 2000)
    s.shred(warm, reason="warm-up")

    # Each shred on a day of its own: a shred also rewrites the tombstones of its day
    # (docs/shredding.md, "Unlinkability"), a cost in shreds per day, not in records.
    clock.next_day()
    with StatementTrace(v) as for_small:
        s.shred(small, reason="erasure request")
    clock.next_day()
    with StatementTrace(v) as for_large:
        s.shred(large, reason="erasure request")

    assert for_large.data == for_small.data
    # The only difference: the one DELETE of the customer's record rows (step 3,
    # docs/shredding.md "Unlinkability") removes 2,000 rows instead of 1.
    assert for_large.data_rows_changed - for_small.data_rows_changed == 1999
    assert len(for_large.keystore) == len(for_small.keystore)
    assert for_large.keystore_rows_changed == for_small.keystore_rows_changed
    touching_records = [q for q in for_large.data if "sv_records" in q]
    assert re.match(r"(?is)^\s*select\s+count\(\*\)", touching_records[0])
    writing = r"(?is)^\s*(insert\s+into|update|delete\s+from)\s+sv_records\b"
    assert [q for q in for_large.data if re.match(writing, q)] == [touching_records[1]]
    assert re.match(r"(?is)^\s*delete\s+from\s+sv_records\s", touching_records[1])
    assert not [q for q in for_large.keystore if "sv_records" in q]


def test_shred_deletes_the_customers_record_rows_and_no_others(vault: Vault) -> None:
    s = vault.admin()
    cid, _rids = add_with_records(s, 2000)
    other, other_rids = add_with_records(s, 3)
    s.shred(cid, reason="erasure request")
    assert record_count(vault, cid) == 0
    assert sorted(r.id for r in s.list_records(other, purpose=PURPOSE)) == sorted(other_rids)
    (shred,) = [e for e in log_entries(vault) if e["action"] == "customer.shred"]
    assert shred["detail"]["records"] == 2000


def rows_of(v: Vault, cid: str) -> list[dict[str, Any]]:
    return v._ctx.data.read(
        lambda c: [
            dict(r._mapping) for r in c.execute(select(records).where(records.c.customer_id == cid))
        ]
    )


def put_back(v: Vault, rows: list[dict[str, Any]]) -> None:
    """Record rows of a shredded customer as a vault from before shreds deleted them
    left them behind (the rows are the customer's own, written back unchanged)."""
    with v._ctx.data.engine.begin() as conn:
        conn.execute(insert(records), rows)


def test_compact_removes_exactly_the_shredded_customers_rows(
    vault: Vault, backend: str | None
) -> None:
    s = vault.admin()
    gone_a, _ = add_with_records(s, 1200)
    gone_b, _ = add_with_records(s, 3)
    kept, kept_rids = add_with_records(s, 5)
    held, held_rids = add_with_records(s, 2)
    s.hold(held)
    left = rows_of(vault, gone_a) + rows_of(vault, gone_b)
    s.shred(gone_a, reason="erasure request")
    s.shred(gone_b, reason="erasure request")
    put_back(vault, left)
    seq = vault.head.seq

    reported: list[int] = []
    removed = s.compact(progress=reported.append)

    assert removed == 1203 == sum(reported)
    assert record_count(vault, gone_a) == record_count(vault, gone_b) == 0
    assert record_count(vault, kept) == 5 and record_count(vault, held) == 2
    assert sorted(r.id for r in s.list_records(kept, purpose=PURPOSE)) == sorted(kept_rids)
    assert sorted(r.id for r in s.list_records(held, purpose=PURPOSE)) == sorted(held_rids)
    compacts = [e for e in log_entries(vault)[seq:] if e["action"] == "vault.compact"]
    assert sum(e["detail"]["records"] for e in compacts) == 1203
    assert len(compacts) == 3  # one entry per committed batch, one for the rewrite
    assert compacts[-1]["detail"] == {"records": 0, "rewritten": True}
    assert all(e["outcome"] == "ok" and e["subject"] is None for e in compacts)
    assert s.compact() == 0
    assert_log_verifies(vault, backend)


def test_retention_can_be_changed_and_the_next_expiry_run_follows_it(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    clock = ManualClock(datetime(2030, 1, 1, 9, 0, tzinfo=UTC))
    v = open_profile_vault(make_vault, clock=clock)
    s = v.admin()
    renewed = s.add_customer(retain_until=clock.now + timedelta(days=1))
    ended = s.add_customer()
    year = clock.now + timedelta(days=365)
    assert s.set_retention(renewed, year) == "2031-01-01T09:00:00.000000Z"
    assert s.set_retention(ended, "2030-01-01T10:00:00+00:00") == "2030-01-01T10:00:00.000000Z"
    last = log_entries(v)[-1]
    assert (last["action"], last["detail"]) == (
        "customer.retain",
        {"retain_until": "2030-01-01T10:00:00.000000Z"},
    )
    assert last["subject"] is not None
    clock.advance(days=2)
    result = s.shred_expired()
    assert [r.customer for r in result.receipts] == [ended]
    assert customer_row(v, renewed)["state"] == "active"
    assert s.set_retention(renewed, None) is None
    assert customer_row(v, renewed)["retain_until"] is None
    assert_log_verifies(v, backend)


def test_bad_retention_changes_are_refused_and_change_nothing(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    v = open_profile_vault(make_vault)
    s = v.admin()
    cid = s.add_customer(retain_until=datetime(2031, 1, 1, tzinfo=UTC))
    gone = s.add_customer()
    s.shred(gone, reason="erasure request")
    before = customer_row(v, cid)
    with pytest.raises(SchemaError):
        s.set_retention(cid, "next tuesday")
    with pytest.raises(NotFoundError):
        s.set_retention("cus_" + "a" * 26, None)
    with pytest.raises(ShreddedError):
        s.set_retention(gone, None)
    operator = v.login(s.add_principal("olga", role="operator"))
    with pytest.raises(AccessDeniedError):
        operator.set_retention(cid, None)
    last = log_entries(v)[-1]
    assert (last["action"], last["outcome"], last["actor"]) == ("customer.retain", "denied", "olga")
    assert customer_row(v, cid) == before
    assert_log_verifies(v, backend)
