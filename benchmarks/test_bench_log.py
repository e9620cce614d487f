"""The access log at scale: chain verification, export and offline export verification.

Logs are generated with :func:`vault.log.append` straight into an open vault's data
store (see `harness.fill_log`). One vault per backend serves the whole
module and grows as the benchmarks need it:

- ``verify``: ``Vault.verify_log`` over ``SHREDVAULT_BENCH_VERIFY_N`` entries (default
  100k; goal >= 0.8 M entries/s), next to reading the same rows without checking them
  and to raw SHA-256 over the same bytes already in memory.
- ``export``: ``Auditor.export`` of ``SHREDVAULT_BENCH_LOG_N`` entries (default 200k;
  larger values take proportionally longer), the offline ``verify_export`` of that file,
  and their peak memory in fresh processes for the last quarter of the log and for all
  of it (streaming means the two peaks match). Offline verification reads a file, so it
  runs once (on the SQLite export), not per backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.keys import generate_keyfile
from shredvault.vault import Auditor, Vault, verify_export
from shredvault.vault.log import HASH_PREFIX, iter_entries, iter_rows
from shredvault.vault.store import DataStore, log_head

from harness import BACKENDS, data_store, fill_log, measure, pg_schema

VERIFY_N = int(os.environ.get("SHREDVAULT_BENCH_VERIFY_N", "100000"))
#: log sizes of the scaling curve (the log grows from one to the next)
VERIFY_SIZES = [
    int(n) for n in os.environ.get("SHREDVAULT_BENCH_VERIFY_SIZES", "10000,100000").split(",")
]
LOG_N = int(os.environ.get("SHREDVAULT_BENCH_LOG_N", "200000"))
REPO = Path(__file__).resolve().parent.parent


@dataclass
class GrowingLog:
    """An open keyfile vault on ``backend`` and a second engine on its data store,
    through which :meth:`grow_to` appends generated entries."""

    backend: str
    root: Path
    url: str | None
    vault: Vault
    store: DataStore
    entries: int = 1  # vault.create logs one entry
    _exports: dict[int, Path] = field(default_factory=dict)

    def grow_to(self, entries: int) -> None:
        if entries > self.entries:
            fill_log(self.store, entries - self.entries)
        self.entries = int(
            self.store.read(lambda conn: conn.execute(select(log_head.c.seq)).scalar_one())
        )

    def export(self, out: Path, since: int = 1) -> int:
        """``Auditor.export`` of the log from ``since`` into ``out``; returns the count."""
        with Auditor.open(self.root, data_url=self.url) as auditor, out.open("wb") as handle:
            return auditor.export(handle, since=since)

    def exported(self) -> Path:
        """An export of the whole log as it is now (made once per size)."""
        if self.entries not in self._exports:
            path = self.root.parent / f"log-{self.entries}.jsonl"
            self.export(path)
            self._exports[self.entries] = path
        return self._exports[self.entries]


@pytest.fixture(scope="module", params=BACKENDS)
def growing_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrowingLog]:
    tmp = tmp_path_factory.mktemp("log")
    with ExitStack() as stack:
        backend = str(request.param)
        url = stack.enter_context(pg_schema()) if backend == "postgres" else None
        keyfile = tmp / "vault.key"
        generate_keyfile(keyfile)
        vault = Vault.create(tmp / "vault", keyfile=keyfile, data_url=url)
        stack.callback(vault.close)
        store = data_store(tmp / "vault", url)
        stack.callback(store.dispose)
        yield GrowingLog(backend, tmp / "vault", url, vault, store)


def iter_entries_count(store: DataStore) -> int:
    return sum(1 for _ in iter_entries(store))


# -- verify ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="verify")
def test_verify_log_vault(benchmark: Any, growing_log: GrowingLog) -> None:
    filled = growing_log
    filled.grow_to(VERIFY_N)
    report = measure(
        benchmark,
        filled.vault.verify_log,
        op="verify",
        role="vault",
        backend=filled.backend,
        units=filled.entries,
        unit="entry",
        rounds=5,
    )
    assert report.ok, report.message
    assert report.entries == filled.entries


@pytest.mark.benchmark(group="verify")
def test_verify_read_rows_only(benchmark: Any, growing_log: GrowingLog) -> None:
    filled = growing_log
    filled.grow_to(VERIFY_N)
    seen = measure(
        benchmark,
        iter_entries_count,
        setup=lambda: ((filled.store,), {}),
        op="verify",
        role="read",
        backend=filled.backend,
        units=filled.entries,
        unit="entry",
        rounds=5,
    )
    assert seen == filled.entries


@pytest.mark.benchmark(group="verify")
def test_verify_raw_sha256(benchmark: Any, growing_log: GrowingLog) -> None:
    filled = growing_log
    filled.grow_to(VERIFY_N)
    bodies = [entry.body for entry in iter_entries(filled.store)]

    def hash_all() -> int:
        start = hashlib.sha256(HASH_PREFIX).copy
        for body in bodies:
            hasher = start()
            hasher.update(body)
            hasher.digest()
        return len(bodies)

    benchmark.extra_info["body_bytes_mean"] = sum(map(len, bodies)) / len(bodies)
    measure(
        benchmark,
        hash_all,
        op="verify",
        role="sha256",
        backend=filled.backend,
        units=len(bodies),
        unit="entry",
        rounds=5,
    )


def _best(fn: Any, rounds: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@pytest.mark.parametrize("size", VERIFY_SIZES)
@pytest.mark.benchmark(group="verify_scaling")
def test_verify_scaling(benchmark: Any, growing_log: GrowingLog, size: int, tmp_path: Path) -> None:
    """``Vault.verify_log`` at each size (timed), beside baselines taken in the same
    test (best of 3): reading the same rows in bulk without checking them
    (``iter_rows``), and, SQLite only, the offline ``verify_export`` (strict) of an
    export of the log at that size."""
    filled = growing_log
    filled.grow_to(size)
    report = measure(
        benchmark,
        filled.vault.verify_log,
        op="verify_scaling",
        role=f"vault_{size}",
        backend=filled.backend,
        units=filled.entries,
        unit="entry",
        rounds=3,
    )
    assert report.ok, report.message
    read_s, seen = _best(
        lambda: sum(map(len, iter_rows(filled.store, until=filled.entries, columns=True))), 3
    )
    assert seen == filled.entries
    benchmark.extra_info["read_rows_s"] = read_s
    if filled.backend == "sqlite":
        out = tmp_path / "log.jsonl"
        filled.export(out)
        strict_s, checked = _best(lambda: verify_export(out, trust_embedded_key=True), 2)
        assert checked.ok, checked.message
        benchmark.extra_info["verify_export_strict_s"] = strict_s


# -- export and offline verification -----------------------------------------------------


@pytest.mark.benchmark(group="export")
def test_export(benchmark: Any, growing_log: GrowingLog, tmp_path: Path) -> None:
    growing_log.grow_to(LOG_N)
    out = tmp_path / "log.jsonl"
    written = measure(
        benchmark,
        growing_log.export,
        setup=lambda: ((out,), {}),
        op="export",
        role="export",
        backend=growing_log.backend,
        units=growing_log.entries,
        unit="entry",
        rounds=3,
        warmup_rounds=0,
    )
    assert written == growing_log.entries
    benchmark.extra_info["file_bytes"] = out.stat().st_size


def _offline_once(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("offline verification reads a file: measured once, on the SQLite export")


@pytest.mark.parametrize(("strict", "rounds"), [(True, 2), (False, 3)], ids=["strict", "fast"])
@pytest.mark.benchmark(group="export")
def test_verify_export(benchmark: Any, growing_log: GrowingLog, strict: bool, rounds: int) -> None:
    _offline_once(growing_log.backend)
    growing_log.grow_to(LOG_N)
    path = growing_log.exported()
    report = measure(
        benchmark,
        verify_export,
        setup=lambda: ((path,), {"strict": strict}),
        op="export",
        role="verify_export" if strict else "verify_export_fast",
        backend=growing_log.backend,
        units=growing_log.entries,
        unit="entry",
        rounds=rounds,
        warmup_rounds=0,
    )
    assert report.ok, report.message


def _probe(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("memory_probe.py")), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.benchmark(group="export")
def test_export_memory_is_flat(benchmark: Any, growing_log: GrowingLog, tmp_path: Path) -> None:
    """Peak RSS over the RSS after imports, in fresh processes, for the last quarter of
    the log and for all of it: export, then (SQLite only) offline verification."""
    filled = growing_log
    filled.grow_to(LOG_N)
    offline = filled.backend == "sqlite"
    sizes = {"quarter": filled.entries - filled.entries // 4 + 1, "full": 1}
    probes: dict[str, dict[str, Any]] = {}

    def run_probes() -> None:
        for label, since in sizes.items():
            out = tmp_path / f"{label}.jsonl"
            url = ["--url", filled.url] if filled.url else []
            probes[f"export_{label}"] = _probe(
                "export", str(filled.root), str(out), "--since", str(since), *url
            )
            if offline:
                probes[f"verify_{label}"] = _probe("verify", str(out))

    measure(
        benchmark,
        run_probes,
        op="export",
        role="memory",
        backend=filled.backend,
        units=filled.entries,
        unit="entry",
        rounds=1,
        warmup_rounds=0,
    )
    benchmark.extra_info["probes"] = probes
    for what in ("export", "verify") if offline else ("export",):
        quarter, full = probes[f"{what}_quarter"], probes[f"{what}_full"]
        assert full["entries"] >= 3 * quarter["entries"]
        grew = (full["rss_peak_kib"] - full["rss_start_kib"]) - (
            quarter["rss_peak_kib"] - quarter["rss_start_kib"]
        )
        # Flat: four times the entries may not cost more than 16 MiB more at the peak.
        assert grew < 16 * 1024, f"{what} peak memory grew by {grew} KiB with the log"
