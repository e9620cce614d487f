"""Decommission (issue 9) against its same-run baseline.

* ``vault``: ``Session.decommission`` of a vault of :data:`CUSTOMERS` customers with one
  1 KiB record each: batched shreds (3 commits and one WAL truncation per 500
  customers), compaction, key destruction, final entry, certificate, seed destruction.
* ``shred_each``: the same customers of an identical vault shredded one by one with
  ``Session.shred`` (the per-customer protocol: about five fsynced commits, a signed
  checkpoint and a WAL truncation each) — what a decommission without the batched path
  would cost for its shredding alone.

Every round gets a fresh vault, built in ``setup`` outside the timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import Session, Vault

from harness import KIND, PURPOSE, measure, record_fields

CUSTOMERS = 200
ROUNDS = 3


@pytest.fixture
def fresh_vaults(
    tmp_path: Path, keyfile: Path, backend: str, pg_schemas: Callable[[], str]
) -> Iterator[Callable[[], tuple[Session, list[str]]]]:
    """Builds a new vault with CUSTOMERS customers (one record each) per call."""
    opened: list[Vault] = []
    made = count()

    def build() -> tuple[Session, list[str]]:
        url = pg_schemas() if backend == "postgres" else None
        v = Vault.create(tmp_path / f"v{next(made)}", keyfile=keyfile, data_url=url)
        opened.append(v)
        v.declare_kind(KIND, fields=("address", "name", "phone"), purposes=[PURPOSE])
        s = v.admin()
        cids = [s.add_customer() for _ in range(CUSTOMERS)]
        s.put_many([(c, KIND, record_fields(i)) for i, c in enumerate(cids)], purpose=PURPOSE)
        return s, cids

    yield build
    for v in opened:
        v.close()


@pytest.mark.benchmark(group="decommission")
def test_decommission_vault(
    benchmark: Any, backend: str, fresh_vaults: Callable[[], tuple[Session, list[str]]]
) -> None:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        session, _cids = fresh_vaults()
        return (session,), {}

    cert = measure(
        benchmark,
        lambda session: session.decommission(reason="bench"),
        setup=setup,
        op="decommission",
        role="vault",
        backend=backend,
        units=CUSTOMERS,
        unit="customer",
        rounds=ROUNDS,
        warmup_rounds=0,
    )
    assert cert.document["counts"]["customers_shredded"] == CUSTOMERS


@pytest.mark.benchmark(group="decommission")
def test_decommission_shred_each_baseline(
    benchmark: Any, backend: str, fresh_vaults: Callable[[], tuple[Session, list[str]]]
) -> None:
    def shred_each(session: Session, cids: list[str]) -> int:
        for cid in cids:
            session.shred(cid, reason="bench")
        return len(cids)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return fresh_vaults(), {}

    done = measure(
        benchmark,
        shred_each,
        setup=setup,
        op="decommission",
        role="shred_each",
        backend=backend,
        units=CUSTOMERS,
        unit="customer",
        rounds=ROUNDS,
        warmup_rounds=0,
    )
    assert done == CUSTOMERS
