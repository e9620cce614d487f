"""Tombstones that do not link (issue 16, item 5; docs/shredding.md, "Unlinkability"),
measured: customers are added in a known order (each on its own day, each with a record
that is read), subsets are shredded in several orders (one UTC day per window), and the
linking attacks of the issue are run from what an outsider holds — the data store, the
keystore files and an `audit export` — before and after `compact`, on SQLite and
PostgreSQL. Each attack pairs shredded ids with subject tags; the test counts how many
pairs are right and asserts that is no better than chance.

The bound. Within a window of k shredded customers, an attack that pairs ids with tags
by an order unrelated to the tags gets F right, the fixed points of a uniform random
permutation of k: all factorial moments of F are 1 up to k, so its moment generating
function is at most that of Poisson(1), and the total over W windows is dominated by
Poisson(W). Chernoff then gives P(total >= c) <= e^-W (eW/c)^c, and the test allows
the smallest c for which that is below 1e-9: it does not flake. Today's links (row
order, dates, record rows) get k right in every window, k*W in all, which is above c
(asserted), so the same test fails against a vault that links.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shredvault.vault import Auditor, Vault

from processes import CRASH_EXIT_CODE, run_python

PURPOSE = "service"
ORDERS = ("forward", "reverse", "random")


def chance_bound(windows: int, p_false: float = 1e-9) -> int:
    """Smallest c with P(Poisson(windows) >= c) <= e^-W (eW/c)^c < p_false."""
    c = windows + 1
    while -windows + c * (math.log(math.e * windows) - math.log(c)) >= math.log(p_false):
        c += 1
    return c


class StepClock:
    """A clock the test moves by hand (1 ms per reading, so entries keep their order)."""

    def __init__(self) -> None:
        self.now = datetime(2031, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    """A vault after the shreds, and the truth the attacks are scored against."""

    vault: Vault
    path: Path
    data_url: str | None
    windows: int
    per_window: int
    truth: dict[str, str] = field(default_factory=dict)  # shredded id -> subject tag
    orders: list[str] = field(default_factory=list)

    @property
    def shredded(self) -> int:
        return len(self.truth)


def build_world(
    make_vault: Callable[..., Vault],
    data_url: str | None,
    *,
    windows: int,
    per_window: int,
    shredded_per_window: int,
    batch: bool = False,
) -> World:
    """``batch``: each window's customers are shredded by one ``shred --expired`` run,
    their retention times set so that it takes them in the chosen order."""
    clock = StepClock()
    v = make_vault(clock=clock)
    v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    s = v.admin()
    groups: list[list[str]] = []
    for w in range(windows):
        ids = []
        for i in range(per_window):
            cid = s.add_customer(ref=f"crm-{w:03d}-{i:03d}")
            rid = s.put(cid, "profile", {"name": f"Person {w}-{i}"}, purpose=PURPOSE)
            s.get(cid, rid, purpose=PURPOSE)
            ids.append(cid)
            clock.advance(days=1)
        groups.append(ids)
    tags = {
        cid: ck.subject_tag.hex()
        for cid, ck in v._ctx.keys.customer_keys([c for g in groups for c in g]).items()
    }
    world = World(v, Path(v.path), data_url, windows, per_window)
    rng = random.Random(0)  # the order only; the ids themselves are random
    for w, ids in enumerate(groups):
        chosen = sorted(rng.sample(range(per_window), shredded_per_window))
        order = ORDERS[w % len(ORDERS)]
        if order == "reverse":
            chosen.reverse()
        elif order == "random":
            rng.shuffle(chosen)
        if batch:
            for j, i in enumerate(chosen):
                s.set_retention(ids[i], clock.now - timedelta(hours=len(chosen) - j))
            result = s.shred_expired()
            assert [r.customer for r in result.receipts] == [ids[i] for i in chosen]
            world.truth.update({ids[i]: tags[ids[i]] for i in chosen})
        for i in [] if batch else chosen:
            s.shred(ids[i], reason="erasure request")
            world.truth[ids[i]] = tags[ids[i]]
            clock.advance(minutes=13)
        world.orders.append(order)
        # The next window: the next UTC day, its shreds all inside it.
        clock.now = (clock.now + timedelta(days=1)).replace(hour=10, minute=0)
    return world


# -- what the attacker holds ---------------------------------------------------------


@dataclass
class Holdings:
    """The data store's customer and record rows as an unordered SELECT returns them,
    physical positions, and the log as an `audit export` gives it."""

    rows: list[dict[str, Any]]  # sv_customers, SELECT without ORDER BY
    record_owner: dict[str, str]  # sv_records: record id -> customer id
    physical: dict[str, tuple[int, ...]]  # id -> rowid / ctid / offset in the raw file
    entries: list[dict[str, Any]]  # the export, in seq order


def export_entries(world: World, tmp: Path) -> list[dict[str, Any]]:
    out = tmp / "log.jsonl"
    with Auditor.open(world.path, data_url=world.data_url) as auditor, out.open("wb") as f:
        auditor.export(f)
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    return [e for e in lines if "action" in e]  # entries; checkpoints say nothing of tags


def raw_file_positions(path: Path, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Where each id first appears in data.db, then its WAL (file order)."""
    blob = b"".join(
        (path / name).read_bytes() for name in ("data.db", "data.db-wal") if (path / name).exists()
    )
    found = {}
    for cid in ids:
        at = blob.find(cid.encode())
        if at >= 0:
            found[cid] = (at,)
    return found


