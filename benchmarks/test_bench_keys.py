"""Shredding and key rotation, each next to its same-run baseline (DESIGN §10).

* ``shred`` of a customer with 1,000 records (``vault``) and with 10 records
  (``vault_small``: the cost must not grow with the record count) against deleting
  that customer's 1,000 record rows in one transaction (``delete``).
* ``shred_expired``: customers shredded per second by ``shred_expired``.
* ``rotate_kek``: DEKs re-wrapped per second under a new KEK epoch (goal ≥ 20,000/s).
* ``rotate_dek``: re-keying a customer's 1,000 records (decrypt, encrypt, update)
  against ``put_many`` of 1,000 records into the same vault (``put_many``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import delete

from shredvault.vault import ids
from shredvault.vault.store import records

from harness import BATCH, KIND, PURPOSE, Workload, measure

SHRED_ROUNDS = 12
ROTATE_DEKS = 10_000


def _customer_with(workload: Workload, n: int) -> str:
    session = workload.session
    cid = session.add_customer()
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        session.put_many([(cid, KIND, workload.fields[i]) for i in range(size)], purpose=PURPOSE)
    return cid


@pytest.mark.benchmark(group="shred")
@pytest.mark.parametrize(("records_per_customer", "role"), [(BATCH, "vault"), (10, "vault_small")])
def test_shred_vault(
    benchmark: Any, workload: Workload, records_per_customer: int, role: str
) -> None:
    receipt = measure(
        benchmark,
        workload.session.shred,
        setup=lambda: ((_customer_with(workload, records_per_customer),), {"reason": "bench"}),
        op="shred",
        role=role,
        backend=workload.backend,
        units=1,
        unit="customer",
        rounds=SHRED_ROUNDS,
    )
    assert receipt.customer.startswith("cus_")


@pytest.mark.benchmark(group="shred")
def test_shred_delete_rows_baseline(benchmark: Any, workload: Workload) -> None:
    engine = workload.vault._ctx.data.engine

    def delete_rows(cid: str) -> None:
        with engine.begin() as conn:
            conn.execute(delete(records).where(records.c.customer_id == cid))

    measure(
        benchmark,
        delete_rows,
        setup=lambda: ((_customer_with(workload, BATCH),), {}),
        op="shred",
        role="delete",
        backend=workload.backend,
        units=1,
        unit="customer",
        rounds=SHRED_ROUNDS,
    )


@pytest.mark.benchmark(group="shred_expired")
def test_shred_expired_rate(benchmark: Any, workload: Workload) -> None:
    session = workload.session
    past = datetime.now(UTC) - timedelta(days=1)
    # SHREDVAULT_BENCH_EXPIRED_N=10000 for the size (one round, ~2 min here).
    n = int(os.environ.get("SHREDVAULT_BENCH_EXPIRED_N", "100"))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        for _ in range(n):
            session.add_customer(retain_until=past)
        return (), {"reason": "bench"}

    result = measure(
        benchmark,
        session.shred_expired,
        setup=setup,
        op="shred_expired",
        role="vault",
        backend=workload.backend,
        units=n,
        unit="customer",
        rounds=3 if n <= 1000 else 1,
        warmup_rounds=0,
    )
    assert len(result.receipts) == n


@pytest.mark.benchmark(group="rotate_kek")
def test_rotate_kek_rate(benchmark: Any, workload: Workload) -> None:
    keyring = workload.vault._ctx.keys
    made = count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if next(made) == 0:  # keystore-only customers: the re-wrap touches only keys.db
            keyring.create_customers(ids.new_ids(ids.CUSTOMER, ROTATE_DEKS), "2026-01-01T00:00:00Z")
        return (), {}

    result = measure(
        benchmark,
        workload.session.rotate_kek,
        setup=setup,
        op="rotate_kek",
        role="vault",
        backend=workload.backend,
        units=ROTATE_DEKS,
        unit="dek",
        rounds=3,
    )
    assert result["rewrapped"] >= ROTATE_DEKS


@pytest.mark.benchmark(group="rotate_dek")
def test_rotate_dek_vault(benchmark: Any, workload: Workload) -> None:
    cid = _customer_with(workload, BATCH)
    measure(
        benchmark,
        workload.session.rotate_dek,
        setup=lambda: ((cid,), {}),
        op="rotate_dek",
        role="vault",
        backend=workload.backend,
        units=BATCH,
        rounds=5,
    )


@pytest.mark.benchmark(group="rotate_dek")
def test_rotate_dek_put_many_baseline(benchmark: Any, workload: Workload) -> None:
    cid = workload.session.add_customer()
    items = [(cid, KIND, workload.fields[i]) for i in range(BATCH)]
    measure(
        benchmark,
        workload.session.put_many,
        setup=lambda: ((items,), {"purpose": PURPOSE}),
        op="rotate_dek",
        role="put_many",
        backend=workload.backend,
        units=BATCH,
        rounds=5,
    )
