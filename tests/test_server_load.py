"""The server under load and under kill -9, on SQLite and PostgreSQL: concurrent
keep-alive clients get no error, the chain verifies, each access is one log entry
(plus one ``auth.login`` per token and server process);
a server killed mid-load loses nothing it acknowledged."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shredvault import Auditor, Vault

from serverrun import Served, prepare_vault, start_server

CLIENTS = 8


def run_clients(
    server: Served,
    token: str,
    customers: list[str],
    requests: int,
    *,
    stop: threading.Event | None = None,
) -> tuple[Counter[str], list[str], list[tuple[str, str]]]:
    """``CLIENTS`` threads, each on its own customer and keep-alive connection, doing
    ``requests`` mixed calls (put, get, update). Returns counts of acknowledged calls
    per action, unexpected answers, and every acknowledged (customer, record)."""
    done: Counter[str] = Counter()
    errors: list[str] = []
    written: list[tuple[str, str]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        customer = customers[n]
        base = f"/v1/customers/{customer}/records"
        mine: list[str] = []
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            for i in range(requests):
                if stop is not None and stop.is_set():
                    return
                roll = rng.random()
                try:
                    if not mine or roll < 0.3:
                        body = {
                            "kind": "profile",
                            "fields": {"name": f"n{n}-{i}", "phone": str(i)},
                            "purpose": "service",
                        }
                        response = http.post(base, json=body)
                        action, ok = "record.put", 201
                    elif roll < 0.8:
                        record = rng.choice(mine)
                        response = http.get(f"{base}/{record}", params={"purpose": "service"})
                        action, ok = "record.get", 200
                    else:
                        record = rng.choice(mine)
                        body = {"fields": {"phone": f"u{i}"}, "purpose": "service"}
                        response = http.patch(f"{base}/{record}", json=body)
                        action, ok = "record.update", 200
                except httpx.HTTPError as error:
                    if stop is None:
                        with lock:
                            errors.append(type(error).__name__)
                    return
                if response.status_code != ok:
                    with lock:
                        errors.append(f"{action} {response.status_code} {response.text[:200]}")
                    continue
                with lock:
                    done[action] += 1
                    if action == "record.put":
                        record_id = response.json()["id"]
                        mine.append(record_id)
                        written.append((customer, record_id))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, errors, written


def add_customers(server: Served, token: str) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    return [
        httpx.post(server.url + "/v1/customers", json={}, headers=headers).json()["id"]
        for _ in range(CLIENTS)
    ]


def check_load(tmp_path: Path, keyfile: Path, backend: str | None, requests: int) -> None:
    staff = prepare_vault(tmp_path / "vault", keyfile, backend)
    server = start_server(tmp_path / "vault", keyfile, backend)
    try:
        customers = add_customers(server, staff.admin)
        done, errors, _ = run_clients(server, staff.operator, customers, requests)
    finally:
        server.stop()
    assert errors == []
    assert sum(done.values()) == CLIENTS * requests
    with Auditor.open(tmp_path / "vault", data_url=backend) as auditor:
        logged = Counter(
            e["action"]
            for e in auditor.entries()
            if e.get("actor") == "olga" and e.get("outcome") == "ok"
        )
    assert {a: logged[a] for a in done} == dict(done)  # one entry per access
    # Vault.session_for: the token's first use in this server process is its one login,
    # and no request logs a login of its own
    assert logged["auth.login"] == 1
    assert sum(logged.values()) == sum(done.values()) + 1
    with Vault.open(tmp_path / "vault", keyfile=keyfile, data_url=backend) as vault:
        assert vault.verify_log().ok


def test_eight_clients_of_mixed_requests_get_no_error_and_each_access_is_logged_once(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    check_load(tmp_path, keyfile, backend, requests=40)


@pytest.mark.slow
def test_eight_clients_of_a_thousand_mixed_requests(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    check_load(tmp_path, keyfile, backend, requests=1000)


def test_kill_9_mid_load_loses_no_acknowledged_write(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    staff = prepare_vault(tmp_path / "vault", keyfile, backend)
    server = start_server(tmp_path / "vault", keyfile, backend)
    customers = add_customers(server, staff.admin)
    stop = threading.Event()
    outcome: list[tuple[Counter[str], list[str], list[tuple[str, str]]]] = []
    load = threading.Thread(
        target=lambda: outcome.append(
            run_clients(server, staff.operator, customers, 10_000, stop=stop)
        )
    )
    load.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until some writes were acknowledged
        time.sleep(0.2)
        with Auditor.open(tmp_path / "vault", data_url=backend) as auditor:
            if auditor.head.seq > 60:
                break
    server.kill()
    load.join(120)
    stop.set()
    _done, errors, written = outcome[0]
    assert errors == [] and written
    with Vault.open(tmp_path / "vault", keyfile=keyfile, data_url=backend) as vault:
        assert vault.verify_log().ok
        records = vault.admin().get_many(written, purpose="service")
    assert [(r.customer, r.id) for r in records] == written