def hold(world: World, tmp: Path) -> Holdings:
    """Everything an attack may use, read as an outsider reads it (no vault code)."""
    if world.data_url is None:
        con = sqlite3.connect(world.path / "data.db")
        try:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM sv_customers")]
            owners = dict(con.execute("SELECT id, customer_id FROM sv_records").fetchall())
            try:
                physical = {
                    str(cid): (int(rowid),)
                    for rowid, cid in con.execute("SELECT rowid, id FROM sv_customers")
                }
            except sqlite3.OperationalError:  # no rowid: nothing to read here
                physical = {}
        finally:
            con.close()
    else:
        with world.vault._ctx.data.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM sv_customers"))]
            owners = dict(conn.execute(text("SELECT id, customer_id FROM sv_records")).all())
            physical = {
                str(cid): tuple(int(n) for n in re.findall(r"\d+", str(ctid)))
                for ctid, cid in conn.execute(text("SELECT ctid, id FROM sv_customers"))
            }
    return Holdings(rows, owners, physical, export_entries(world, tmp))


# -- the attacks: each returns a guess, shredded id -> subject tag -------------------


def _shreds_by_day(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    days: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e["action"] == "customer.shred" and e["outcome"] == "ok":
            days[e["ts"][:10]].append(e["subject"])
    return days


def _adds(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["action"] == "customer.add" and e["outcome"] == "ok"]


def _windows(h: Holdings) -> dict[str, list[str]]:
    """Tombstones grouped by what they say of their shred day (no better link exists
    for an attacker than the window the row names)."""
    out: dict[str, list[str]] = defaultdict(list)
    for row in h.rows:
        if row["state"] == "shredded":
            out[str(row["shredded"])[:10]].append(str(row["id"]))
    return out


def pair_by_position(h: Holdings, position: dict[str, Any], *, by: str) -> dict[str, str]:
    """Within each window, the i-th tombstone by ``position`` is guessed to be the i-th
    shredded tag by add order (``by="add"``) or by shred order (``by="shred"``)."""
    add_rank = {e["subject"]: i for i, e in enumerate(_adds(h.entries))}
    shred_days = _shreds_by_day(h.entries)
    guess = {}
    for day, ids in _windows(h).items():
        tags = list(shred_days.get(day, []))
        if by == "add":
            tags.sort(key=lambda t: add_rank.get(t, -1))
        placed = sorted((cid for cid in ids if cid in position), key=lambda c: position[c])
        guess.update(zip(placed, tags, strict=False))
    return guess


def row_order(h: Holdings) -> dict[str, int]:
    return {str(row["id"]): i for i, row in enumerate(h.rows)}


def by_dates(h: Holdings) -> dict[str, str]:
    """The dates attack of the issue: tags added on the row's `created` day and
    shredded on its `shredded` day; the first by add order is guessed (when the day
    matches no add entry, every tag shredded that day is a candidate)."""
    shred_days = _shreds_by_day(h.entries)
    adds = _adds(h.entries)
    guess = {}
    for row in h.rows:
        if row["state"] != "shredded":
            continue
        shredded_day = str(row["shredded"])[:10]
        created = str(row["created"])
        in_window = set(shred_days.get(shredded_day, []))
        exact = [e["subject"] for e in adds if e["ts"] == created and e["subject"] in in_window]
        same_day = [
            e["subject"] for e in adds if e["ts"][:10] == created[:10] and e["subject"] in in_window
        ]
        window = [e["subject"] for e in adds if e["subject"] in in_window]
        candidates = exact or same_day or window
        if candidates:
            guess[str(row["id"])] = candidates[0]
    return guess


def by_record_rows(h: Holdings) -> dict[str, str]:
    """Record ids that old entries name next to a tag, looked up in the record rows."""
    guess = {}
    for e in h.entries:
        owner = h.record_owner.get(e.get("record") or "")
        if owner is not None and e["subject"] is not None:
            guess.setdefault(owner, e["subject"])
    return guess


def score(world: World, guess: dict[str, str]) -> int:
    return sum(1 for cid, tag in guess.items() if world.truth.get(cid) == tag)


def attacks(world: World, h: Holdings) -> dict[str, dict[str, str]]:
    out = {
        "row order vs add order": pair_by_position(h, row_order(h), by="add"),
        "row order vs shred order": pair_by_position(h, row_order(h), by="shred"),
        "dates": by_dates(h),
        "record rows": by_record_rows(h),
    }
    if world.data_url is None:
        raw = raw_file_positions(world.path, world.truth)
        out["raw file order vs add order"] = pair_by_position(h, raw, by="add")
        out["raw file order vs shred order"] = pair_by_position(h, raw, by="shred")
        out["rowid vs add order"] = pair_by_position(h, h.physical, by="add")
    else:
        out["ctid vs add order"] = pair_by_position(h, h.physical, by="add")
        out["ctid vs shred order"] = pair_by_position(h, h.physical, by="shred")
    return out


def assert_no_better_than_chance(world: World, h: Holdings) -> dict[str, int]:
    bound = chance_bound(world.windows)
    k = world.shredded // world.windows
    assert k * world.windows >= bound, "too few trials: a linking attack could pass"
    scores = {name: score(world, g) for name, g in attacks(world, h).items()}
    over = {name: n for name, n in scores.items() if n >= bound}
    assert over == {}, f"linked better than chance (bound {bound} of {world.shredded}): {scores}"
    return scores


def keystore_and_export_name_no_shredded_id(world: World, h: Holdings) -> None:
    export = json.dumps(h.entries)
    for name in ("keys.db", "keys.db-wal", "keys.db-journal"):
        path = world.path / name
        if path.exists():
            data = path.read_bytes()
            assert [c for c in world.truth if c.encode() in data] == [], name
    assert [c for c in world.truth if c in export] == []


# -- the tests -----------------------------------------------------------------------


def test_the_chance_bound_is_what_the_docstring_says() -> None:
    for w in (6, 30):
        c = chance_bound(w)
        assert -w + c * math.log(math.e * w / c) < math.log(1e-9)
        assert -w + (c - 1) * math.log(math.e * w / (c - 1)) >= math.log(1e-9)


def run_attacks(world: World, tmp_path: Path) -> None:
    before = hold(world, tmp_path)
    keystore_and_export_name_no_shredded_id(world, before)
    assert_no_better_than_chance(world, before)
    world.vault.admin().compact()
    after = hold(world, tmp_path)
    keystore_and_export_name_no_shredded_id(world, after)
    assert_no_better_than_chance(world, after)


def test_after_shreds_no_attack_links_a_tombstone_to_its_tag_better_than_chance(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    world = build_world(make_vault, backend, windows=6, per_window=8, shredded_per_window=6)
    assert world.orders[:3] == list(ORDERS)
    run_attacks(world, tmp_path)


def test_after_shred_expired_runs_no_attack_links_better_than_chance(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    world = build_world(
        make_vault, backend, windows=6, per_window=8, shredded_per_window=6, batch=True
    )
    run_attacks(world, tmp_path)


@pytest.mark.slow
def test_many_windows_no_attack_links_a_tombstone_to_its_tag_better_than_chance(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    world = build_world(make_vault, backend, windows=30, per_window=10, shredded_per_window=8)
    run_attacks(world, tmp_path)


def test_a_tombstone_keeps_only_the_day_of_its_shred(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    world = build_world(make_vault, backend, windows=1, per_window=3, shredded_per_window=2)
    h = hold(world, tmp_path)
    shred_days = {e["ts"][:10] for e in h.entries if e["action"] == "customer.shred"}
    s = world.vault.admin()
    for cid in world.truth:
        (row,) = [r for r in h.rows if r["id"] == cid]
        assert (row["state"], row["ref"], row["retain_until"], row["consent"]) == (
            "shredded",
            None,
            None,
            "{}",
        )
        assert row["created"] == row["shredded"] and row["shredded"] in shred_days
        shown = s.customer(cid)  # customer show of a shredded customer still works
        day = row["shredded"]
        assert (shown.state, shown.created, shown.shredded) == ("shredded", day, day)
    kept = [r for r in h.rows if r["state"] == "active"]
    assert len(kept) == 1 and len(kept[0]["created"]) > 10  # the living keep their time


def test_the_sqlite_customer_table_has_no_rowid(tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        v.admin().add_customer()
    con = sqlite3.connect(tmp_path / "vault" / "data.db")
    try:
        with pytest.raises(sqlite3.OperationalError, match="rowid"):
            con.execute("SELECT rowid FROM sv_customers").fetchall()
    finally:
        con.close()


def test_the_cli_shows_a_shredded_customer_and_compacts_in_real_processes(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "vault"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")},
        "SHREDVAULT_VAULT": str(root),
        "SHREDVAULT_KEYFILE": str(keyfile),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shredvault", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert cli("init", str(root)).returncode == 0
    declared = cli("kind", "declare", "profile", "--fields", "name", "--purposes", PURPOSE)
    assert declared.returncode == 0, declared.stderr
    cid = cli("customer", "add", "--ref", "crm-1").stdout.strip()
    put = cli("record", "put", cid, "profile", "--purpose", PURPOSE, "--field", "name=Ana")
    assert put.returncode == 0, put.stderr
    shred = cli("shred", cid, "--reason", "erasure request", "--yes")
    assert shred.returncode == 0, shred.stderr
    shown = cli("customer", "show", cid, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["state"] == "shredded" and doc["ref"] is None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["shredded"]) and doc["created"] == doc["shredded"]
    compacted = cli("compact", "--yes", "--json")
    assert compacted.returncode == 0, compacted.stderr
    assert json.loads(compacted.stdout)["removed"] == 0  # the shred took the record row


_SHRED = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
with Vault.open(path, keyfile=keyfile, data_url=data_url or None) as vault:
    vault.admin().shred(customer, reason="erasure request")
"""


@pytest.mark.parametrize("crash_at", ["shred:after-intent", "shred:after-keys"])
def test_a_shred_killed_midway_is_finished_at_open_with_the_same_tombstone(
    tmp_path: Path, keyfile: Path, backend: str | None, crash_at: str
) -> None:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        cid = s.add_customer(ref="crm-1")
        other = s.add_customer(ref="crm-2")
        s.put_many(
            [(cid, "profile", {"name": "A"}), (other, "profile", {"name": "B"})], purpose=PURPOSE
        )
    done = run_python(_SHRED, str(path), str(keyfile), backend or "", cid, crash_at=crash_at)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with Vault.open(path, keyfile=keyfile, data_url=backend) as v:
        (receipt,) = v.recovered_receipts
        assert receipt.customer == cid
        s = v.admin()
        shown = s.customer(cid)
        assert (shown.state, shown.ref) == ("shredded", None)
        assert shown.created == shown.shredded and len(shown.shredded or "") == 10
        counts = v._ctx.data.read(
            lambda c: dict(
                c.execute(
                    text("SELECT customer_id, COUNT(*) FROM sv_records GROUP BY customer_id")
                ).all()
            )
        )
        assert counts == {other: 1}
        assert s.customer(other).ref == "crm-2"


def test_no_earlier_version_of_the_row_or_its_records_stays_in_the_sqlite_files(
    tmp_path: Path, keyfile: Path
) -> None:
    """secure_delete zeroes what the shred deleted or rewrote, and the WAL that held
    the earlier pages is truncated: the former ref and the ciphertext are in no file.
    (The vault sets the pragma itself: some SQLite builds have it on by default, most
    do not.)"""
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        cid = s.add_customer(ref="crm-forget-me-7731")
        others = [s.add_customer(ref=f"crm-keep-{i}") for i in range(30)]
        s.put_many([(c, "profile", {"name": "x" * 300}) for c in [cid, *others]], purpose=PURPOSE)
        blobs = v._ctx.data.read(
            lambda c: [
                bytes(b)
                for (b,) in c.execute(
                    text("SELECT ciphertext FROM sv_records WHERE customer_id = :c"), {"c": cid}
                )
            ]
        )
        assert len(blobs) == 1
        files = lambda: b"".join(p.read_bytes() for p in sorted(path.glob("data.db*")))  # noqa: E731
        assert b"crm-forget-me-7731" in files() and blobs[0][-64:] in files()  # the control
        s.shred(cid, reason="erasure request")
        stored = files()
        assert b"crm-forget-me-7731" not in stored
        assert blobs[0][-64:] not in stored
        assert b"crm-keep-3" in stored
        assert (path / "data.db-wal").stat().st_size == 0
        with v._ctx.data.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
