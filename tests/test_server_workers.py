"""``shredvault serve --workers N``: several server processes on one socket over
PostgreSQL, each unlocking the vault itself; refused on SQLite (one writer)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from shredvault import Auditor, Vault
from shredvault.keys import generate_keyfile

from serverrun import REPO, free_port, prepare_vault, start_server

CLIENTS = 4
REQUESTS = 50


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_worker_processes_share_the_load_and_stop_with_the_parent(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    root = tmp_path / "vault"
    staff = prepare_vault(root, keyfile, pg_url)
    server = start_server(root, keyfile, pg_url, "--workers", "2", "--threads", "2")
    served_by: Counter[str] = Counter()
    done: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    try:
        # both children up: fresh connections until each has answered (bounded)
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            response = httpx.get(server.url + "/healthz", headers={"Connection": "close"})
            seen.add(response.headers["x-shredvault-worker"])
            assert response.json()["worker"] == int(response.headers["x-shredvault-worker"])
        assert len(seen) == 2
        admin = {"Authorization": f"Bearer {staff.admin}"}
        customers = [
            httpx.post(server.url + "/v1/customers", json={}, headers=admin).json()["id"]
            for _ in range(CLIENTS)
        ]

        def client(n: int) -> None:
            rng = random.Random(n)
            base = f"/v1/customers/{customers[n]}/records"
            mine: list[str] = []
            headers = {"Authorization": f"Bearer {staff.operator}", "Connection": "close"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                for i in range(REQUESTS):
                    if not mine or rng.random() < 0.4:
                        body = {
                            "kind": "profile",
                            "fields": {"name": f"n{i}"},
                            "purpose": "service",
                        }
                        response = http.post(base, json=body)
                        action, ok = "record.put", 201
                    else:
                        record = rng.choice(mine)
                        response = http.get(f"{base}/{record}", params={"purpose": "service"})
                        action, ok = "record.get", 200
                    with lock:
                        if response.status_code != ok:
                            errors.append(f"{action} {response.status_code}")
                            continue
                        done[action] += 1
                        served_by[response.headers["x-shredvault-worker"]] += 1
                        if action == "record.put":
                            mine.append(response.json()["id"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        code = server.stop()
    assert code == 0, server.server_log()
    assert errors == []
    assert sum(done.values()) == CLIENTS * REQUESTS
    assert set(served_by) <= seen and len(served_by) == 2  # both processes served
    assert all(gone(int(pid)) for pid in seen)
    with Auditor.open(root, data_url=pg_url) as auditor:
        logged = Counter(
            e["action"]
            for e in auditor.entries()
            if e.get("actor") == "olga" and e.get("outcome") == "ok"
        )
        checkpoints = sum(1 for e in auditor.entries() if e["action"] == "audit.checkpoint")
    assert {a: logged[a] for a in done} == dict(done)  # one entry per access
    assert logged["auth.login"] == 2  # one login per token and worker process
    assert sum(logged.values()) == sum(done.values()) + 2
    assert checkpoints >= 1
    with Vault.open(root, keyfile=keyfile, data_url=pg_url) as vault:
        assert vault.verify_log().ok
    text = server.server_log()
    assert staff.operator not in text


def test_several_workers_on_sqlite_is_a_usage_error(tmp_path: Path, keyfile: Path) -> None:
    root = tmp_path / "vault"
    prepare_vault(root, keyfile)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env["SHREDVAULT_KEYFILE"] = str(keyfile)
    args = [sys.executable, "-m", "shredvault", "serve", "--vault", str(root)]
    args += ["--listen", f"127.0.0.1:{free_port()}", "--workers", "2"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert b"PostgreSQL" in result.stderr and b"sqlite" in result.stderr


def test_a_dead_worker_is_reported_and_the_others_keep_serving(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    root = tmp_path / "vault"
    prepare_vault(root, keyfile, pg_url)
    server = start_server(root, keyfile, pg_url, "--workers", "2", "--threads", "1")
    try:
        victim = int(httpx.get(server.url + "/healthz").headers["x-shredvault-worker"])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while f"worker process {victim} exited" not in server.server_log():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(5):  # the other worker answers every new connection
            response = httpx.get(server.url + "/readyz", headers={"Connection": "close"})
            assert response.status_code == 200
            assert int(response.headers["x-shredvault-worker"]) != victim
    finally:
        code = server.stop()
    assert code == 1  # one worker had died
    assert f"worker process {victim} exited with code -9" in server.server_log()


def test_when_no_worker_can_unlock_the_parent_exits_non_zero(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    root = tmp_path / "vault"
    prepare_vault(root, keyfile, pg_url)
    wrong = tmp_path / "wrong.key"
    generate_keyfile(wrong)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env["SHREDVAULT_KEYFILE"] = str(wrong)
    env["SHREDVAULT_DATA_URL"] = pg_url
    args = [sys.executable, "-m", "shredvault", "serve", "--vault", str(root)]
    args += ["--listen", f"127.0.0.1:{free_port()}", "--workers", "2"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, timeout=120)
    assert result.returncode == 1
    assert b"every worker process has exited" in result.stderr
    assert result.stderr.count(b"stopped: UnlockError") == 2 and b"Traceback" not in result.stderr
    assert wrong.read_bytes() not in result.stderr
