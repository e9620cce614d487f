"""One open vault shared by threads (issue 21 item 5): eight threads putting, reading
and listing at once through one ``Vault`` leave one gap-free chain that verifies, with
exactly one entry per access, on SQLite and PostgreSQL. Real threads, real databases."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shredvault.vault import Vault

from conftest import VaultFactory

THREADS = 8
ROUNDS = 6  # each round: a new customer (keystore and data store), put, get, list


def test_eight_threads_share_one_vault_and_the_chain_stays_linear(
    make_vault: VaultFactory,
) -> None:
    vault = make_vault()
    vault.declare_kind("profile", fields=["n", "who"], purposes=["service"])
    admin = vault.admin()
    start = vault.head.seq
    go = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def work(name: str) -> None:
        try:
            session = vault.admin()
            go.wait()
            for n in range(ROUNDS):
                customer = session.add_customer(ref=f"{name}-{n}")
                fields = {"n": n, "who": customer[-6:]}
                rid = session.put(customer, "profile", fields, purpose="service")
                assert dict(session.get(customer, rid, purpose="service").fields) == fields
                page = session.list_records(customer, purpose="service", limit=1)
                assert len(page) == 1
        except BaseException as error:  # handed to the main thread's assertion
            failures.append(error)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    report = vault.verify_log()
    assert report.ok, report.message
    # one entry per access: an add, a put, a get and a one-record page per round
    assert vault.head.seq - start == THREADS * ROUNDS * 4
    assert len(admin.list_customers()) == THREADS * ROUNDS


class _Abandon(Exception):
    pass


def test_a_threads_keystore_write_never_joins_anothers_transaction(
    make_vault: VaultFactory,
) -> None:
    """Each thread has its own keystore connection: a write begun while another
    thread's transaction is open waits for it, and survives that one's rollback."""
    store = make_vault().admin()._ctx.keys.store  # type: ignore[attr-defined]
    began, other_started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def abandoned() -> None:
        try:
            with store.transaction() as conn:
                store.set_meta(conn, "test_abandoned", "1")
                began.set()
                other_started.wait(10)
                raise _Abandon
        except _Abandon:
            pass
        except BaseException as error:
            errors.append(error)

    def kept() -> None:
        began.wait(10)
        other_started.set()
        try:
            with store.transaction() as conn:
                store.set_meta(conn, "test_kept", "1")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=abandoned), threading.Thread(target=kept)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get_meta("test_abandoned") is None
    assert store.get_meta("test_kept") == "1"


WORKER = r"""
import sys, threading, time
from pathlib import Path
from shredvault.vault import Vault

path, keyfile, url, ready, go, threads, rounds = sys.argv[1:8]
with Vault.open(path, keyfile=keyfile, data_url=url or None) as vault:
    session = vault.admin()
    customers = [session.add_customer() for _ in range(int(threads))]
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.002)

    def work(customer):
        for n in range(int(rounds)):
            rid = session.put(customer, "profile", {"n": n}, purpose="service")
            assert session.get(customer, rid, purpose="service").fields["n"] == n

    pool = [threading.Thread(target=work, args=(c,)) for c in customers]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
"""


@pytest.mark.slow
def test_threads_in_several_processes_keep_one_chain(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    """Two processes, four threads each, writing at once: one gap-free chain."""
    path, threads, rounds = tmp_path / "shared", 4, 10
    with Vault.create(path, keyfile=keyfile, data_url=backend) as vault:
        vault.declare_kind("profile", fields=["n"], purposes=["service"])
        start = vault.head.seq
    go, procs = tmp_path / "go", []
    try:
        for n in range(2):  # opened one at a time, then all write at once
            ready = tmp_path / f"ready{n}"
            args = [str(path), str(keyfile), backend or "", str(ready), str(go)]
            procs.append(
                subprocess.Popen([sys.executable, "-c", WORKER, *args, str(threads), str(rounds)])
            )
            while not ready.exists() and procs[-1].poll() is None:
                time.sleep(0.005)
        go.touch()
        assert [p.wait(120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    with Vault.open(path, keyfile=keyfile, data_url=backend) as vault:
        assert vault.verify_log().ok
        added = vault.admin().audit_query(action="record.put")["entries"]
        read = vault.admin().audit_query(action="record.get")["entries"]
        assert added == read == 2 * threads * rounds
        assert vault.head.seq > start
