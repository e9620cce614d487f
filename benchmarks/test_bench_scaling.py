"""Scaling curves (issue 19 items 4 and 7): open, ``shred --expired``, ``rotate-dek
--all`` and ``add_customers`` at N customers (``SHREDVAULT_BENCH_CUSTOMERS``, the
``bench_customers`` fixture), each beside the same operation on a vault of
:data:`REFERENCE` customers built and measured in the same run. SQLite, keyfile vaults,
one small record per customer. The tests run in this order on the same two vaults:
open, rotate-dek, shred --expired (shreds up to 60 customers of each), add (adds
customers to each).

Groups and roles (``extra_info``: ``customers`` = N of the vault measured):

* ``scale_open``: ``Vault.open`` (keyfile); ``vault`` at N, ``reference`` at 100.
* ``scale_shred_expired``: ``shred_expired`` of :data:`EXPIRING` customers whose
  retention was set in the past (outside the timing), in a vault of N / of 100.
* ``scale_rotate_dek``: ``rotate_deks()`` of every customer, at N / at 100 (units:
  customers, so the rate is customers per second).
* ``scale_add``: ``add_customers`` of :data:`ADDED` customers into a vault of N / 100;
  ``one_by_one``: ``add_customer`` called :data:`ADDED_ONE_BY_ONE` times, the API
  before batches (units: customers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import Session, Vault

from harness import measure

REFERENCE = 100
EXPIRING = 20
ADDED = 1_000
ADDED_ONE_BY_ONE = 200
KIND = "note"
PURPOSE = "service"
_PUT_BATCH = 10_000


class Built:
    """A keyfile vault of ``size`` customers with one record each."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.keyfile = root.parent / f"{root.name}.key"
        generate_keyfile(self.keyfile)
        self.size = size
        self.vault = Vault.create(root, keyfile=self.keyfile)
        self.vault.declare_kind(KIND, fields=["text"], purposes=[PURPOSE])
        self.session: Session = self.vault.admin()
        self.customers = self.session.add_customers([{} for _ in range(size)])
        items = [(c, KIND, {"text": "x" * 100}) for c in self.customers]
        for start in range(0, len(items), _PUT_BATCH):
            self.session.put_many(items[start : start + _PUT_BATCH], purpose=PURPOSE)
        self._next_expiring = 0

    def expire_next(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Set :data:`EXPIRING` more customers' retention in the past (a setup step)."""
        start = self._next_expiring
        self._next_expiring += EXPIRING
        for cid in self.customers[start : start + EXPIRING]:
            self.session.set_retention(cid, "2000-01-01")
        return (), {}


@pytest.fixture(scope="module")
def vaults(
    tmp_path_factory: pytest.TempPathFactory, bench_customers: int
) -> Iterator[dict[str, Built]]:
    base = tmp_path_factory.mktemp("bench-scaling")
    built = {
        "vault": Built(base / "n", bench_customers),
        "reference": Built(base / "ref", REFERENCE),
    }
    yield built
    for b in built.values():
        b.vault.close()


ROLES = ["vault", "reference"]


def _label(benchmark: Any, b: Built) -> None:
    benchmark.extra_info["customers"] = b.size


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.benchmark(group="scale_open")
def test_scale_open(benchmark: Any, vaults: dict[str, Built], role: str) -> None:
    b = vaults[role]
    _label(benchmark, b)
    opened: list[Vault] = []

    def close_last() -> tuple[tuple[Any, ...], dict[str, Any]]:
        while opened:
            opened.pop().close()
        return (), {}

    measure(
        benchmark,
        lambda: opened.append(Vault.open(b.root, keyfile=b.keyfile)),
        setup=close_last,
        op="scale_open",
        role=role,
        backend="sqlite",
        units=1,
        unit="open",
        rounds=7,
    )
    close_last()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.benchmark(group="scale_rotate_dek")
def test_scale_rotate_dek(benchmark: Any, vaults: dict[str, Built], role: str) -> None:
    b = vaults[role]
    _label(benchmark, b)
    done = measure(
        benchmark,
        b.session.rotate_deks,
        op="scale_rotate_dek",
        role=role,
        backend="sqlite",
        units=len(b.customers),
        unit="customer",
        rounds=1 if b.size > 10_000 else 3,
        warmup_rounds=0,
    )
    assert done


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.benchmark(group="scale_shred_expired")
def test_scale_shred_expired(benchmark: Any, vaults: dict[str, Built], role: str) -> None:
    b = vaults[role]
    _label(benchmark, b)
    rounds = min(3, b.size // EXPIRING)
    result = measure(
        benchmark,
        lambda: b.session.shred_expired(reason="retention period ended"),
        setup=b.expire_next,
        op="scale_shred_expired",
        role=role,
        backend="sqlite",
        units=EXPIRING,
        unit="customer",
        rounds=max(1, rounds),
        warmup_rounds=0,
    )
    assert len(result.receipts) == EXPIRING


@pytest.mark.parametrize("role", [*ROLES, "one_by_one"])
@pytest.mark.benchmark(group="scale_add")
def test_scale_add(benchmark: Any, vaults: dict[str, Built], role: str) -> None:
    b = vaults["vault" if role == "one_by_one" else role]
    _label(benchmark, b)
    if role == "one_by_one":

        def add() -> list[str]:
            return [b.session.add_customer() for _ in range(ADDED_ONE_BY_ONE)]

        units = ADDED_ONE_BY_ONE
    else:

        def add() -> list[str]:
            return b.session.add_customers([{} for _ in range(ADDED)])

        units = ADDED
    measure(
        benchmark,
        add,
        op="scale_add",
        role=role,
        backend="sqlite",
        units=units,
        unit="customer",
        rounds=3,
    )
