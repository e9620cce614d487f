"""Handover export and import rate against ``put_many`` of the same records, in the
same run (issue 9, DESIGN §10).

A seller vault holds 5,000 1 KiB records over 100 customers, all consenting to
transfer. Roles (``extra_info["role"]``), group ``handover [<backend>]``:

* ``export``: ``Session.handover_export`` of all 5,000 records (read, decrypt under the
  customers' DEKs, re-seal under the package key, hash, write and fsync the package,
  sign the manifest, one logged transaction with 100 ``customer.handover`` entries).
* ``import``: ``Session.handover_import`` of that package into a fresh acquirer vault
  (verify and decrypt everything, then verify and decrypt again while writing 100
  customers with fresh keys and 5,000 records in one transaction with their entries).
* ``put_many``: one ``Session.put_many`` of the same 5,000 records into a fresh vault
  that already holds the 100 customers: the vault's own write rate, the baseline.

Units are records, so rates read as records per second; the ratios to report are
``put_many time / export time`` and ``put_many time / import time``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import FLOOR
from shredvault.vault import (
    Session,
    Vault,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
)

from harness import FIELDS, KIND, PURPOSE, measure, record_fields

RECORDS = 5_000
CUSTOMERS = 100
ROUNDS = 5


def _vault(root: Path, keyfile: Path, url: str | None) -> Vault:
    v = Vault.create(root, keyfile=keyfile, data_url=url)
    v.declare_kind(KIND, fields=FIELDS, purposes=[PURPOSE, "billing"])
    return v


def _items(cids: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    return [(cids[i % len(cids)], KIND, record_fields(i)) for i in range(RECORDS)]


@pytest.fixture
def stocked(
    tmp_path: Path, keyfile: Path, backend: str, pg_schemas: Callable[[], str]
) -> Iterator[tuple[Vault, list[str], Path, Path]]:
    """The seller vault, its customer ids, and the acquirer's public and private key."""
    url = pg_schemas() if backend == "postgres" else None
    seller = _vault(tmp_path / "seller", keyfile, url)
    s = seller.admin()
    cids = [s.add_customer(consent={"transfer": True}) for _ in range(CUSTOMERS)]
    s.put_many(_items(cids), purpose=PURPOSE)
    pub, key, _fp = handover_keygen(tmp_path / "acquirer", b"bench passphrase", params=FLOOR)
    yield seller, cids, pub, key
    seller.close()


def _fresh_vaults(
    tmp_path: Path,
    keyfile: Path,
    backend: str,
    pg_schemas: Callable[[], str],
    stack: ExitStack,
    stem: str,
) -> Iterator[Vault]:
    """A new empty vault per round (made outside the timing, closed at the end)."""
    for i in count():
        url = pg_schemas() if backend == "postgres" else None
        v = _vault(tmp_path / f"{stem}-{i}", keyfile, url)
        stack.callback(v.close)
        yield v


@pytest.mark.benchmark(group="handover")
def test_handover_export(
    benchmark: Any, stocked: tuple[Vault, list[str], Path, Path], backend: str, tmp_path: Path
) -> None:
    seller, _cids, pub, _key = stocked
    public = read_handover_public_key(pub)
    outs = (str(tmp_path / f"package-{i}.svho") for i in count())
    result = measure(
        benchmark,
        seller.admin().handover_export,
        setup=lambda: ((public, next(outs)), {}),
        op="handover",
        role="export",
        backend=backend,
        units=RECORDS,
        rounds=ROUNDS,
    )
    assert result.records == RECORDS


@pytest.mark.benchmark(group="handover")
def test_handover_import(
    benchmark: Any,
    stocked: tuple[Vault, list[str], Path, Path],
    backend: str,
    tmp_path: Path,
    keyfile: Path,
    pg_schemas: Callable[[], str],
) -> None:
    seller, _cids, pub, key_file = stocked
    package = str(tmp_path / "package.svho")
    seller.admin().handover_export(read_handover_public_key(pub), package)
    key = open_handover_key(key_file, b"bench passphrase")
    with ExitStack() as stack:
        vaults = _fresh_vaults(tmp_path, keyfile, backend, pg_schemas, stack, "acquirer")

        def run(v: Vault) -> int:
            return v.admin().handover_import(package, key).records

        imported = measure(
            benchmark,
            run,
            setup=lambda: ((next(vaults),), {}),
            op="handover",
            role="import",
            backend=backend,
            units=RECORDS,
            rounds=ROUNDS,
        )
    assert imported == RECORDS


@pytest.mark.benchmark(group="handover")
def test_handover_put_many_baseline(
    benchmark: Any,
    backend: str,
    tmp_path: Path,
    keyfile: Path,
    pg_schemas: Callable[[], str],
) -> None:
    with ExitStack() as stack:
        vaults = _fresh_vaults(tmp_path, keyfile, backend, pg_schemas, stack, "baseline")

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            s = next(vaults).admin()
            cids = [s.add_customer(consent={"transfer": True}) for _ in range(CUSTOMERS)]
            return (s, _items(cids)), {}

        def run(s: Session, items: list[tuple[str, str, dict[str, str]]]) -> int:
            return len(s.put_many(items, purpose=PURPOSE))

        stored = measure(
            benchmark,
            run,
            setup=setup,
            op="handover",
            role="put_many",
            backend=backend,
            units=RECORDS,
            rounds=ROUNDS,
        )
    assert stored == RECORDS
