"""Backup and restore throughput on a vault of 5,000 1 KiB records (DESIGN §7a, §10),
next to a plain SQLite online-backup copy of the same ``data.db`` in the same run.

Roles (``extra_info["role"]``), SQLite only:

* ``backup_create``: ``vault`` is ``Session.backup`` (lock the log head, copy both
  stores with the backup API, hash them, sign the manifest, write the tar, log it);
  ``sqlite_backup`` is ``sqlite3.Connection.backup`` of the live ``data.db`` into a new
  file, the floor for any consistent copy.
* ``backup_restore``: ``vault`` is ``restore_backup`` replaying later shreds from the
  live vault (verify the archive and the log inside, move the stores, verify the live
  log, open, log ``vault.restore``); ``vault_no_replay`` the same with
  ``accept_unreplayed_window`` (no live log to verify); ``verify`` is
  ``verify_backup`` alone; ``sqlite_backup`` is the same backup-API copy of ``data.db``.

Units are records (5,000), so report rates read as records per second.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import ShredSource, restore_backup, verify_backup
from shredvault.vault.layout import DATA_FILE

from harness import BATCH, PURPOSE, Workload, make_workload, measure

RECORDS = 5_000
ROUNDS = 9


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workload, Path, Path]]:
    """A keyfile vault with 5,000 records over 100 customers, one archive of it, and the
    directory for fresh outputs."""
    base = tmp_path_factory.mktemp("bench-backup")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    workload = make_workload(base / "vault", keyfile, None, "sqlite")
    items = workload.items(BATCH)
    for _ in range(RECORDS // BATCH):
        workload.session.put_many(items, purpose=PURPOSE)
    workload.session.backup(str(base / "archive.tar"))
    yield workload, keyfile, base
    workload.vault.close()


def _fresh(base: Path, stem: str, suffix: str = "") -> Iterator[Path]:
    """New output paths, one per round; the previous round's output is deleted first
    (outside the timing), so a run's disk use stays at one copy per benchmark."""
    previous: Path | None = None
    for i in count():
        if previous is not None:
            if previous.is_dir():
                shutil.rmtree(previous)
            else:
                previous.unlink(missing_ok=True)
        previous = base / f"{stem}-{i}{suffix}"
        yield previous


def sqlite_backup_copy(source: Path, dest: Path) -> None:
    """The SQLite online-backup API, as the vault's snapshot uses it for data.db."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


# -- create ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="backup_create")
def test_backup_create_vault(benchmark: Any, stocked: tuple[Workload, Path, Path]) -> None:
    workload, _keyfile, base = stocked
    outs = _fresh(base, "create", ".tar")
    manifest = measure(
        benchmark,
        workload.session.backup,
        setup=lambda: ((str(next(outs)),), {}),
        op="backup_create",
        role="vault",
        backend="sqlite",
        units=RECORDS,
        rounds=ROUNDS,
    )
    benchmark.extra_info["archive_bytes"] = sum(m["size"] for m in manifest["members"].values())
    assert manifest["seq"] >= RECORDS


@pytest.mark.benchmark(group="backup_create")
def test_backup_create_sqlite_backup(benchmark: Any, stocked: tuple[Workload, Path, Path]) -> None:
    workload, _keyfile, base = stocked
    outs = _fresh(base, "copy-create", ".db")
    measure(
        benchmark,
        sqlite_backup_copy,
        setup=lambda: ((workload.vault.path / DATA_FILE, next(outs)), {}),
        op="backup_create",
        role="sqlite_backup",
        backend="sqlite",
        units=RECORDS,
        rounds=ROUNDS,
    )


# -- restore -----------------------------------------------------------------------------------


@pytest.mark.benchmark(group="backup_restore")
@pytest.mark.parametrize("role", ["vault", "vault_no_replay"])
def test_backup_restore_vault(
    benchmark: Any, stocked: tuple[Workload, Path, Path], role: str
) -> None:
    workload, keyfile, base = stocked
    targets = _fresh(base, f"restore-{role}")
    if role == "vault":
        options: dict[str, Any] = {"source": ShredSource(vault_dir=workload.vault.path)}
    else:
        options = {"accept_unreplayed_window": True}
    result = measure(
        benchmark,
        restore_backup,
        setup=lambda: ((base / "archive.tar", next(targets)), {"keyfile": keyfile, **options}),
        op="backup_restore",
        role=role,
        backend="sqlite",
        units=RECORDS,
        rounds=ROUNDS,
    )
    assert result["shreds_replayed"] == 0


@pytest.mark.benchmark(group="backup_restore")
def test_backup_restore_verify_only(benchmark: Any, stocked: tuple[Workload, Path, Path]) -> None:
    _workload, _keyfile, base = stocked
    report = measure(
        benchmark,
        verify_backup,
        setup=lambda: ((base / "archive.tar",), {}),
        op="backup_restore",
        role="verify",
        backend="sqlite",
        units=RECORDS,
        rounds=ROUNDS,
    )
    assert report.ok, report.message


@pytest.mark.benchmark(group="backup_restore")
def test_backup_restore_sqlite_backup(benchmark: Any, stocked: tuple[Workload, Path, Path]) -> None:
    workload, _keyfile, base = stocked
    outs = _fresh(base, "copy-restore", ".db")
    measure(
        benchmark,
        sqlite_backup_copy,
        setup=lambda: ((workload.vault.path / DATA_FILE, next(outs)), {}),
        op="backup_restore",
        role="sqlite_backup",
        backend="sqlite",
        units=RECORDS,
        rounds=ROUNDS,
    )
