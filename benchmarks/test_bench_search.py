"""Blind-index search (issue 21 item 2): ``Session.find`` by phone at 1,000 customers
and, when asked, at ``SHREDVAULT_BENCH_CUSTOMERS`` (e.g. 100000), on SQLite.

* ``find`` (vault): ``Session.find("contact", "phone", <a stored phone, other
  formatting>, purpose=...)``: the gate, the tag, the index probe, the candidate's
  record and customer rows checked, one decryption and one fsynced log entry.
* ``get`` (baseline): ``Session.get`` of the same record: one logged read, the same
  fsync and row checks, no index.
* ``select`` (baseline): the bare index probe, ``SELECT record_id FROM sv_search WHERE
  kind = ? AND field = ? AND tag = ?`` on the vault's own engine, no transaction log.

Each customer holds one ``contact`` record (name, phone, e-mail; phone and e-mail
searchable). Building the vault is outside the timing: customers are added 1,000 per
transaction by :func:`add_customers` (the same keystore call, rows and ``customer.add``
entries as ``add_customer``, batched; one ``add_customer`` per call would take hours
at 100,000 on a shared machine), records by ``put_many`` in batches of 1,000.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import Vault, ids
from shredvault.vault.blindindex import query_tag, search
from shredvault.vault.context import Tx
from shredvault.vault.log import Event
from shredvault.vault.normalize import normalize
from shredvault.vault.rowauth import insert_rows

from harness import measure

SIZES = [1_000]
if os.environ.get("SHREDVAULT_BENCH_CUSTOMERS"):
    SIZES = sorted({1_000, int(os.environ["SHREDVAULT_BENCH_CUSTOMERS"])})
BATCH = 1_000
ROUNDS = 40
PURPOSE = "service"


def phone(i: int) -> str:
    return f"+1 555 {i:07d}"


def add_customers(v: Vault, n: int) -> list[str]:
    """``n`` customers, 1,000 per logged transaction: each row stamped with the seq of
    its own ``customer.add`` entry, as ``add_customer`` does one at a time."""
    ctx = v._ctx  # the benchmark builds its vault through the internal API
    out: list[str] = []
    for start in range(0, n, BATCH):
        cids = ids.new_ids(ids.CUSTOMER, min(BATCH, n - start))
        created = ctx.now()
        tags = ctx.keys.create_customers(cids, created)

        def work(
            tx: Tx, cids: list[str] = cids, tags: dict[str, bytes] = tags, created: str = created
        ) -> None:
            for cid in cids:
                row = {"id": cid, "ref": None, "state": "active", "dek_version": 1,
                       "retain_until": None, "legal_hold": False, "consent": "{}",
                       "created": created, "shredded": None, "shred_intent_seq": None}  # fmt: skip
                insert_rows(tx.conn, ctx.keys.row_auth, "sv_customers", [row], tx.next_seq())
                detail = {"consent": {}, "retain_until": None}
                tx.log(
                    Event("admin", "admin", "customer.add", subject=tags[cid].hex(), detail=detail)
                )

        ctx.transact(work)
        out += cids
    return out


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def searchable_vault(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from shredvault.keys import generate_keyfile

    n = int(request.param)
    base = tmp_path_factory.mktemp(f"search-{n}")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    v = Vault.create(base / "v", keyfile=keyfile)
    v.declare_kind("contact", fields=["name", "phone", "email"], purposes=[PURPOSE],
                   searchable={"phone": "digits", "email": "email"})  # fmt: skip
    s = v.admin()
    cids = add_customers(v, n)
    rids: list[str] = []
    for start in range(0, n, BATCH):
        items = [
            (
                cid,
                "contact",
                {"name": f"Customer {i}", "phone": phone(i), "email": f"user{i}@example.org"},
            )
            for i, cid in enumerate(cids[start : start + BATCH], start=start)
        ]
        rids += s.put_many(items, purpose=PURPOSE)
    yield n, v, s, cids, rids
    v.close()


@pytest.mark.benchmark(group="find")
def test_bench_find_by_phone(benchmark: Any, searchable_vault: Any) -> None:
    n, _v, s, _cids, _rids = searchable_vault
    picks = random.Random(7)
    backend = f"sqlite {n:,} customers"

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = picks.randrange(n)
        return (f"+1-555-{i:07d}",), {}

    found = measure(
        benchmark,
        lambda value: s.find("contact", "phone", value, purpose=PURPOSE),
        op="find",
        role="vault",
        backend=backend,
        units=1,
        rounds=ROUNDS,
        setup=setup,
    )
    assert len(found) == 1


@pytest.mark.benchmark(group="find")
def test_bench_find_baseline_get(benchmark: Any, searchable_vault: Any) -> None:
    n, _v, s, cids, rids = searchable_vault
    picks = random.Random(7)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = picks.randrange(n)
        return (cids[i], rids[i]), {}

    measure(
        benchmark,
        lambda cid, rid: s.get(cid, rid, purpose=PURPOSE),
        op="find",
        role="get",
        backend=f"sqlite {n:,} customers",
        units=1,
        rounds=ROUNDS,
        setup=setup,
    )


@pytest.mark.benchmark(group="find")
def test_bench_find_baseline_select(benchmark: Any, searchable_vault: Any) -> None:
    n, v, _s, _cids, _rids = searchable_vault
    ctx = v._ctx
    picks = random.Random(7)
    key = ctx.keys.blind_index

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = picks.randrange(n)
        wanted = normalize("digits", phone(i))
        return (query_tag(key, "contact", "phone", wanted),), {}

    stmt = select(search.c.record_id).where(search.c.kind == "contact", search.c.field == "phone")

    def probe(tag: bytes) -> list[str]:
        with ctx.data.engine.connect() as conn:
            return list(conn.execute(stmt.where(search.c.tag == tag)).scalars())

    got = measure(
        benchmark,
        probe,
        op="find",
        role="select",
        backend=f"sqlite {n:,} customers",
        units=1,
        rounds=ROUNDS,
        setup=setup,
    )
    assert len(got) == 1
    benchmark.extra_info["index_entries"] = 2 * n
    benchmark.extra_info["data_db_bytes"] = (Path(v.path) / "data.db").stat().st_size
    benchmark.extra_info["sizes"] = json.dumps(SIZES)
