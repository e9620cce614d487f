"""Reports on large logs: the subject access report and the breach-scope query must cost
the same on a log of 10,000 entries and on one of 1,000,000 (goal: at most 2x), because
they read through ``ix_sv_log_subject`` and ``ix_sv_log_actor_ts`` instead of the log.

* ``customer_report``: ``Session.customer_report`` of one customer with 10 records and
  :data:`TARGET_ENTRIES` entries about it spread over the whole log (the same in both
  logs: only the log around it grows).
* ``audit_query``: ``Session.audit_query(actor=..., since=..., until=...)`` over one hour
  in the middle of the log (one of :data:`ACTORS` principals; the log runs at a constant
  :data:`ENTRIES_PER_HOUR`, so the hour holds the same entries in both logs).

Roles ``log_10k`` and ``log_1m`` label the two log sizes. The big log is written with
:func:`vault.log.append` straight into the vault's data store (as
`harness.fill_log` does), one ``append`` per step so that timestamps
advance: realistic actors, subjects (10,000 customers' tags) and times, no crypto.
``SHREDVAULT_BENCH_REPORT_N`` lowers 1,000,000 for quick runs. SQLite only.
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shredvault.keys import generate_keyfile
from shredvault.vault import Session, Vault, ids
from shredvault.vault.clock import format_ts
from shredvault.vault.log import Event, append
from shredvault.vault.store import DataStore

from harness import FIELDS, KIND, PURPOSE, data_store, measure, record_fields

SMALL = 10_000
LARGE = int(os.environ.get("SHREDVAULT_BENCH_REPORT_N", "1000000"))
SIZES = [(SMALL, "log_10k"), (LARGE, "log_1m")]
ACTORS = 50
SUBJECTS = 10_000
ENTRIES_PER_HOUR = 1_000
TARGET_RECORDS = 10
TARGET_ENTRIES = 100
ROUNDS = 15
CHUNK = 20_000  # entries per generating transaction
START = datetime(2025, 1, 6, tzinfo=UTC)
STEP = timedelta(hours=1) / ENTRIES_PER_HOUR
TICK = timedelta(minutes=1)  # entries of one minute share its time


class SteppedClock:
    """The vault's clock: stands at the start while the log is generated behind it,
    then moves past the generated entries for the measured calls."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class BigLog:
    """An open vault whose log holds ``entries`` generated entries, and what to ask."""

    label: str
    entries: int
    vault: Vault
    session: Session
    target: str
    actor: str
    since: str
    until: str


