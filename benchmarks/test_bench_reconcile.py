"""Reconciliation at open (docs/shredding.md): what the keystore-vs-log check costs.

One vault per backend and size (``SHREDVAULT_BENCH_RECONCILE_N``, default ``100,10000``
customers), each customer with one 1 KiB record, every tenth shredded (through
``shred_expired``, so the log holds an intent and a shred entry for each). Groups
``reconcile_<N> [<backend>]``:

- ``vault``: ``Vault.open`` as it runs every day: the keystore's mark at the head the
  last close left, so reconciliation reads (almost) nothing;
- ``no_reconcile``: the same open with reconciliation switched off (the mark taken to be
  past the head, planning and reconciling skipped): the baseline in the same run;
- ``rescan``: ``Vault.open`` with the mark removed from keys.db before each round, as
  a keys.db copy from before this check, or the first open after upgrading, finds it:
  the whole log verified and scanned for shreds (none left to reconcile);
- ``verify``: ``verify_store`` over the whole log, no observer (what ``rescan`` adds
  over ``vault`` besides the scan itself);
- ``read``: ``iter_entries`` over the whole log, no checking (reading the same rows);
- ``repair`` (SQLite only): ``Vault.open`` of a copy of the vault whose keys.db was put
  back from before the shreds: every shredded customer erased again (one data
  transaction with a checkpoint each, one keystore transaction, one scrub).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import Vault, opening
from shredvault.vault.chain import verify_store
from shredvault.vault.log import iter_entries
from shredvault.vault.reconcile import RECONCILED_SEQ_KEY

from harness import KIND, PURPOSE, data_store, measure, pg_schema, record_fields

SIZES = [int(n) for n in os.environ.get("SHREDVAULT_BENCH_RECONCILE_N", "100,10000").split(",")]
SHRED_EVERY = 10  # 10% of the customers shredded
ROUNDS = 9
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class SteppingClock:
    """A clock the setup can move forward (retention must pass before shred_expired)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class ReconcileVault:
    backend: str
    customers: int
    root: Path
    url: str | None
    keyfile: Path
    clock: SteppingClock
    pre_shred_keys: Path
    entries: int = 0

    def open(self) -> Vault:
        return Vault.open(self.root, keyfile=self.keyfile, data_url=self.url, clock=self.clock)

    def drop_mark(self) -> None:
        conn = sqlite3.connect(self.root / "keys.db")
        try:
            with conn:
                conn.execute("DELETE FROM meta WHERE k = ?", (RECONCILED_SEQ_KEY,))
        finally:
            conn.close()


