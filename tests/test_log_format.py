"""The access-log format (DESIGN §6): canonical JSON equal to RFC 8785 for every entry
shape, template-built bodies equal to canonical(), export lines, the hash rule, the
genesis link, gap-free seqs and timestamps from the injected clock (clamped, never
going backwards)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from shredvault.vault import Auditor, Vault
from shredvault.vault.canonical import canonical, canonical_text
from shredvault.vault.clock import format_ts
from shredvault.vault.log import GENESIS, HASH_PREFIX, Event, encode_body, entry_hash, export_line

MAX_INT = 2**53 - 1
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
ENTRY_KEYS = {
    "v",
    "seq",
    "ts",
    "actor",
    "role",
    "action",
    "subject",
    "record",
    "purpose",
    "outcome",
    "detail",
    "prev",
}


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


START = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)

# -- strategies ---------------------------------------------------------------------------

texts = st.text()  # any Unicode scalar values: controls, quotes, astral planes
ascii_keys = st.text(alphabet=st.characters(max_codepoint=127), max_size=12)
ints = st.integers(min_value=-MAX_INT, max_value=MAX_INT)
json_scalars = st.one_of(st.none(), st.booleans(), ints, texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ascii_keys, inner, max_size=4),
    max_leaves=20,
)
details = st.dictionaries(ascii_keys, json_values, max_size=5)
optional_texts = st.none() | texts
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(format_ts)
events = st.builds(
    Event,
    actor=texts,
    role=texts,
    action=texts,
    outcome=st.sampled_from(["ok", "denied", "error"]),
    subject=optional_texts,
    record=optional_texts,
    purpose=optional_texts,
    detail=details,
)


def entry_dict(ev: Event, seq: int, ts: str, prev: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "seq": seq,
        "ts": ts,
        "actor": ev.actor,
        "role": ev.role,
        "action": ev.action,
        "subject": ev.subject,
        "record": ev.record,
        "purpose": ev.purpose,
        "outcome": ev.outcome,
        "detail": detail,
        "prev": prev,
    }


# -- canonical JSON is RFC 8785 -----------------------------------------------------------


@settings(max_examples=200)
@given(value=json_values)
def test_canonical_equals_rfc8785_for_every_json_value_the_vault_can_produce(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)
    assert canonical_text(value).encode("utf-8") == canonical(value)


@settings(max_examples=200)
@given(ev=events, seq=st.integers(min_value=1, max_value=MAX_INT), ts=timestamps, prev=hex64)
def test_canonical_equals_rfc8785_for_every_log_entry_shape(
    ev: Event, seq: int, ts: str, prev: str
) -> None:
    entry = entry_dict(ev, seq, ts, prev, dict(ev.detail))
    assert canonical(entry) == rfc8785.dumps(entry)
    with_hash = {**entry, "hash": entry_hash(canonical(entry))}
    assert canonical(with_hash) == rfc8785.dumps(with_hash)


def test_canonical_has_no_whitespace_sorts_keys_and_refuses_floats_and_nan() -> None:
    assert canonical({"b": [1, 2], "a": {"d": None, "c": True}}) == (
        b'{"a":{"c":true,"d":null},"b":[1,2]}'
    )
    assert canonical("é\u2028😀") == '"é\u2028😀"'.encode()
    with pytest.raises(ValueError):
        canonical(float("nan"))
    with pytest.raises(ValueError):
        canonical(float("inf"))


# -- the template body equals canonical() ------------------------------------------------


@settings(max_examples=200)
@given(ev=events, seq=st.integers(min_value=1, max_value=MAX_INT), ts=timestamps, prev=hex64)
def test_encode_body_is_byte_identical_to_canonical_of_the_entry(
    ev: Event, seq: int, ts: str, prev: str
) -> None:
    detail = dict(ev.detail)
    body = encode_body(ev, seq, ts, prev, detail, {})
    assert body == canonical(entry_dict(ev, seq, ts, prev, detail))
    assert body == rfc8785.dumps(entry_dict(ev, seq, ts, prev, detail))


@given(first=events, second=events, ts=timestamps, prev=hex64)
def test_encode_body_memo_shared_across_a_batch_changes_no_byte(
    first: Event, second: Event, ts: str, prev: str
) -> None:
    memo: dict[Any, str] = {}
    for seq, ev in enumerate((first, second, first), start=1):
        shared = encode_body(ev, seq, ts, prev, dict(ev.detail), memo)
        assert shared == encode_body(ev, seq, ts, prev, dict(ev.detail), {})


# -- export lines and hashes --------------------------------------------------------------


@settings(max_examples=200)
@given(ev=events, seq=st.integers(min_value=1, max_value=MAX_INT), ts=timestamps, prev=hex64)
def test_export_line_is_canonical_json_of_the_entry_with_its_hash(
    ev: Event, seq: int, ts: str, prev: str
) -> None:
    detail = dict(ev.detail)
    body = encode_body(ev, seq, ts, prev, detail, {})
    digest = entry_hash(body)
    expected = canonical({**entry_dict(ev, seq, ts, prev, detail), "hash": digest})
    assert export_line(body, digest) == expected


def test_export_line_finds_the_top_level_outcome_when_detail_has_one_too() -> None:
    ev = Event("a", "admin", "x", detail={"a": 1, "outcome": "ok", "z": {"outcome": "denied"}})
    body = encode_body(ev, 1, format_ts(START), GENESIS, dict(ev.detail), {})
    digest = entry_hash(body)
    expected = canonical(
        {**entry_dict(ev, 1, format_ts(START), GENESIS, dict(ev.detail)), "hash": digest}
    )
    assert export_line(body, digest) == expected


@given(body=st.binary(max_size=300))
def test_entry_hash_is_sha256_of_the_domain_prefix_and_the_body(body: bytes) -> None:
    assert HASH_PREFIX == b"shredvault/log/v1\n"
    assert entry_hash(body) == hashlib.sha256(b"shredvault/log/v1\n" + body).hexdigest()


# -- the stored chain --------------------------------------------------------------------


def stored_log(v: Vault, backend: str | None) -> list[tuple[int, str, str, bytes]]:
    url = backend or f"sqlite:///{v.path / 'data.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, prev, hash, body FROM sv_log ORDER BY seq")).all()
    finally:
        engine.dispose()
    return [(int(r.seq), str(r.prev), str(r.hash), bytes(r.body)) for r in rows]


@pytest.fixture
def busy_vault(make_vault: Any) -> Vault:
    """A vault with a little of everything in its log, including denials and errors."""
    v: Vault = make_vault()
    v.declare_kind("profile", fields=["name", "tags"], purposes=["service"])
    s = v.admin()
    c = s.add_customer(ref="r1", consent={"transfer": False})
    rids = s.put_many(
        [(c, "profile", {"name": 'Ünïcødé "quoted"\n', "tags": ["a", 1, None, True]})] * 3,
        purpose="service",
    )
    s.get_many([(c, r) for r in rids], purpose="service")
    s.update(c, rids[0], {"name": None}, purpose="service")
    s.delete(c, rids[1], purpose="service")
    s.list_records(c, purpose="service")
    s.list_customers()
    for bad in (
        lambda: s.get(c, rids[0], purpose="marketing"),
        lambda: s.customer("cus_" + "a" * 26),
    ):
        with pytest.raises(Exception):  # noqa: B017 - denials and not-found are logged too
            bad()
    v.checkpoint()
    return v


def test_stored_entries_are_canonical_and_hashed_over_their_exact_bytes(
    busy_vault: Vault, backend: str | None
) -> None:
    rows = stored_log(busy_vault, backend)
    assert len(rows) > 15
    for seq, prev, digest, body in rows:
        entry = json.loads(body)
        assert set(entry) == ENTRY_KEYS
        assert entry["v"] == 1 and entry["seq"] == seq and entry["prev"] == prev
        assert body == canonical(entry) == rfc8785.dumps(entry)
        assert digest == hashlib.sha256(b"shredvault/log/v1\n" + body).hexdigest()
        assert entry["outcome"] in {"ok", "denied", "error"}
        assert isinstance(entry["detail"], dict)


def test_seq_starts_at_one_without_gaps_and_the_first_prev_is_64_zeros(
    busy_vault: Vault, backend: str | None
) -> None:
    rows = stored_log(busy_vault, backend)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0][1] == "0" * 64 == GENESIS
    for (_s, _p, digest, _b), (_s2, prev, _d, _b2) in itertools.pairwise(rows):
        assert prev == digest
    assert busy_vault.head.seq == len(rows) and busy_vault.head.hash == rows[-1][2]


def test_export_lines_are_the_entries_with_their_hash(
    busy_vault: Vault, backend: str | None, tmp_path: Path
) -> None:
    rows = stored_log(busy_vault, backend)
    buf = io.BytesIO()
    with Auditor.open(busy_vault.path, data_url=backend) as auditor:
        assert auditor.export(buf) == len(rows)
    lines = buf.getvalue().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "shredvault-log-export" and header["head_seq"] == len(rows)
    entry_lines = [ln for ln in lines[1:] if not ln.startswith(b'{"checkpoint":')]
    for line, (_seq, _prev, digest, body) in zip(entry_lines, rows, strict=True):
        assert line == canonical({**json.loads(body), "hash": digest})
        assert line == rfc8785.dumps(json.loads(line))


def test_log_entries_name_customers_only_by_subject_tag_never_by_id_or_values(
    busy_vault: Vault, backend: str | None
) -> None:
    s = busy_vault.admin()
    customer = s.list_customers()[0]
    rows = stored_log(busy_vault, backend)
    for _seq, _prev, _digest, body in rows:
        assert customer.id.encode() not in body
        assert "Ünïcødé".encode() not in body and b"quoted" not in body
    subjects = {json.loads(r[3])["subject"] for r in rows} - {None}
    assert len(subjects) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", subjects.pop())


# -- timestamps from the injected clock -------------------------------------------------


def entries(v: Vault, backend: str | None) -> list[dict[str, Any]]:
    return [json.loads(r[3]) for r in stored_log(v, backend)]


def test_timestamps_come_from_the_injected_clock_in_rfc3339_utc_with_microseconds(
    make_vault: Any, backend: str | None
) -> None:
    clock = ManualClock(START)
    v: Vault = make_vault(clock=clock)
    clock.advance(seconds=1, microseconds=1)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    logged = entries(v, backend)
    assert [e["ts"] for e in logged] == [
        "2026-03-04T05:06:07.890123Z",
        "2026-03-04T05:06:08.890124Z",
    ]
    assert all(TS_RE.match(e["ts"]) for e in logged)


def test_a_clock_in_another_timezone_is_written_as_utc(
    make_vault: Any, backend: str | None
) -> None:
    plus_two = timezone(timedelta(hours=2))
    clock = ManualClock(datetime(2026, 3, 4, 7, 6, 7, 0, tzinfo=plus_two))
    v: Vault = make_vault(clock=clock)
    assert entries(v, backend)[0]["ts"] == "2026-03-04T05:06:07.000000Z"


def test_a_clock_going_backwards_is_clamped_and_noted_in_detail(
    make_vault: Any, backend: str | None
) -> None:
    clock = ManualClock(START)
    v: Vault = make_vault(clock=clock)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    s = v.admin()
    c = s.add_customer()
    clock.advance(seconds=-90, microseconds=-250)
    rids = s.put_many(
        [(c, "profile", {"name": "a"}), (c, "profile", {"name": "b"})], purpose="service"
    )
    logged = entries(v, backend)
    before, batch = logged[-3], logged[-2:]
    for e in batch:
        assert e["ts"] == before["ts"] == format_ts(START)
        assert e["detail"]["clock_clamped_us"] == 90_000_250
        assert e["detail"]["kind"] == "profile"  # the rest of detail is kept
    clock.advance(seconds=100)  # now 9.99975 s after START: time moves on, unclamped
    s.get(c, rids[0], purpose="service")
    last = entries(v, backend)[-1]
    assert last["ts"] == format_ts(START + timedelta(seconds=10, microseconds=-250))
    assert "clock_clamped_us" not in last["detail"]


def test_timestamps_never_decrease_whatever_the_clock_does(
    make_vault: Any, backend: str | None
) -> None:
    clock = ManualClock(START)
    v: Vault = make_vault(clock=clock)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    s = v.admin()
    c = s.add_customer()
    for step in (5, -3, -3, 1, 10, -20, 0, 2):
        clock.advance(seconds=step)
        s.put(c, "profile", {"name": "n"}, purpose="service")
    stamps = [e["ts"] for e in entries(v, backend)]
    assert stamps == sorted(stamps)
    assert v.verify_log().ok


def test_a_checkpoint_carries_the_head_timestamp(make_vault: Any, backend: str | None) -> None:
    clock = ManualClock(START)
    v: Vault = make_vault(clock=clock)
    clock.advance(minutes=3)
    cp = v.checkpoint()
    assert cp.ts == format_ts(START + timedelta(minutes=3)) == v.head.ts
    assert cp.seq == v.head.seq and cp.head == v.head.hash
    assert json.loads(cp.body) == {
        "v": 1,
        "type": "checkpoint",
        "vault": v.vault_id,
        "seq": cp.seq,
        "head": cp.head,
        "ts": cp.ts,
    }
    assert cp.body == canonical(json.loads(cp.body))
    assert cp.verify(v.public_key)
