"""Paging (issue 21 item 3): ``list_customers``, ``list_records`` and ``audit_query``
take ``limit`` and ``after`` and return the cursor of the next page; walking every
page gives exactly the unpaged result, each page is logged like a listing, a bad limit
or cursor is refused before anything is logged, and the customer page is a keyset read
on the primary key (LIMIT, never OFFSET). The CLI (``--limit/--after``) runs as a real
subprocess. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from shredvault.vault import Page, SchemaError, Session, Vault


def url_of(v: Vault, backend: str | None) -> str:
    return backend or f"sqlite:///{v.path / 'data.db'}"


def entries_after(v: Vault, backend: str | None, seq: int) -> list[dict[str, Any]]:
    engine = create_engine(url_of(v, backend))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT body FROM sv_log WHERE seq > :s ORDER BY seq"), {"s": seq}
            ).all()
    finally:
        engine.dispose()
    return [json.loads(bytes(r.body)) for r in found]


@pytest.fixture
def vault(make_vault: Any) -> Vault:
    v: Vault = make_vault()
    v.declare_kind("note", fields=["text"], purposes=["service"])
    v.declare_kind("bill", fields=["amount"], purposes=["billing"])
    return v


@pytest.fixture
def admin(vault: Vault) -> Session:
    return vault.admin()


def walk(fetch: Any, limit: int) -> tuple[list[Any], list[int]]:
    items: list[Any] = []
    sizes: list[int] = []
    after = None
    while True:
        page = fetch(limit=limit, after=after)
        assert isinstance(page, Page)
        items.extend(page)
        sizes.append(len(page))
        if page.next is None:
            return items, sizes
        after = page.next


def test_customer_pages_cover_every_customer_once(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    cids = {admin.add_customer() for _ in range(10)}
    held = sorted(cids)[:4]
    for cid in held:
        admin.hold(cid)
    everyone = admin.list_customers()
    assert everyone.next is None and {c.id for c in everyone} == cids
    seq = vault.head.seq
    items, sizes = walk(admin.list_customers, 3)
    assert sizes == [3, 3, 3, 1]
    assert [c.id for c in items] == sorted(cids)  # id order, each once
    assert items == sorted(everyone, key=lambda c: c.id)
    logged = entries_after(vault, backend, seq)
    assert [(e["action"], e["detail"]) for e in logged] == [
        ("customer.list", {"count": n, "page": True}) for n in sizes
    ]
    exact, sizes = walk(admin.list_customers, 5)
    assert sizes == [5, 5] and [c.id for c in exact] == sorted(cids)
    # the last page is not followed by an empty one when the count divides evenly
    assert admin.list_customers(limit=10).next is None
    # a state filter pages too; an unpaged listing still returns a Page
    first = admin.list_customers(state="active", limit=2)
    assert len(first) == 2 and first.next is not None
    assert all(c.state == "active" for c in first)
    assert len(admin.list_customers(state="shredded")) == 0


def test_record_pages_follow_the_oldest_first_order(
    vault: Vault, admin: Session, backend: str | None
) -> None:
    cid = admin.add_customer()
    notes = [admin.put(cid, "note", {"text": f"n{i}"}, purpose="service") for i in range(5)]
    admin.put(cid, "bill", {"amount": 3}, purpose="billing")  # not usable for service
    everything = admin.list_records(cid, purpose="service")
    assert [r.id for r in everything] == notes
    seq = vault.head.seq
    items, sizes = walk(lambda **kw: admin.list_records(cid, purpose="service", **kw), 2)
    assert sizes == [2, 2, 1] and [r.id for r in items] == notes
    assert [r.fields for r in items] == [{"text": f"n{i}"} for i in range(5)]
    logged = entries_after(vault, backend, seq)
    assert [e["record"] for e in logged] == notes  # only the page is read and logged
    by_kind = admin.list_records(cid, purpose="service", kind="note", limit=4)
    assert [r.id for r in by_kind] == notes[:4] and by_kind.next is not None
    rest = admin.list_records(cid, purpose="service", kind="note", limit=4, after=by_kind.next)
    assert [r.id for r in rest] == notes[4:] and rest.next is None


def test_audit_query_pages_cover_the_unpaged_answer(vault: Vault, admin: Session) -> None:
    cids = [admin.add_customer() for _ in range(7)]
    whole = admin.audit_query(action="customer.add")
    assert whole["next"] is None and whole["entries"] == 7
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = admin.audit_query(action="customer.add", limit=3, after=after)
        pages += 1
        seen.extend(c["customer"] for c in page["customers"])
        assert page["filters"]["limit"] == 3
        if page["next"] is None:
            break
        assert page["truncated"] is True
        after = page["next"]
    assert pages == 3 and sorted(seen) == sorted(cids)
    assert sorted(c["customer"] for c in whole["customers"]) == sorted(cids)


def test_bad_limits_and_cursors_are_refused_before_anything_is_logged(
    vault: Vault, admin: Session
) -> None:
    cid = admin.add_customer()
    customers_cursor = admin.list_customers(limit=1).next or ""
    admin.add_customer()
    customers_cursor = admin.list_customers(limit=1).next or ""
    assert customers_cursor
    audit_cursor = admin.audit_query(limit=1)["next"]
    seq = vault.head.seq
    for limit in (0, -1, 1001, True, "5", 2.0):
        with pytest.raises(SchemaError, match="limit must be"):
            admin.list_customers(limit=limit)  # type: ignore[arg-type]
        with pytest.raises(SchemaError, match="limit must be"):
            admin.list_records(cid, purpose="service", limit=limit)  # type: ignore[arg-type]
        with pytest.raises(SchemaError, match="limit must be"):
            admin.audit_query(limit=limit)  # type: ignore[arg-type]
    for cursor in ("", "!!!", "x" * 1000, "WyJhIiwiYiJd", audit_cursor, 7):
        with pytest.raises(SchemaError, match="not a cursor"):
            admin.list_customers(limit=2, after=cursor)  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="not a cursor"):
        admin.list_records(cid, purpose="service", after=customers_cursor)
    with pytest.raises(SchemaError, match="not a cursor"):
        admin.audit_query(limit=2, after=customers_cursor)
    assert vault.head.seq == seq


def test_a_customer_page_is_a_keyset_read_on_the_primary_key(
    sqlite_vault: Vault, tmp_path: Path
) -> None:
    s = sqlite_vault.admin()
    for _ in range(5):
        s.add_customer()
    statements: list[tuple[str, Any]] = []
    engine = sqlite_vault._ctx.data.engine

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        first = s.list_customers(limit=2)
        s.list_customers(limit=2, after=first.next)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    pages = [(q, p) for q, p in statements if "FROM sv_customers" in q and "ORDER BY" in q]
    assert len(pages) == 2
    for q, params in pages:
        # SQLAlchemy's SQLite dialect spells a bare LIMIT as "LIMIT ? OFFSET ?" with 0
        assert "LIMIT" in q and ("OFFSET" not in q or params[-1] == 0)
        assert params[-2 if "OFFSET" in q else -1] == 3  # the limit, plus one to see more
    assert "sv_customers.id >" in pages[1][0]
    # SQLite answers it from the primary key: no sort of the whole table
    db = sqlite3.connect(sqlite_vault.path / "data.db")
    try:
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM sv_customers WHERE id > ? ORDER BY id LIMIT 3",
                ("cus_a",),
            )
        )
    finally:
        db.close()
    assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan


# -- the CLI, as a real process ------------------------------------------------------------


def test_cli_pages_with_limit_and_after(tmp_path: Path, keyfile: Path, backend: str | None) -> None:
    root = tmp_path / "cli-vault"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    if backend:
        env["SHREDVAULT_DATA_URL"] = backend
    script = Path(sys.executable).with_name("shredvault")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )

    assert cli("init", str(root), "--keyfile", str(keyfile)).returncode == 0
    assert (
        cli("kind", "declare", "note", "--fields", "text", "--purposes", "service").returncode == 0
    )
    cids = sorted(cli("customer", "add").stdout.strip() for _ in range(3))
    for i in range(3):
        put = cli("record", "put", cids[0], "note", "--field", f"text=t{i}", "--purpose", "service")
        assert put.returncode == 0, put.stderr
    first = cli("customer", "list", "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert [c["id"] for c in page["customers"]] == cids[:2] and page["next"]
    second = json.loads(
        cli("customer", "list", "--limit", "2", "--after", page["next"], "--json").stdout
    )
    assert [c["id"] for c in second["customers"]] == cids[2:] and second["next"] is None
    text_page = cli("customer", "list", "--limit", "1")
    assert cids[0] in text_page.stdout and cids[1] not in text_page.stdout
    assert "more customers: --after " in text_page.stderr
    assert isinstance(json.loads(cli("customer", "list", "--json").stdout), list)  # unpaged
    records = json.loads(
        cli("record", "list", cids[0], "--purpose", "service", "--limit", "2", "--json").stdout
    )
    assert [r["fields"]["text"] for r in records["records"]] == ["t0", "t1"]
    rest = cli("record", "list", cids[0], "--purpose", "service", "--after", records["next"])
    assert "t2" in rest.stdout and "t0" not in rest.stdout
    audit = json.loads(
        cli("audit", "query", "--action", "customer.add", "--limit", "2", "--json").stdout
    )
    assert audit["entries"] == 2 and audit["next"]
    last = cli(
        "audit", "query", "--action", "customer.add", "--limit", "2", "--after", audit["next"]
    )
    assert last.returncode == 0 and "more entries" not in last.stderr
    assert cli("customer", "list", "--limit", "0").returncode == 2
    assert cli("customer", "list", "--limit", "1001").returncode == 2
    bad = cli("customer", "list", "--limit", "2", "--after", "nonsense")
    assert bad.returncode == 1 and "not a cursor" in bad.stderr
    assert "--after CURSOR" in cli("audit", "query", "--help").stdout
