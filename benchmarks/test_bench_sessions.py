"""A web request's cost (issue 21 item 5): a remembered session against a login.

* ``session_for``: ``Vault.session_for(token)`` then one ``get``: what a service pays per
  request once the token is remembered (one log entry: the read).
* ``login``: ``Vault.login(token)`` then the same ``get``: a login per request (two
  entries: ``auth.login`` and the read), the baseline.
* ``threads``: 400 ``get`` calls spread over 8 threads sharing one vault, next to
  ``one_thread``: the same 400 on one thread (the stores' locks order the writers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import Vault

from harness import measure

READS = 400
THREADS = 8


@pytest.fixture
def served(tmp_path: Path, keyfile: Path, backend: str, pg_schemas: Callable[[], str]) -> Any:
    url = pg_schemas() if backend == "postgres" else None
    vault = Vault.create(tmp_path / "v", keyfile=keyfile, data_url=url)
    vault.declare_kind("profile", fields=["name"], purposes=["service"])
    admin = vault.admin()
    token = admin.add_principal("web", role="operator")
    cid = admin.add_customer()
    rid = admin.put(cid, "profile", {"name": "n"}, purpose="service")
    vault.session_for(token)
    yield vault, token, cid, rid
    vault.close()


@pytest.mark.benchmark(group="request")
@pytest.mark.parametrize("how", ["session_for", "login"])
def test_request(benchmark: Any, backend: str, served: Any, how: str) -> None:
    vault, token, cid, rid = served
    open_session = vault.session_for if how == "session_for" else vault.login

    def request() -> Any:
        return open_session(token).get(cid, rid, purpose="service")

    got = measure(benchmark, request, op="request", role=how, backend=backend, units=1, rounds=200)
    assert got.fields["name"] == "n"


@pytest.mark.benchmark(group="shared vault")
@pytest.mark.parametrize("threads", [1, THREADS])
def test_reads_from_threads(benchmark: Any, backend: str, served: Any, threads: int) -> None:
    vault, token, cid, rid = served

    def reads() -> None:
        def work() -> None:
            session = vault.session_for(token)
            for _ in range(READS // threads):
                session.get(cid, rid, purpose="service")

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    role = "one_thread" if threads == 1 else "threads"
    measure(benchmark, reads, op="shared vault", role=role, backend=backend, units=READS, rounds=5)
    assert vault.verify_log().ok