def spread_steps(
    count: int, target_tag: str, target_records: list[str], rng: random.Random
) -> Iterator[tuple[datetime, list[Event]]]:
    """``count`` entries as steps: 1-10 entries by one actor about one customer, each
    entry :data:`STEP` after the previous one (from :func:`first_entry_time`), with
    :data:`TARGET_ENTRIES` single reads of the target customer spread evenly."""
    actors = [f"p{i:02d}" for i in range(ACTORS)]
    tags = [secrets.token_hex(16) for _ in range(SUBJECTS)]
    actions = ["record.get"] * 7 + ["record.put"] * 2 + ["record.list"]
    detail = {"kind": KIND, "fields": sorted(FIELDS)}
    stride = max(1, count // TARGET_ENTRIES)
    done, next_target, ts = 0, stride // 2, first_entry_time()
    while done < count:
        actor = rng.choice(actors)
        if done >= next_target:
            next_target += stride
            rid = target_records[done % len(target_records)]
            group = [
                Event(actor, "operator", "record.get", subject=target_tag, record=rid,
                      purpose=PURPOSE, detail=detail)
            ]  # fmt: skip
        else:
            tag, action = rng.choice(tags), rng.choice(actions)
            group = [
                Event(actor, "operator", action, subject=tag, record=rid,
                      purpose=PURPOSE, detail=detail)
                for rid in ids.new_ids(ids.RECORD, min(rng.randint(1, 10), count - done))
            ]  # fmt: skip
        yield ts, group
        ts += STEP * len(group)
        done += len(group)


def first_entry_time() -> datetime:
    return START + timedelta(seconds=1)


def minute_buckets(
    steps: Iterator[tuple[datetime, list[Event]]],
) -> Iterator[tuple[datetime, list[Event]]]:
    """Join the steps of each minute under the time of its first step: one ``append``
    per bucket (the vault stamps one time per transaction too; fewer appends cost less)."""
    bucket: list[Event] = []
    bucket_ts = START
    for ts, group in steps:
        if bucket and ts - bucket_ts >= TICK:
            yield bucket_ts, bucket
            bucket = []
        if not bucket:
            bucket_ts = ts
        bucket.extend(group)
    if bucket:
        yield bucket_ts, bucket


def fill_log_from(store: DataStore, buckets: Iterator[tuple[datetime, list[Event]]]) -> None:
    """Chain every bucket with :func:`vault.log.append`, about :data:`CHUNK` entries per
    transaction."""

    def work(conn: Any, head: Any) -> bool:
        written = 0
        for ts, events in buckets:
            head, _ = append(conn, store, head, events, ts)
            written += len(events)
            if written >= CHUNK:
                return True
        return False

    while store.run(work):
        pass


def make_big_log(root: Path, entries: int, label: str) -> BigLog:
    keyfile = root / "vault.key"
    generate_keyfile(keyfile)
    clock = SteppedClock(START)
    vault = Vault.create(root / "vault", keyfile=keyfile, clock=clock)
    vault.declare_kind(KIND, fields=FIELDS, purposes=[PURPOSE])
    session = vault.admin()
    target = session.add_customer()
    records = session.put_many(
        [(target, KIND, record_fields(i)) for i in range(TARGET_RECORDS)], purpose=PURPOSE
    )
    tag = vault._ctx.keys.customer_keys([target])[target].subject_tag.hex()
    store = data_store(root / "vault", None)
    try:
        fill_log_from(store, minute_buckets(spread_steps(entries, tag, records, random.Random(7))))
    finally:
        store.dispose()
    end = first_entry_time() + STEP * entries
    clock.now = end + timedelta(minutes=1)
    middle = START + (end - START) / 2
    since = middle.replace(minute=0, second=0, microsecond=0)
    return BigLog(
        label,
        entries,
        vault,
        session,
        target,
        "p07",
        format_ts(since),
        format_ts(since + timedelta(hours=1)),
    )


@pytest.fixture(scope="module")
def figures() -> dict[tuple[str, str], list[float]]:
    """Wall time of every timed call, by (op, role), for the growth check at the end."""
    return {}


@pytest.fixture(scope="module", params=SIZES, ids=[label for _, label in SIZES])
def big_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BigLog]:
    entries, label = request.param
    started = time.perf_counter()
    root = tmp_path_factory.mktemp(label)
    log = make_big_log(root, entries, label)
    size = (root / "vault" / "data.db").stat().st_size / 2**20
    print(
        f"\n{label}: generated {entries} entries in {time.perf_counter() - started:.1f} s "
        f"(data.db {size:.0f} MiB)"
    )
    try:
        yield log
    finally:
        log.vault.close()


def timed(
    figures: dict[tuple[str, str], list[float]], key: tuple[str, str], fn: Callable[[], Any]
) -> Callable[[], Any]:
    samples = figures.setdefault(key, [])

    def call() -> Any:
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
        return result

    return call


def query_plan(log: BigLog, sql: str, params: dict[str, Any]) -> str:
    rows = log.vault._ctx.data.read(
        lambda conn: conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params).all()
    )
    return "; ".join(str(r[-1]) for r in rows)