def build(root: Path, keyfile: Path, url: str | None, backend: str, n: int) -> ReconcileVault:
    clock = SteppingClock()
    due = datetime.now(UTC) + timedelta(days=1)
    v = Vault.create(root, keyfile=keyfile, data_url=url, clock=clock)
    v.declare_kind(KIND, fields=["address", "name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    cids = [s.add_customer(retain_until=due if i % SHRED_EVERY == 0 else None) for i in range(n)]
    for start in range(0, n, 1000):
        part = cids[start : start + 1000]
        s.put_many([(c, KIND, record_fields(i)) for i, c in enumerate(part)], purpose=PURPOSE)
    v.close()
    copy = root.parent / f"{root.name}-pre-shred-keys"
    copy.mkdir()
    shutil.copy2(root / "keys.db", copy / "keys.db")
    clock.offset = timedelta(days=2)
    v = Vault.open(root, keyfile=keyfile, data_url=url, clock=clock)
    done = v.admin().shred_expired()
    assert len(done.receipts) == (n + SHRED_EVERY - 1) // SHRED_EVERY
    v.close()
    return ReconcileVault(backend, n, root, url, keyfile, clock, copy)


PARAMS = [pytest.param(("sqlite", n), id=f"sqlite-{n}") for n in SIZES] + [
    pytest.param(("postgres", n), id=f"postgres-{n}", marks=pytest.mark.postgres) for n in SIZES
]


@pytest.fixture(scope="module", params=PARAMS)
def reconcile_vault(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReconcileVault]:
    backend, n = request.param
    with ExitStack() as stack:
        url = stack.enter_context(pg_schema()) if backend == "postgres" else None
        base = tmp_path_factory.mktemp(f"reconcile-{backend}-{n}")
        keyfile = base / "vault.key"
        generate_keyfile(keyfile)
        yield build(base / "vault", keyfile, url, backend, n)


def _op(w: ReconcileVault) -> dict[str, Any]:
    return {"op": f"reconcile_{w.customers}", "backend": w.backend, "units": 1, "unit": "open"}


def _label(benchmark: Any, w: ReconcileVault) -> None:
    benchmark.group = f"reconcile_{w.customers}"
    with w.open() as v:
        head = v.head.seq
    benchmark.extra_info.update(customers=w.customers, shredded_every=SHRED_EVERY, entries=head)


def _opens(benchmark: Any, w: ReconcileVault, role: str, before: Any = None) -> None:
    opened: list[Vault] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        while opened:
            opened.pop().close()
        if before is not None:
            before()
        return (), {}

    _label(benchmark, w)
    measure(
        benchmark, lambda: opened.append(w.open()), role=role, rounds=ROUNDS, setup=setup, **_op(w)
    )
    while opened:
        opened.pop().close()


@pytest.mark.benchmark(group="reconcile")
def test_open_with_reconciliation(benchmark: Any, reconcile_vault: ReconcileVault) -> None:
    _opens(benchmark, reconcile_vault, "vault")


@pytest.mark.benchmark(group="reconcile")
def test_open_without_reconciliation(
    benchmark: Any, reconcile_vault: ReconcileVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The open as it was before reconciliation: verification from the anchor only (a
    # mark beyond any seq), no planning, no reconciling.
    monkeypatch.setattr(opening, "read_mark", lambda store: 10**15)
    monkeypatch.setattr(opening, "plan_reconcile", lambda ctx, scan: None)
    monkeypatch.setattr(opening, "refuse_unconfirmed", lambda plan: None)
    monkeypatch.setattr(opening, "reconcile", lambda ctx, scan, upto: [])
    _opens(benchmark, reconcile_vault, "no_reconcile")


@pytest.mark.benchmark(group="reconcile")
def test_open_rescanning_the_whole_log(benchmark: Any, reconcile_vault: ReconcileVault) -> None:
    _opens(benchmark, reconcile_vault, "rescan", before=reconcile_vault.drop_mark)


@pytest.mark.benchmark(group="reconcile")
def test_verify_the_whole_log(benchmark: Any, reconcile_vault: ReconcileVault) -> None:
    w = reconcile_vault
    _label(benchmark, w)
    with w.open() as v:
        vault_id, public_key = v.vault_id, v.public_key
    store = data_store(w.root, w.url)
    try:
        measure(
            benchmark,
            lambda: verify_store(store, vault_id=vault_id, public_key=public_key),
            role="verify",
            rounds=ROUNDS,
            **_op(w),
        )
    finally:
        store.dispose()


@pytest.mark.benchmark(group="reconcile")
def test_read_the_whole_log(benchmark: Any, reconcile_vault: ReconcileVault) -> None:
    w = reconcile_vault
    _label(benchmark, w)
    store = data_store(w.root, w.url)
    try:
        measure(
            benchmark,
            lambda: sum(1 for _ in iter_entries(store)),
            role="read",
            rounds=ROUNDS,
            **_op(w),
        )
    finally:
        store.dispose()


@pytest.mark.benchmark(group="reconcile")
def test_open_repairing_an_old_keystore(
    benchmark: Any, reconcile_vault: ReconcileVault, tmp_path: Path
) -> None:
    w = reconcile_vault
    if w.url is not None:
        pytest.skip("the repair needs a fresh copy of the data store per round: SQLite only")
    _label(benchmark, w)
    copies: list[Path] = []
    opened: list[Vault] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        while opened:
            opened.pop().close()
        copy = tmp_path / f"copy-{len(copies)}"
        shutil.copytree(w.root, copy, ignore=shutil.ignore_patterns("keys.db*"))
        shutil.copy2(w.pre_shred_keys / "keys.db", copy / "keys.db")
        copies.append(copy)
        return (copy,), {}

    def repair(copy: Path) -> None:
        opened.append(Vault.open(copy, keyfile=w.keyfile, clock=w.clock))

    rounds = 3 if w.customers <= 1000 else 1
    measure(benchmark, repair, role="repair", rounds=rounds, setup=setup, warmup_rounds=0, **_op(w))
    while opened:
        opened.pop().close()
    shredded = (w.customers + SHRED_EVERY - 1) // SHRED_EVERY
    benchmark.extra_info["repaired"] = shredded
    conn = sqlite3.connect(copies[-1] / "keys.db")
    try:
        (left,) = conn.execute("SELECT COUNT(DISTINCT customer_id) FROM deks").fetchone()
    finally:
        conn.close()
    assert left == w.customers - shredded  # every restored key of a shredded customer gone
