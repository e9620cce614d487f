"""`shredvault serve` against the library, same run: record get and put over HTTP
(keep-alive, 8 concurrent clients) vs direct ``Session.get``/``put`` from 8 threads
sharing one thread-safe Vault;
p50/p99 latency and throughput; the server's resident memory after 8,000 requests
against after 1,000 (targets: get throughput >= 0.3x direct, p99 <= 10x p50, memory
within 10%).

Run: ``.venv/bin/pytest benchmarks/test_bench_server.py --benchmark-enable -s``; the
figures are printed and kept in ``extra_info``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shredvault import Vault

from harness import BACKENDS, pg_schema

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serverrun import Served, prepare_vault, start_server

THREADS = 8
GETS = 200  # per thread
PUTS = 60  # per thread
FIELDS = {"name": "Customer 0000001", "phone": "+44 20 7946 0001"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def concurrently(work: Callable[[int], list[float]]) -> tuple[list[float], float]:
    """Run ``work(n)`` on THREADS threads; all latencies and the wall time."""
    results: list[list[float]] = [[] for _ in range(THREADS)]

    def run(n: int) -> None:
        results[n] = work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for r in results for x in r], time.perf_counter() - start


def figures(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1e3,
        "per_s": len(ordered) / wall,
    }


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def direct(
    root: Path, keyfile: Path, url: str | None, token: str, customers: list[str], records: list[str]
) -> dict[str, dict[str, float]]:
    with Vault.open(root, keyfile=keyfile, data_url=url) as vault:
        session = vault.session_for(token)  # one Vault shared by the threads, no lock

        def gets(n: int) -> list[float]:
            def one() -> None:
                session.get(customers[n], records[n], purpose="service")

            return [timed(one) for _ in range(GETS)]

        def puts(n: int) -> list[float]:
            def one() -> None:
                session.put(customers[n], "profile", FIELDS, purpose="service")

            return [timed(one) for _ in range(PUTS)]

        return {"get": figures(*concurrently(gets)), "put": figures(*concurrently(puts))}


def over_http(
    server: Served, token: str, customers: list[str], records: list[str], count: list[int]
) -> dict[str, dict[str, float]]:
    def client() -> httpx.Client:
        return httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def gets(n: int) -> list[float]:
        with client() as http:
            path = f"/v1/customers/{customers[n]}/records/{records[n]}"
            out = [
                timed(lambda: http.get(path, params={"purpose": "service"}).raise_for_status())
                for _ in range(GETS)
            ]
        count[0] += GETS
        return out

    def puts(n: int) -> list[float]:
        body = {"kind": "profile", "fields": FIELDS, "purpose": "service"}
        with client() as http:
            path = f"/v1/customers/{customers[n]}/records"
            out = [
                timed(lambda: http.post(path, json=body).raise_for_status()) for _ in range(PUTS)
            ]
        count[0] += PUTS
        return out

    return {"get": figures(*concurrently(gets)), "put": figures(*concurrently(puts))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_get_and_put_against_direct_session_calls(
    benchmark: Any, tmp_path: Path, keyfile: Path, backend: str
) -> None:
    with pg_schema() if backend == "postgres" else _no_schema() as url:
        staff = prepare_vault(tmp_path / "vault", keyfile, url)
        with Vault.open(tmp_path / "vault", keyfile=keyfile, data_url=url) as vault:
            admin = vault.admin()
            customers = [admin.add_customer() for _ in range(THREADS)]
            records = [admin.put(c, "profile", FIELDS, purpose="service") for c in customers]
        base = direct(tmp_path / "vault", keyfile, url, staff.operator, customers, records)
        server = start_server(tmp_path / "vault", keyfile, url)
        try:
            count = [0]
            http = benchmark.pedantic(
                over_http,
                args=(server, staff.operator, customers, records, count),
                rounds=1,
                iterations=1,
            )
            memory = {}
            while count[0] < 8_000:
                if count[0] >= 1_000 and "after_1000" not in memory:
                    memory["after_1000"] = rss_kib(server.process.pid)
                over_http(server, staff.operator, customers, records, count)
            memory["after_8000"] = rss_kib(server.process.pid)
        finally:
            server.stop()
    result = {
        "direct": base,
        "http": http,
        "get_throughput_ratio": http["get"]["per_s"] / base["get"]["per_s"],
        "put_throughput_ratio": http["put"]["per_s"] / base["put"]["per_s"],
        "get_p99_over_p50": http["get"]["p99_ms"] / http["get"]["p50_ms"],
        "put_p99_over_p50": http["put"]["p99_ms"] / http["put"]["p50_ms"],
        "rss_kib": memory,
        "rss_growth": memory["after_8000"] / memory["after_1000"] - 1,
        "requests": count[0],
    }
    benchmark.extra_info.update(op="serve", backend=backend, **result)
    print(backend, result)


class _no_schema:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
