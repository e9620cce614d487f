"""Shared fixtures: real vaults on real SQLite files and, when configured, a real
PostgreSQL server (each test in a schema of its own, dropped afterwards)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import generate_keyfile
from shredvault.vault import Vault

PG_URL_ENV = "SHREDVAULT_TEST_POSTGRES_URL"

# The CLI's catch-all for unexpected exceptions prints one line; under test, reaching it
# is a bug, so let the exception (and its traceback) through, in this process and in
# every CLI subprocess the tests start.
os.environ["SHREDVAULT_RAISE_UNEXPECTED"] = "1"
PASSPHRASE = b"correct horse battery staple"


def pg_base_url() -> str | None:
    return os.environ.get(PG_URL_ENV) or None


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """A fresh 32-byte keyfile (mode 0600). Unlocking with it skips Argon2id."""
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    return path


@pytest.fixture
def pg_schemas() -> Iterator[Callable[[], str]]:
    """Make SQLAlchemy URLs whose search_path is a fresh schema each; every schema made
    is dropped after the test. Skips when SHREDVAULT_TEST_POSTGRES_URL is not set."""
    base = pg_base_url()
    if base is None:
        pytest.skip(f"{PG_URL_ENV} not set: PostgreSQL tests skipped")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    made: list[str] = []
    sep = "&" if "?" in base else "?"

    def make() -> str:
        schema = "svt_" + secrets.token_hex(6)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        return f"{base}{sep}options=-csearch_path%3D{schema}"

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for schema in made:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_schemas: Callable[[], str]) -> str:
    """A SQLAlchemy URL whose search_path is a fresh schema, dropped after the test.
    Skips when SHREDVAULT_TEST_POSTGRES_URL is not set."""
    return pg_schemas()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """Parametrizes a test over both data stores: None (SQLite file) or a PG URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


VaultFactory = Callable[..., Vault]


@pytest.fixture
def make_vault(tmp_path: Path, keyfile: Path, backend: str | None) -> Iterator[VaultFactory]:
    """Build vaults on the parametrized backend, with a keyfile; closes them after."""
    opened: list[Vault] = []

    def make(name: str = "vault", **kwargs: object) -> Vault:
        v = Vault.create(tmp_path / name, keyfile=keyfile, data_url=backend, **kwargs)  # type: ignore[arg-type]
        opened.append(v)
        return v

    yield make
    for v in opened:
        v.close()


@pytest.fixture
def sqlite_vault(tmp_path: Path, keyfile: Path) -> Iterator[Vault]:
    """One SQLite vault with a declared ``profile`` kind."""
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    v.declare_kind("profile", fields=["name", "phone", "address"], purposes=["service", "billing"])
    yield v
    v.close()
