"""The longest writer stall during a backup (issue 19 item 5), against the same writer's
stall-free baseline in the same run.

A writer process puts one 1 KiB record every :data:`PAUSE_S` seconds and times each
put. Three phases on one vault of ``SHREDVAULT_BENCH_BACKUP_RECORDS`` 1 KiB records
(default 100,000; 1,000,000 is the issue's size, marked ``slow``):

* ``baseline``: the writer alone for :data:`BASELINE_S` seconds;
* ``backup``: the writer while ``Session.backup`` runs (read snapshots begun under the
  log-head lock, copied after it is let go);
* ``locked_copy``: the writer while the same copy runs *inside* the logged transaction
  that holds the log head, as every backup did before: writers wait for the whole copy.

``extra_info`` holds, per phase, the longest put (``*_max_ms``), the 99th percentile and
the puts done; the timed call is the backup. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault.backup import Snapshot
from shredvault.vault.context import Tx
from shredvault.vault.layout import DATA_FILE, KEYS_FILE

from harness import BATCH, KIND, PURPOSE, Workload, make_workload, measure

RECORDS_ENV = "SHREDVAULT_BENCH_BACKUP_RECORDS"
PAUSE_S = 0.005
BASELINE_S = 3.0
ROOT = Path(__file__).resolve().parents[1]

_WRITER = r"""
import json, sys, time
from pathlib import Path
from shredvault.vault import Vault

path, keyfile, data_url, customer, flags = sys.argv[1:6]
flags = Path(flags)
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
session = vault.admin()
fields = {"address": "x" * 980, "name": "writer", "phone": "0"}
times = []
(flags / "ready").touch()
while not (flags / "stop").exists():
    start = time.monotonic()
    session.put(customer, "profile", fields, purpose="service")
    times.append((start, time.monotonic() - start))
    time.sleep(%(pause)s)
vault.close()
print(json.dumps(times))
"""


def _records() -> int:
    return int(os.environ.get(RECORDS_ENV, "100000"))


class Writer:
    """The writer process: started, waited for, stopped; its put latencies."""

    def __init__(self, w: Workload, keyfile: Path, url: str | None, flags: Path) -> None:
        flags.mkdir()
        self.flags = flags
        code = _WRITER % {"pause": PAUSE_S}
        args = [str(w.vault.path), str(keyfile), url or "", w.customer_ids[0], str(flags)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not (flags / "ready").exists():
            assert self.proc.poll() is None, self.proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.5)  # past its first puts

    def stop(self) -> list[tuple[float, float]]:
        (self.flags / "stop").touch()
        out, err = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, err[-2000:]
        return [(float(a), float(b)) for a, b in json.loads(out)]


def _stats(times: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """Longest put and p99 among the puts that overlapped [start, end]."""
    during = sorted(lat for t, lat in times if t <= end and t + lat >= start)
    if not during:
        return {"max_ms": 0.0, "p99_ms": 0.0, "puts": 0}
    p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
    return {"max_ms": during[-1] * 1000, "p99_ms": p99 * 1000, "puts": len(during)}


@pytest.fixture
def stocked(
    tmp_path: Path, backend: str, pg_schemas: Callable[[], str]
) -> Iterator[tuple[Workload, Path, str | None]]:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    url = pg_schemas() if backend == "postgres" else None
    w = make_workload(tmp_path / "vault", keyfile, url, backend)
    items = w.items(BATCH)
    for _ in range(_records() // BATCH):
        w.session.put_many(items, purpose=PURPOSE)
    yield w, keyfile, url
    w.vault.close()


@pytest.mark.benchmark(group="backup_stall")
def test_backup_writer_stall(
    benchmark: Any, stocked: tuple[Workload, Path, str | None], backend: str, tmp_path: Path
) -> None:
    if _records() > 100_000 and not os.environ.get("SHREDVAULT_BENCH_SLOW"):
        pytest.skip("1,000,000 records: set SHREDVAULT_BENCH_SLOW=1 (slow)")
    w, keyfile, url = stocked
    assert KIND == "profile"
    info = benchmark.extra_info
    info["records"] = _records()

    writer = Writer(w, keyfile, url, tmp_path / "flags-baseline")
    start = time.monotonic()
    time.sleep(BASELINE_S)
    times = writer.stop()
    info.update({f"baseline_{k}": v for k, v in _stats(times, start, time.monotonic()).items()})

    writer = Writer(w, keyfile, url, tmp_path / "flags-backup")
    window: list[float] = []

    def backup() -> dict[str, Any]:
        window.append(time.monotonic())
        manifest = w.session.backup(str(tmp_path / "archive.tar"))
        window.append(time.monotonic())
        return manifest

    measure(
        benchmark,
        backup,
        op="backup_stall",
        role="vault",
        backend=backend,
        units=_records(),
        rounds=1,
        warmup_rounds=0,
    )
    times = writer.stop()
    info.update({f"backup_{k}": v for k, v in _stats(times, window[0], window[1]).items()})
    info["backup_s"] = window[1] - window[0]

    writer = Writer(w, keyfile, url, tmp_path / "flags-locked")
    ctx = w.vault._ctx
    out = tmp_path / "locked"
    out.mkdir()
    start = time.monotonic()
    with Snapshot(ctx) as snapshot:

        def locked(tx: Tx) -> None:
            snapshot.begin(tx.head)
            snapshot.copy_keystore(out / KEYS_FILE)
            snapshot.copy_data(out / DATA_FILE, None, tx.head.seq)

        ctx.transact(locked)
    end = time.monotonic()
    times = writer.stop()
    info.update({f"locked_copy_{k}": v for k, v in _stats(times, start, end).items()})
    info["locked_copy_s"] = end - start
    print(json.dumps(info, indent=1))
