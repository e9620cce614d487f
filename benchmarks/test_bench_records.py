"""Records: put, put_many(1,000) and get_many(1,000) of 1 KiB records, each next to its
baselines on the same backend in the same process (DESIGN §10).

Roles (``extra_info["role"]``): ``vault`` is the library call; ``core`` is plain
SQLAlchemy Core on the records table with random bytes of the same ciphertext length;
``floor`` is every database step the vault takes (head lock, customer states, record
rows, log rows, head update, commit) with rows of the same shapes and sizes, but no
crypto and no hashing. Run with ``--benchmark-enable`` (see README.md).
"""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest

from shredvault.vault import Role

from harness import BATCH, FIELDS, KIND, PURPOSE, Baseline, Workload, measure

PUT_ROUNDS = 60
BATCH_ROUNDS = 15
LOG_FIELDS = sorted(FIELDS)


# -- put: one record, one transaction ---------------------------------------------------------


@pytest.mark.benchmark(group="put")
def test_put_vault(benchmark: Any, workload: Workload) -> None:
    turn = count()
    session = workload.session

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = next(turn)
        cid = workload.customer_ids[i % len(workload.customer_ids)]
        return (cid, KIND, workload.fields[i % BATCH]), {"purpose": PURPOSE}

    rid = measure(
        benchmark,
        session.put,
        setup=setup,
        op="put",
        role="vault",
        backend=workload.backend,
        units=1,
        rounds=PUT_ROUNDS,
    )
    assert rid.startswith("rec_")


@pytest.mark.benchmark(group="put")
def test_put_core_insert(benchmark: Any, baseline: Baseline) -> None:
    measure(
        benchmark,
        baseline.core_insert,
        setup=lambda: ((baseline.record_dicts(1),), {}),
        op="put",
        role="core",
        backend=baseline.backend,
        units=1,
        rounds=PUT_ROUNDS,
    )


@pytest.mark.benchmark(group="put")
def test_put_floor(benchmark: Any, baseline: Baseline) -> None:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        rows = baseline.record_tuples(1)
        log_rows, head = baseline.log_tuples("record.put", [rows[0][0]], [LOG_FIELDS])
        return (rows, log_rows, head), {}

    measure(
        benchmark,
        baseline.floor_put,
        setup=setup,
        op="put",
        role="floor",
        backend=baseline.backend,
        units=1,
        rounds=PUT_ROUNDS,
    )


# -- put_many: 1,000 records over 100 customers, one transaction ----------------------------


@pytest.mark.benchmark(group="put_many")
def test_put_many_vault(benchmark: Any, workload: Workload) -> None:
    items = workload.items(BATCH)
    rids = measure(
        benchmark,
        workload.session.put_many,
        setup=lambda: ((items,), {"purpose": PURPOSE}),
        op="put_many",
        role="vault",
        backend=workload.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )
    assert len(rids) == BATCH


@pytest.mark.benchmark(group="put_many")
def test_put_many_core_insert(benchmark: Any, baseline: Baseline) -> None:
    measure(
        benchmark,
        baseline.core_insert,
        setup=lambda: ((baseline.record_dicts(BATCH),), {}),
        op="put_many",
        role="core",
        backend=baseline.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )


@pytest.mark.benchmark(group="put_many")
def test_put_many_floor(benchmark: Any, baseline: Baseline) -> None:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        rows = baseline.record_tuples(BATCH)
        log_rows, head = baseline.log_tuples(
            "record.put", [r[0] for r in rows], [LOG_FIELDS] * BATCH
        )
        return (rows, log_rows, head), {}

    measure(
        benchmark,
        baseline.floor_put,
        setup=setup,
        op="put_many",
        role="floor",
        backend=baseline.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )


# -- get_many: the same 1,000 records back, one log entry each -------------------------------


@pytest.mark.benchmark(group="get_many")
def test_get_many_vault(benchmark: Any, workload: Workload) -> None:
    items = workload.items(BATCH)
    rids = workload.session.put_many(items, purpose=PURPOSE)
    pairs = [(cid, rid) for (cid, _kind, _fields), rid in zip(items, rids, strict=True)]
    got = measure(
        benchmark,
        workload.session.get_many,
        setup=lambda: ((pairs,), {"purpose": PURPOSE}),
        op="get_many",
        role="vault",
        backend=workload.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )
    assert [r.fields for r in got] == workload.fields[:BATCH]


# -- the access check: the same get_many as admin, operator, and a field allow-list ------

ACCESS_ROLES = ("admin", "operator", "allow_list")


@pytest.mark.benchmark(group="access")
@pytest.mark.parametrize("who", ACCESS_ROLES)
def test_get_many_access_check(benchmark: Any, workload: Workload, who: str) -> None:
    """Issue 5: the role/purpose/field check must cost <= 1 us per record, i.e. an
    operator's get_many (token session, principal re-read per transaction) and a custom
    role with a field allow-list (every returned record filtered) run at >= 0.95x the
    administrator's. Each case gets its own vault on the same backend in the same run."""
    admin = workload.session
    session = admin
    if who != "admin":
        role = "operator"
        if who == "allow_list":
            role = "clerk"
            admin.add_role(
                Role.build(
                    role,
                    actions=["read", "list"],
                    kinds=[KIND],
                    fields=[f"{KIND}.{f}" for f in FIELDS],
                    purposes=[PURPOSE],
                )
            )
        session = workload.vault.login(admin.add_principal(f"bench-{who}", role=role))
    items = workload.items(BATCH)
    rids = admin.put_many(items, purpose=PURPOSE)
    pairs = [(cid, rid) for (cid, _kind, _fields), rid in zip(items, rids, strict=True)]
    got = measure(
        benchmark,
        session.get_many,
        setup=lambda: ((pairs,), {"purpose": PURPOSE}),
        op="access",
        role=who,
        backend=workload.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )
    assert [r.fields for r in got] == workload.fields[:BATCH]


def _stored_ids(baseline: Baseline) -> list[str]:
    rows = baseline.record_dicts(BATCH)
    baseline.core_insert(rows)
    return [r["id"] for r in rows]


@pytest.mark.benchmark(group="get_many")
def test_get_many_core_select(benchmark: Any, baseline: Baseline) -> None:
    record_ids = _stored_ids(baseline)
    got = measure(
        benchmark,
        baseline.core_select,
        setup=lambda: ((record_ids,), {}),
        op="get_many",
        role="core",
        backend=baseline.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )
    assert len(got) == BATCH


@pytest.mark.benchmark(group="get_many")
def test_get_many_floor(benchmark: Any, baseline: Baseline) -> None:
    record_ids = _stored_ids(baseline)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        log_rows, head = baseline.log_tuples("record.get", record_ids, [LOG_FIELDS] * BATCH)
        return (record_ids, log_rows, head), {}

    got = measure(
        benchmark,
        baseline.floor_get,
        setup=setup,
        op="get_many",
        role="floor",
        backend=baseline.backend,
        units=BATCH,
        rounds=BATCH_ROUNDS,
    )
    assert len(got) == BATCH
