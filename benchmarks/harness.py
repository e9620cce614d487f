"""What the benchmarks share: the 1 KiB workload, baseline stores and labelled timing.

Every result is labelled (``extra_info``: op, role, backend, units) so that
``benchmarks/report.py`` can set each vault operation against its baselines.

Every baseline runs in the same process, on the same backend and with the same
durability settings as the vault: the SQLite baselines use ``DataStore.connect`` (WAL,
``synchronous=FULL``, ``BEGIN IMMEDIATE``) on a file of their own; the PostgreSQL ones
use the same engine options on a schema of their own.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, insert, select, text

from shredvault.keys.envelope import HEADER_SIZE, TAG_SIZE
from shredvault.vault import Session, Vault, ids
from shredvault.vault.canonical import canonical
from shredvault.vault.clock import format_ts
from shredvault.vault.layout import DATA_FILE
from shredvault.vault.log import Event, append, encode_body
from shredvault.vault.rowauth import stale
from shredvault.vault.store import DataStore, LogHead, customers, log, log_head, records

PG_URL_ENV = "SHREDVAULT_TEST_POSTGRES_URL"
#: how many customers the scaling runs build (issue 19 item 7; one size per run)
BENCH_CUSTOMERS_ENV = "SHREDVAULT_BENCH_CUSTOMERS"
BENCH_CUSTOMERS_DEFAULT = 1_000


def bench_customers_from_env() -> int:
    """The scaling runs' size: ``SHREDVAULT_BENCH_CUSTOMERS`` (default 1,000)."""
    raw = os.environ.get(BENCH_CUSTOMERS_ENV, str(BENCH_CUSTOMERS_DEFAULT))
    size = int(raw.replace("_", "").replace(",", ""))
    if size < 1:
        raise ValueError(f"{BENCH_CUSTOMERS_ENV} must be a positive number of customers")
    return size


BATCH = 1_000  # records per put_many / get_many call
CUSTOMERS = 100  # a batch spreads over this many customers (10 records each)
RECORD_BYTES = 1_024  # plaintext: the canonical JSON of a record's fields
CIPHERTEXT_BYTES = HEADER_SIZE + RECORD_BYTES + TAG_SIZE  # what the vault stores per record
KIND = "profile"
FIELDS = ("address", "name", "phone")
PURPOSE = "service"
ACTOR = "admin"  # sessions from Vault.admin() log as actor and role "admin"


def record_fields(i: int) -> dict[str, str]:
    """Fields of record ``i`` whose canonical JSON is exactly :data:`RECORD_BYTES` long."""
    fields = {"address": "", "name": f"Customer {i:07d}", "phone": f"+44 20 7946 {i % 10_000:04d}"}
    fields["address"] = "x" * (RECORD_BYTES - len(canonical(fields)))
    assert len(canonical(fields)) == RECORD_BYTES
    return fields


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# -- labelling and timing ------------------------------------------------------------------


def measure(
    benchmark: Any,
    target: Callable[..., Any],
    *,
    op: str,
    role: str,
    backend: str,
    units: int,
    rounds: int,
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
    warmup_rounds: int = 1,
    unit: str = "record",
) -> Any:
    """Time ``target`` with ``benchmark.pedantic`` (one call per round, fresh arguments
    from ``setup`` outside the timing) and label the result for ``report.py``.

    The group becomes ``<marker group> [<backend>]`` so that each group holds one vault
    operation and its baselines on one backend. Each timed call's CPU time
    (``time.process_time``) is kept in ``extra_info["cpu_s"]`` as well.
    """
    benchmark.group = f"{benchmark.group or op} [{backend}]"
    benchmark.extra_info.update(op=op, role=role, backend=backend, units=units, unit=unit)
    cpu: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        result = target(*args, **kwargs)
        cpu.append(time.process_time() - start)
        return result

    result = benchmark.pedantic(
        timed, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1
    )
    benchmark.extra_info["cpu_s"] = cpu[warmup_rounds:]
    return result


# -- backends --------------------------------------------------------------------------------


