"""Paging (issue 21 item 3): a page of 100 at many customers, next to the unpaged list.

* ``page``: ``Session.list_customers(limit=100, after=cursor)`` from the middle of a vault
  of :data:`CUSTOMERS` customers (``SHREDVAULT_BENCH_PAGE_N``, default 10,000): a keyset
  read on the primary key, its rows checked (row authenticators, freshness) and one
  log entry. Its cost should not grow with the number of customers.
* ``full_list``: ``Session.list_customers()`` of the same vault (every customer, one
  entry): what an application without paging pays for the same question.
* ``audit_page``: ``Session.audit_query(limit=100, after=cursor)`` over the vault's log
  (one ``customer.add`` entry per customer).

The vault is built once per backend outside the timing (``add_customers``, one
transaction per 1,000; one ``customer.add`` entry each).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import Session, Vault

from harness import measure

CUSTOMERS = int(os.environ.get("SHREDVAULT_BENCH_PAGE_N", "10000"))
PAGE = 100


@pytest.fixture
def big_vault(tmp_path: Path, keyfile: Path, backend: str, pg_schemas: Callable[[], str]) -> Any:
    url = pg_schemas() if backend == "postgres" else None
    v = Vault.create(tmp_path / "v", keyfile=keyfile, data_url=url)
    s = v.admin()
    s.add_customers({} for _ in range(CUSTOMERS))  # one transaction per 1,000
    yield s
    v.close()


def _middle_cursor(s: Session) -> str:
    after = None
    for _ in range(CUSTOMERS // PAGE // 2):
        after = s.list_customers(limit=PAGE, after=after).next
    assert after is not None
    return after


@pytest.mark.benchmark(group="paging")
def test_paging_customers(benchmark: Any, backend: str, big_vault: Session) -> None:
    s = big_vault
    cursor = _middle_cursor(s)
    page = measure(
        benchmark,
        lambda: s.list_customers(limit=PAGE, after=cursor),
        op="list_customers page",
        role="vault",
        backend=backend,
        units=PAGE,
        unit="customer",
        rounds=20,
    )
    assert len(page) == PAGE and page.next is not None
    full = measure_once(lambda: s.list_customers())
    assert len(full[0]) == CUSTOMERS
    benchmark.extra_info["full_list_s"] = full[1]
    audit = measure_once(lambda: s.audit_query(action="customer.add", limit=PAGE, after=None))
    assert audit[0]["entries"] == PAGE
    benchmark.extra_info["audit_page_s"] = audit[1]


def measure_once(target: Callable[[], Any]) -> tuple[Any, float]:
    """One untimed warm-up, then the best of three: for the baselines beside the page."""
    import time

    target()
    best = float("inf")
    result = None
    for _ in range(3):
        start = time.perf_counter()
        result = target()
        best = min(best, time.perf_counter() - start)
    return result, best
