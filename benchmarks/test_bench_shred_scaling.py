"""Shred latency against keystore size (issue 19 items 1 and 7; docs/keys.md).

For each keystore size N (customers; ``SHREDVAULT_BENCH_SHRED_SIZES``, default
``100,1000,10000,100000``), one vault on SQLite whose keystore holds N customers' keys
(filled in bulk: :func:`fill_keystore`), then, each beside the others in the same run:

* ``vault``: ``Session.shred`` of a customer with one record (erasure in place);
* ``rebuild``: the same shred with the keystore rebuilt (``VACUUM``) after the key
  deletion and after the salt's, as every shred did before erasure in place;
* ``delete``: deleting the same customer's keystore rows and record row with plain
  SQL (no log, no receipt, no crypto): the floor.

``benchmarks/plot_shred_scaling.py`` draws the medians (``benchmarks/shred_scaling.png``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from shredvault.vault import Session, Vault
from shredvault.vault.ids import CUSTOMER, new_ids
from shredvault.vault.store import records

from harness import measure

SIZES_ENV = "SHREDVAULT_BENCH_SHRED_SIZES"
SIZES = [int(n) for n in os.environ.get(SIZES_ENV, "100,1000,10000,100000").split(",")]
ROUNDS = 15
REBUILD_ROUNDS = 5
FILL_CHUNK = 10_000
CREATED = "2026-01-01T00:00:00.000000Z"


def fill_keystore(vault: Vault, n: int) -> None:
    """The bulk key-insert helper: keys for ``n`` customers in the keystore, one
    keystore transaction per 10,000 (as ``add_customer`` would leave them, without
    their data-store rows, which a shred of another customer never reads)."""
    for start in range(0, n, FILL_CHUNK):
        size = min(FILL_CHUNK, n - start)
        vault._ctx.keys.create_customers(new_ids(CUSTOMER, size), CREATED)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"N={n}")
def sized(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    n = int(request.param)
    base = tmp_path_factory.mktemp(f"shred{n}")
    keyfile = base / "vault.key"
    keyfile.write_bytes(os.urandom(32))
    keyfile.chmod(0o600)
    vault = Vault.create(base / "vault", keyfile=keyfile)
    vault.declare_kind("profile", fields=["name"], purposes=["service"])
    fill_keystore(vault, n)
    yield n, vault, vault.admin()
    vault.close()


def _one_record_customer(session: Session) -> str:
    cid = session.add_customer()
    session.put(cid, "profile", {"name": "Customer"}, purpose="service")
    return cid


@pytest.mark.benchmark(group="shred_scaling")
def test_shred_in_place(benchmark: Any, sized: Any) -> None:
    n, _vault, session = sized
    measure(
        benchmark,
        session.shred,
        setup=lambda: ((_one_record_customer(session),), {"reason": "bench"}),
        op=f"shred_n{n}",
        role="vault",
        backend="sqlite",
        units=1,
        unit="customer",
        rounds=ROUNDS,
    )


@pytest.mark.benchmark(group="shred_scaling")
def test_shred_with_rebuild_as_before(
    benchmark: Any, sized: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, vault, session = sized
    store = vault._ctx.keys.store
    # Before erasure in place: a full rebuild after the keys went and after the salt.
    monkeypatch.setattr(store, "erase_in_place", store.scrub)
    measure(
        benchmark,
        session.shred,
        setup=lambda: ((_one_record_customer(session),), {"reason": "bench"}),
        op=f"shred_n{n}",
        role="rebuild",
        backend="sqlite",
        units=1,
        unit="customer",
        rounds=REBUILD_ROUNDS,
    )


@pytest.mark.benchmark(group="shred_scaling")
def test_delete_rows_with_plain_sql(benchmark: Any, sized: Any) -> None:
    n, vault, session = sized
    engine = vault._ctx.data.engine
    keys_db = Path(vault.path) / "keys.db"

    def delete_rows(cid: str) -> None:
        conn = sqlite3.connect(keys_db, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM deks WHERE customer_id = ?", (cid,))
            conn.execute("DELETE FROM subject_tags WHERE customer_id = ?", (cid,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        with engine.begin() as data:
            data.execute(delete(records).where(records.c.customer_id == cid))

    measure(
        benchmark,
        delete_rows,
        setup=lambda: ((_one_record_customer(session),), {}),
        op=f"shred_n{n}",
        role="delete",
        backend="sqlite",
        units=1,
        unit="customer",
        rounds=ROUNDS,
    )
