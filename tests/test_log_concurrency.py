"""One writer at a time (DESIGN §6): four processes writing to the same vault at once
produce one gap-free chain that verifies, on SQLite (BEGIN IMMEDIATE) and on
PostgreSQL (a lock on the log-head row). Real processes, real databases."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.vault import Auditor, Vault

PROCESSES = 4
OPS_PER_PROCESS = 500  # logged operations: alternating put and get
ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, time
from pathlib import Path
from shredvault.vault import Vault

path, keyfile, url, customer, ops, go = sys.argv[1:7]


def wait_for(flag):
    deadline = time.monotonic() + 60
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            sys.exit(f"never saw {flag}")
        time.sleep(0.002)


wait_for(f"{go}.open.{customer}")
with Vault.open(path, keyfile=keyfile, data_url=url or None) as v:
    s = v.admin()
    Path(f"{go}.ready.{customer}").touch()
    wait_for(go)
    written = []
    for i in range(int(ops) // 2):
        fields = {"n": i, "who": customer[-6:]}
        rid = s.put(customer, "profile", fields, purpose="service")
        got = s.get(customer, rid, purpose="service")
        if dict(got.fields) != fields:
            sys.exit(f"read back {got!r} for {rid}")
        written.append(rid)
print(json.dumps(written))
"""


def run_workers(
    vault_path: Path, keyfile: Path, url: str | None, customers: list[str], tmp_path: Path
) -> list[list[str]]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(vault_path),
                str(keyfile),
                url or "",
                customer,
                str(OPS_PER_PROCESS),
                str(go),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for customer in customers
    ]
    try:
        # Unlock one process at a time (an open that overlaps another process's commit
        # can misread the head: see the verify race test below), then let all of them
        # write at the same moment.
        for customer, proc in zip(customers, procs, strict=True):
            (tmp_path / f"go.open.{customer}").touch()
            ready = tmp_path / f"go.ready.{customer}"
            deadline = time.monotonic() + 60
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def log_rows(url: str) -> list[tuple[int, dict[str, Any]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, body FROM sv_log ORDER BY seq")).all()
    finally:
        engine.dispose()
    return [(int(r.seq), json.loads(bytes(r.body))) for r in rows]


@pytest.mark.slow
def test_four_processes_writing_at_once_make_one_gap_free_chain(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    path = tmp_path / "shared"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        v.declare_kind("profile", fields=["n", "who"], purposes=["service"])
        s = v.admin()
        customers = [s.add_customer() for _ in range(PROCESSES)]

    written = run_workers(path, keyfile, backend, customers, tmp_path)

    url = backend or f"sqlite:///{path / 'data.db'}"
    rows = log_rows(url)
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(1, len(rows) + 1))  # one chain, no gaps, no forks
    actions = Counter(entry["action"] for _, entry in rows)
    half = PROCESSES * OPS_PER_PROCESS // 2
    assert actions["record.put"] == half and actions["record.get"] == half
    assert actions["vault.unlock"] == PROCESSES
    assert len(rows) >= PROCESSES * OPS_PER_PROCESS + PROCESSES
    assert all(entry["outcome"] == "ok" for _, entry in rows)
    # The writers really interleaved (each process has its own customer's subject tag).
    subjects = [e["subject"] for _, e in rows if e["action"] in ("record.put", "record.get")]
    switches = sum(1 for a, b in itertools.pairwise(subjects) if a != b)
    assert switches > PROCESSES

    with Vault.open(path, keyfile=keyfile, data_url=backend) as v:
        report = v.verify_log()
        assert report.ok, report.message
        assert report.last_seq == v.head.seq >= len(rows)
        s = v.admin()
        for customer, rids in zip(customers, written, strict=True):
            assert len(rids) == OPS_PER_PROCESS // 2
            records = s.get_many([(customer, r) for r in rids], purpose="service")
            assert [dict(r.fields) for r in records] == [
                {"n": i, "who": customer[-6:]} for i in range(len(rids))
            ]


def test_verifying_while_another_writer_commits_reports_no_false_truncation(
    make_vault: Any, backend: str | None
) -> None:
    v: Vault = make_vault()
    v.declare_kind("profile", fields=["n", "who"], purposes=["service"])
    s = v.admin()
    c = s.add_customer()

    def another_writer_commits(_count: int) -> None:
        # Runs when the verifier has streamed every entry, before it reads the head row.
        s.put(c, "profile", {"n": 1}, purpose="service")

    with Auditor.open(v.path, data_url=backend) as auditor:
        report = auditor.verify(progress=another_writer_commits)
    assert report.ok, report.message