@contextmanager
def pg_schema() -> Iterator[str]:
    """A URL whose search_path is a fresh ``svb_<random>`` schema, dropped afterwards.
    Skips the calling benchmark when SHREDVAULT_TEST_POSTGRES_URL is not set."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        pytest.skip(f"{PG_URL_ENV} not set: PostgreSQL benchmarks skipped")
    schema = "svb_" + secrets.token_hex(6)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# -- the vault under test ------------------------------------------------------------------


@dataclass
class Workload:
    """An open vault with :data:`CUSTOMERS` customers and a declared 1 KiB kind."""

    backend: str
    vault: Vault
    session: Session
    customer_ids: list[str]
    fields: list[dict[str, str]]

    def items(self, count: int) -> list[tuple[str, str, dict[str, str]]]:
        """``count`` put items, spread round-robin over the customers."""
        n = len(self.customer_ids)
        return [(self.customer_ids[i % n], KIND, self.fields[i]) for i in range(count)]


def make_workload(root: Path, keyfile: Path, data_url: str | None, backend: str) -> Workload:
    vault = Vault.create(root, keyfile=keyfile, data_url=data_url)
    vault.declare_kind(KIND, fields=FIELDS, purposes=[PURPOSE, "billing"])
    session = vault.admin()
    cids = [session.add_customer() for _ in range(CUSTOMERS)]
    return Workload(backend, vault, session, cids, [record_fields(i) for i in range(BATCH)])


# -- the baselines ----------------------------------------------------------------------------


@dataclass
class Baseline:
    """A second data store holding the vault's tables and the same customer rows.

    ``core_*`` methods are plain SQLAlchemy Core statements on the records table.
    ``floor_*`` methods do every database step the vault does for the same operation,
    with rows of the same shapes and sizes, but no encryption, no hashing and no
    per-record Python beyond building tuples (done in ``setup``, outside the timing):
    lock the log head, read the customers' states, write or read the record rows,
    insert one log row per record, move the head, commit.
    """

    backend: str
    store: DataStore
    customer_ids: list[str]
    ciphertext: bytes
    head: LogHead
    subject_tags: dict[str, str] = field(default_factory=dict)

    # -- rows, built outside the timing

    def record_dicts(self, count: int) -> list[dict[str, Any]]:
        now = format_ts(datetime.now(UTC))
        n = len(self.customer_ids)
        return [
            {
                "id": rid,
                "customer_id": self.customer_ids[i % n],
                "kind": KIND,
                "version": 1,
                "dek_version": 1,
                "ciphertext": self.ciphertext,
                "created": now,
                "updated": now,
                "aad_v": 2,
                "seq": 1,
                "auth": secrets.token_hex(32),
            }
            for i, rid in enumerate(ids.new_ids(ids.RECORD, count))
        ]

    def record_tuples(self, count: int) -> list[tuple[Any, ...]]:
        return [tuple(row.values()) for row in self.record_dicts(count)]

    def log_tuples(
        self, action: str, record_ids: list[str], fields: list[list[str]]
    ) -> tuple[list[tuple[Any, ...]], LogHead]:
        """Log rows as the vault would write them for ``action`` on these records, with
        random hex where the vault puts hashes; and the head after them."""
        ts = format_ts(datetime.now(UTC))
        seq, prev = self.head.seq, self.head.hash
        n = len(self.customer_ids)
        text: dict[Any, str] = {}
        rows: list[tuple[Any, ...]] = []
        for i, rid in enumerate(record_ids):
            seq += 1
            cid = self.customer_ids[i % n]
            ev = Event(
                ACTOR,
                ACTOR,
                action,
                subject=self.subject_tags[cid],
                record=rid,
                purpose=PURPOSE,
                detail={"kind": KIND, "fields": fields[i]},
            )
            body = encode_body(ev, seq, ts, prev, ev.detail, text)
            digest = secrets.token_hex(32)
            target = f"record:{rid}" if action == "record.put" else None
            rows.append((seq, prev, digest, ts, ACTOR, action, ev.subject, rid, "ok", body, target))
            prev = digest
        return rows, LogHead(seq, prev, ts)

    # -- timed operations

    def core_insert(self, rows: list[dict[str, Any]]) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(insert(records), rows)

    def core_select(self, record_ids: list[str]) -> list[Any]:
        with self.store.engine.begin() as conn:
            return conn.execute(
                select(records).where(records.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": record_ids},
            ).all()

    def floor_put(
        self, record_rows: list[tuple[Any, ...]], log_rows: list[tuple[Any, ...]], head: LogHead
    ) -> None:
        with self.store.engine.begin() as conn:
            self._lock_head(conn)
            self._customer_states(conn, self.customer_ids[: min(len(record_rows), CUSTOMERS)])
            self.store.insert_many(conn, records, record_rows)
            self.store.insert_many(conn, log, log_rows)
            DataStore.set_head(conn, head)
        self.head = head

    def floor_get(
        self, record_ids: list[str], log_rows: list[tuple[Any, ...]], head: LogHead
    ) -> list[Any]:
        with self.store.engine.begin() as conn:
            self._lock_head(conn)
            self._customer_states(conn, self.customer_ids[: min(len(record_ids), CUSTOMERS)])
            rows = conn.execute(
                select(records).where(records.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": record_ids},
            ).all()
            self._newest_changes(conn, [f"record:{r}" for r in record_ids])
            self.store.insert_many(conn, log, log_rows)
            DataStore.set_head(conn, head)
        self.head = head
        return rows

    def _lock_head(self, conn: Any) -> None:
        stmt = select(log_head.c.seq, log_head.c.hash, log_head.c.ts).where(log_head.c.id == 1)
        if not self.store.is_sqlite:
            stmt = stmt.with_for_update()
        conn.execute(stmt).one()

    def _customer_states(self, conn: Any, cids: list[str]) -> None:
        conn.execute(
            select(customers).where(customers.c.id.in_(bindparam("ids", expanding=True))),
            {"ids": cids},
        ).all()
        self._newest_changes(conn, [f"subject:{self.subject_tags[c]}" for c in cids])

    @staticmethod
    def _newest_changes(conn: Any, targets: list[str]) -> None:
        """The freshness lookup of authenticated rows (the vault's own query)."""
        stale(conn, dict.fromkeys(targets, 2**62))


def make_baseline(
    path: Path, data_url: str | None, backend: str, customer_ids: list[str]
) -> Baseline:
    if data_url is None:
        store = DataStore.connect(sqlite_path=path)
    else:
        store = DataStore.connect(url=data_url)
    store.create_schema()
    now = format_ts(datetime.now(UTC))
    with store.engine.begin() as conn:
        store.init_rows(conn, {"vault_id": "baseline", "schema_version": "1"})
        conn.execute(
            insert(customers),
            [
                {
                    "id": cid,
                    "ref": None,
                    "state": "active",
                    "dek_version": 1,
                    "retain_until": None,
                    "legal_hold": False,
                    "consent": "{}",
                    "created": now,
                    "shredded": None,
                }
                for cid in customer_ids
            ],
        )
    return Baseline(
        backend,
        store,
        customer_ids,
        os.urandom(CIPHERTEXT_BYTES),
        LogHead(0, "0" * 64, ""),
        {cid: secrets.token_hex(16) for cid in customer_ids},
    )


# -- large logs ---------------------------------------------------------------------------------


def data_store(root: Path, data_url: str | None) -> DataStore:
    """A second engine on a vault's data store (the vault may stay open)."""
    if data_url is None:
        return DataStore.connect(sqlite_path=root / DATA_FILE)
    return DataStore.connect(url=data_url)


def fill_log(store: DataStore, count: int, *, batch: int = 10_000) -> None:
    """Append ``count`` entries shaped like the vault's record entries (alternating
    ``record.get`` and ``record.put`` over :data:`CUSTOMERS` subjects), with
    :func:`vault.log.append` in transactions of ``batch`` entries. Much faster than
    going through sessions: no records, no crypto, only the chain."""
    tags = [secrets.token_hex(16) for _ in range(CUSTOMERS)]
    events = [
        Event(
            ACTOR,
            ACTOR,
            "record.get" if i % 2 else "record.put",
            subject=tags[i % CUSTOMERS],
            record=rid,
            purpose=PURPOSE,
            detail={"kind": KIND, "fields": sorted(FIELDS)},
        )
        for i, rid in enumerate(ids.new_ids(ids.RECORD, batch))
    ]
    done = 0
    while done < count:
        chunk = events[: min(batch, count - done)]
        store.run(
            lambda conn, head, chunk=chunk: append(conn, store, head, chunk, datetime.now(UTC))
        )
        done += len(chunk)
