"""Vaults from before unlinkable tombstones (issue 16, item 5) are upgraded at their
next open, once and logged: on SQLite ``sv_customers`` is rebuilt without its rowid
(rows and columns kept), and every tombstone's dates are cut to its shred day."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.vault import StorageError, Vault

PURPOSE = "service"
OLD_CREATED = "2031-02-03T04:05:06.123456Z"
OLD_SHREDDED = "2031-05-06T07:08:09.654321Z"


class Clock:
    def __init__(self, start: datetime = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Old:
    path: Path
    keyfile: Path
    data_url: str | None
    gone: str
    kept: list[str]
    kept_records: dict[str, str]  # record id -> name
    opens: int = 0

    def open(self) -> Vault:
        # Each open's clock starts after everything logged before (no clamping).
        self.opens += 1
        later = Clock(datetime(2031, 6, 1, tzinfo=UTC) + timedelta(minutes=self.opens))
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url, clock=later)


def make_old(tmp_path: Path, keyfile: Path, data_url: str | None) -> Old:
    """A vault as the code before this change left it: the shredded customer's row
    keeps its creation time, and (SQLite) the customer table has a rowid, its rows in
    the order they were added."""
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=data_url, clock=Clock()) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        ids = [s.add_customer(ref=f"crm-{i}") for i in range(4)]
        rids = s.put_many(
            [(c, "profile", {"name": f"Person {i}"}) for i, c in enumerate(ids)], purpose=PURPOSE
        )
        s.shred(ids[1], reason="erasure request")
    kept = [ids[0], ids[2], ids[3]]
    kept_records = {rids[i]: f"Person {i}" for i in (0, 2, 3)}
    # The code before wrote no `tombstones` mark in sv_meta.
    unmark = "DELETE FROM sv_meta WHERE k = 'tombstones'"
    set_tombstone = "UPDATE sv_customers SET created = :c, shredded = :s WHERE state = 'shredded'"
    if data_url is None:
        con = sqlite3.connect(path / "data.db")
        try:
            old_sql = con.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'sv_customers'"
            ).fetchone()[0]
            with_rowid = old_sql.rstrip().removesuffix("WITHOUT ROWID").rstrip()
            indexes = con.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'sv_customers' AND sql IS NOT NULL"
            ).fetchall()
            con.execute("PRAGMA foreign_keys=OFF")
            con.execute("PRAGMA legacy_alter_table=ON")
            with con:
                for name, _sql in indexes:
                    con.execute(f"DROP INDEX {name}")
                con.execute("ALTER TABLE sv_customers RENAME TO old_customers")
                con.execute(with_rowid)
                order = {cid: i for i, cid in enumerate(ids)}
                rows = con.execute("SELECT * FROM old_customers").fetchall()
                rows.sort(key=lambda r: order[r[0]])
                marks = ", ".join("?" for _ in rows[0])
                con.executemany(f"INSERT INTO sv_customers VALUES ({marks})", rows)
                con.execute("DROP TABLE old_customers")
                for _name, sql in indexes:
                    con.execute(sql)
                con.execute(
                    set_tombstone.replace(":c", "?").replace(":s", "?"),
                    (OLD_CREATED, OLD_SHREDDED),
                )
                con.execute(unmark)
        finally:
            con.close()
        assert rowids(path) == list(range(1, 5))
    else:
        engine = create_engine(data_url)
        with engine.begin() as conn:
            conn.execute(text(set_tombstone), {"c": OLD_CREATED, "s": OLD_SHREDDED})
            conn.execute(text(unmark))
        engine.dispose()
    return Old(path, keyfile, data_url, ids[1], kept, kept_records)


def rowids(path: Path) -> list[int] | None:
    con = sqlite3.connect(path / "data.db")
    try:
        return [int(r[0]) for r in con.execute("SELECT rowid FROM sv_customers ORDER BY rowid")]
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


@pytest.fixture
def old(tmp_path: Path, keyfile: Path, backend: str | None) -> Iterator[Old]:
    yield make_old(tmp_path, keyfile, backend)


def migrate_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(
        lambda c: c.execute(
            text("SELECT body FROM sv_log WHERE action = 'vault.migrate' ORDER BY seq")
        ).all()
    )
    return [json.loads(bytes(r.body)) for r in rows]


def test_the_first_open_rebuilds_and_coarsens_once_and_logs_it(old: Old) -> None:
    with old.open() as v:
        (entry,) = migrate_entries(v)
        assert entry["detail"] == {
            "step": "tombstones",
            "rebuilt_without_rowid": old.data_url is None,
            "tombstones": 1,
        }
        assert entry["actor"] == "admin" and entry["outcome"] == "ok"
        gone = v.admin().customer(old.gone)
        assert (gone.state, gone.created, gone.shredded) == (
            "shredded",
            OLD_SHREDDED[:10],
            OLD_SHREDDED[:10],
        )
        assert v.verify_log().ok
    if old.data_url is None:
        assert rowids(old.path) is None
    with old.open() as again:
        assert len(migrate_entries(again)) == 1


def test_the_upgrade_keeps_every_other_customer_and_record(old: Old) -> None:
    with old.open() as v:
        s = v.admin()
        for cid in old.kept:
            c = s.customer(cid)
            assert c.state == "active" and c.ref is not None and len(c.created) > 10
        for cid in old.kept:
            for record in s.list_records(cid, purpose=PURPOSE):
                assert old.kept_records[record.id] == record.fields["name"]
        cid = s.add_customer(ref="after-upgrade")
        s.put(cid, "profile", {"name": "New"}, purpose=PURPOSE)
        s.shred(old.kept[0], reason="erasure request")
        assert s.customer(old.kept[0]).state == "shredded"


def test_a_foreign_key_broken_in_the_old_table_stops_the_rebuild_and_changes_nothing(
    tmp_path: Path, keyfile: Path
) -> None:
    old = make_old(tmp_path, keyfile, None)
    con = sqlite3.connect(old.path / "data.db")
    try:
        con.execute("PRAGMA foreign_keys=OFF")
        with con:
            con.execute("DELETE FROM sv_customers WHERE id = ?", (old.kept[1],))
        before = con.execute("SELECT * FROM sv_customers ORDER BY id").fetchall()
    finally:
        con.close()
    with pytest.raises(StorageError, match="cannot be rebuilt"):
        old.open()
    assert rowids(old.path) == [1, 2, 4]  # the old table, untouched
    con = sqlite3.connect(old.path / "data.db")
    try:
        assert con.execute("SELECT * FROM sv_customers ORDER BY id").fetchall() == before
    finally:
        con.close()


def test_a_vault_made_now_carries_the_mark_and_is_never_upgraded(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        s = v.admin()
        s.shred(s.add_customer(), reason="erasure request")
    with Vault.open(path, keyfile=keyfile, data_url=backend) as v:
        assert migrate_entries(v) == []
        mark = v._ctx.data.read(
            lambda c: c.execute(text("SELECT v FROM sv_meta WHERE k = 'tombstones'")).scalar()
        )
        assert mark == "unlinked-v1"