@pytest.mark.benchmark(group="customer_report")
def test_customer_report(
    benchmark: Any, big_log: BigLog, figures: dict[tuple[str, str], list[float]]
) -> None:
    report = measure(
        benchmark,
        timed(figures, ("customer_report", big_log.label),
              lambda: big_log.session.customer_report(big_log.target)),
        op="customer_report", role=big_log.label, backend="sqlite",
        units=big_log.entries, unit="log entry", rounds=ROUNDS,
    )  # fmt: skip
    assert len(report["records"]) == TARGET_RECORDS
    generated = [h for h in report["history"] if h["action"] == "record.get"]
    assert len(generated) == TARGET_ENTRIES
    benchmark.extra_info["plan"] = query_plan(
        big_log,
        "SELECT body, hash FROM sv_log WHERE subject = :s ORDER BY seq",
        {"s": report["subject_tag"]},
    )


@pytest.mark.benchmark(group="audit_query")
def test_audit_query_one_hour_of_one_actor(
    benchmark: Any, big_log: BigLog, figures: dict[tuple[str, str], list[float]]
) -> None:
    def breach_query() -> dict[str, Any]:
        return big_log.session.audit_query(
            actor=big_log.actor, since=big_log.since, until=big_log.until
        )

    result = measure(
        benchmark,
        timed(figures, ("audit_query", big_log.label), breach_query),
        op="audit_query", role=big_log.label, backend="sqlite",
        units=big_log.entries, unit="log entry", rounds=ROUNDS,
    )  # fmt: skip
    # One hour holds ENTRIES_PER_HOUR entries; one of ACTORS actors has ~1/ACTORS of them.
    assert 0 < result["entries"] < ENTRIES_PER_HOUR / ACTORS * 4
    assert not result["truncated"]
    benchmark.extra_info["entries_found"] = result["entries"]
    benchmark.extra_info["plan"] = query_plan(
        big_log,
        "SELECT seq, subject, record, action, ts, body FROM sv_log WHERE actor = :a "
        "AND ts >= :s AND ts < :u ORDER BY seq LIMIT 100001",
        {"a": big_log.actor, "s": big_log.since, "u": big_log.until},
    )


@pytest.mark.benchmark(group="audit_report")
def test_audit_report(
    benchmark: Any, big_log: BigLog, figures: dict[tuple[str, str], list[float]]
) -> None:
    """``Session.audit_report`` once a first report has stored the totals (that first
    one verifies and counts the whole log: timed apart, as ``first_report_s``)."""
    start = time.perf_counter()
    first = big_log.session.audit_report()
    benchmark.extra_info["first_report_s"] = time.perf_counter() - start
    assert first["log"]["ok"], first["log"]["message"]
    report = measure(
        benchmark,
        timed(figures, ("audit_report", big_log.label), big_log.session.audit_report),
        op="audit_report", role=big_log.label, backend="sqlite",
        units=big_log.entries, unit="log entry", rounds=ROUNDS,
    )  # fmt: skip
    assert report["log"]["ok"], report["log"]["message"]
    assert report["log"]["entries"] < 100  # only the entries since the previous report
    full = big_log.session.audit_report(full=True)
    assert (full["shreds"], full["denials_by_actor"]) == (
        report["shreds"],
        report["denials_by_actor"],
    )


@pytest.mark.parametrize("op", ["customer_report", "audit_query", "audit_report"])
def test_time_does_not_grow_with_the_log(
    figures: dict[tuple[str, str], list[float]], op: str
) -> None:
    small, large = figures.get((op, "log_10k"), []), figures.get((op, "log_1m"), [])
    if len(small) < 3 or len(large) < 3:
        pytest.skip("needs --benchmark-enable and both log sizes")
    ratio = statistics.median(large) / statistics.median(small)
    print(
        f"\n{op}: median {statistics.median(small) * 1e3:.2f} ms ({SMALL} entries), "
        f"{statistics.median(large) * 1e3:.2f} ms ({LARGE} entries): ratio {ratio:.2f}"
    )
    assert ratio <= 2.0
