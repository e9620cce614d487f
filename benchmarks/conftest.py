"""Benchmark fixtures: real vaults next to baseline data stores with the same tables.

Kept apart from ``tests/conftest.py`` on purpose (benchmarks build bigger vaults and
label every result for ``report.py``); the helpers live in `benchmarks/harness.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import ids

from harness import (
    BACKENDS,
    CUSTOMERS,
    Baseline,
    Workload,
    bench_customers_from_env,
    make_baseline,
    make_workload,
    pg_schema,
)


@pytest.fixture(scope="session")
def bench_customers() -> int:
    """How many customers a scaling benchmark builds its vault with: the environment
    variable ``SHREDVAULT_BENCH_CUSTOMERS`` (default 1,000), e.g. 100, 1000, 10000,
    100000 for the curves in README.md; each run measures one size."""
    return bench_customers_from_env()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrizes a benchmark over both data stores."""
    return str(request.param)


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """A 32-byte keyfile: vaults for record benchmarks unlock without Argon2id."""
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    return path


@pytest.fixture
def pg_schemas() -> Iterator[Callable[[], str]]:
    """Make as many fresh PostgreSQL schemas as a benchmark needs; drop them after.
    Calling it skips the benchmark when SHREDVAULT_TEST_POSTGRES_URL is not set."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(pg_schema())


@pytest.fixture
def workload(
    tmp_path: Path, keyfile: Path, backend: str, pg_schemas: Callable[[], str]
) -> Iterator[Workload]:
    """An open vault (keyfile-unlocked) on ``backend`` with customers and a 1 KiB kind."""
    url = pg_schemas() if backend == "postgres" else None
    w = make_workload(tmp_path / "vault", keyfile, url, backend)
    yield w
    w.vault.close()


@pytest.fixture
def baseline(tmp_path: Path, backend: str, pg_schemas: Callable[[], str]) -> Iterator[Baseline]:
    """A baseline data store on ``backend`` (own file or schema) with customer rows."""
    url = pg_schemas() if backend == "postgres" else None
    b = make_baseline(tmp_path / "baseline.db", url, backend, ids.new_ids(ids.CUSTOMER, CUSTOMERS))
    yield b
    b.store.dispose()
