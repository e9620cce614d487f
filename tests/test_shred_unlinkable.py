"""Unlinkability after a shred (DESIGN §6, §7): the old log entries stay and still
verify, but nothing left in the vault ties them to the customer's id or ref. The
subject tag that named the customer in those entries is gone from the keystore and
never sat in the customer table; the log never held the id or the ref."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import Auditor, Vault, verify_export
from shredvault.vault.store import checkpoints, customers, log, records

from residue import KEYSTORE_FILES

PURPOSE = "service"


class TickingClock:
    """Moves 1 ms per reading; ``jump`` moves it further between customers."""

    def __init__(self) -> None:
        self.now = datetime(2031, 3, 4, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def jump(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class AfterShred:
    vault: Vault
    data_url: str | None
    customer: str
    ref: str
    tag: str
    record_ids: list[str]


def sql_rows(v: Vault, table: Any) -> list[dict[str, Any]]:
    return v._ctx.data.read(lambda c: [dict(r._mapping) for r in c.execute(select(table))])


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def as_text(value: object) -> str:
    return bytes(value).decode("latin-1") if isinstance(value, bytes | memoryview) else str(value)


@pytest.fixture
def after_shred(make_vault: Callable[..., Vault], backend: str | None) -> AfterShred:
    """Five customers added an hour apart; the third, with records read, updated and
    listed under its subject tag, is shredded."""
    clock = TickingClock()
    v = make_vault(clock=clock)
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    ids = []
    for i in range(5):
        ids.append(
            s.add_customer(
                ref=f"crm-{i:04d}",
                retain_until=clock.now + timedelta(days=3650),
                consent={"transfer": i % 2 == 0},
            )
        )
        clock.jump(hours=1)
    target = ids[2]
    rids = s.put_many(
        [(cid, "profile", {"name": f"N{i}", "phone": "1"}) for i, cid in enumerate(ids)],
        purpose=PURPOSE,
    )
    mine = [rids[2], s.put(target, "profile", {"name": "Second"}, purpose=PURPOSE)]
    s.get(target, mine[0], purpose=PURPOSE)
    s.update(target, mine[0], {"phone": "2"}, purpose=PURPOSE)
    s.list_records(target, purpose=PURPOSE)
    s.customer(target)
    tag = v._ctx.keys.customer_keys([target])[target].subject_tag.hex()
    s.shred(target, reason="erasure request")
    return AfterShred(v, backend, target, "crm-0002", tag, mine)


def test_the_old_subject_tag_is_gone_from_every_keystore_file(after_shred: AfterShred) -> None:
    v = after_shred.vault
    assert v._ctx.keys.store.subject_tags([after_shred.customer]) == {}
    tag = bytes.fromhex(after_shred.tag)
    for name in KEYSTORE_FILES:
        path = Path(v.path) / name
        if path.exists():
            data = path.read_bytes()
            assert tag not in data, name
            assert after_shred.tag.encode() not in data, name
            assert after_shred.tag.upper().encode() not in data, name


def test_the_old_subject_tag_is_in_no_column_of_the_customer_table(
    after_shred: AfterShred,
) -> None:
    rows = sql_rows(after_shred.vault, customers)
    assert len(rows) == 5
    for row in rows:
        for column, value in row.items():
            text = as_text(value).lower()
            assert after_shred.tag not in text, column
            assert bytes.fromhex(after_shred.tag).decode("latin-1") not in as_text(value), column


def test_no_log_entry_or_checkpoint_names_the_customer_id_or_ref(after_shred: AfterShred) -> None:
    v = after_shred.vault
    needles = (after_shred.customer, after_shred.ref)
    for row in sql_rows(v, log):
        for column, value in row.items():
            for needle in needles:
                assert needle not in as_text(value), (row["seq"], column)
    for row in sql_rows(v, checkpoints):
        for needle in needles:
            assert needle not in as_text(row["body"])


def test_the_old_entries_stay_in_the_log_and_still_verify(
    after_shred: AfterShred, tmp_path: Path
) -> None:
    v = after_shred.vault
    old = [e for e in log_entries(v) if e["subject"] == after_shred.tag]
    actions = [e["action"] for e in old]
    assert actions[0] == "customer.add" and actions[-1] == "customer.shred"
    assert {"record.put", "record.get", "record.update", "record.list"} <= set(actions)
    assert v.verify_log().ok
    with Auditor.open(v.path, data_url=after_shred.data_url) as auditor:
        report = auditor.verify()
        assert report.ok, report.message
        export = tmp_path / "log.jsonl"
        with export.open("wb") as out:
            auditor.export(out)
    offline = verify_export(export, public_key=v.public_key)
    assert offline.ok, offline.message


def test_the_shredded_column_holds_a_date_only(after_shred: AfterShred) -> None:
    (row,) = [r for r in sql_rows(after_shred.vault, customers) if r["id"] == after_shred.customer]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["shredded"])
    assert (row["state"], row["ref"]) == ("shredded", None)


def test_after_compact_no_record_row_names_a_record_of_the_old_entries(
    after_shred: AfterShred,
) -> None:
    v = after_shred.vault
    named = {e["record"] for e in log_entries(v) if e["subject"] == after_shred.tag} - {None}
    assert named == set(after_shred.record_ids)
    v.admin().compact()
    remaining = {r["id"] for r in sql_rows(v, records)}
    assert remaining.isdisjoint(named)
    assert len(remaining) == 4  # the other customers' records stay


def _row(after_shred: AfterShred) -> dict[str, Any]:
    (row,) = [r for r in sql_rows(after_shred.vault, customers) if r["id"] == after_shred.customer]
    return row


def test_the_shredded_row_keeps_no_retention_time_that_matches_a_logged_one(
    after_shred: AfterShred,
) -> None:
    kept = _row(after_shred)["retain_until"]
    adds = [e for e in log_entries(after_shred.vault) if e["action"] == "customer.add"]
    matching = [
        e["subject"] for e in adds if kept is not None and e["detail"]["retain_until"] == kept
    ]
    assert matching != [after_shred.tag]


def _parse(text: str) -> datetime:
    if len(text) == 10:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_shredded_rows_creation_time_does_not_pinpoint_its_add_entry(
    after_shred: AfterShred,
) -> None:
    created = _row(after_shred)["created"]
    adds = [e for e in log_entries(after_shred.vault) if e["action"] == "customer.add"]
    guess = None
    if created is not None:
        later = [e for e in adds if _parse(e["ts"]) >= _parse(created)]
        guess = min(later, key=lambda e: e["ts"])["subject"] if later else None
    assert guess != after_shred.tag
