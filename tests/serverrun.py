"""A real ``shredvault serve`` in a child process on 127.0.0.1 and a free port, for
tests and benchmarks: start it, wait until it answers, stop it (SIGTERM, or SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Served", "Staff", "free_port", "prepare_vault", "served", "start_server"]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    """A running server: its URL and process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a graceful shutdown: it signs a checkpoint); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def server_log(self) -> str:
        return self.log.read_text("utf-8", "replace")


def start_server(
    root: Path,
    keyfile: Path,
    data_url: str | None = None,
    *extra: str,
    log: Path | None = None,
) -> Served:
    """Start ``shredvault serve`` on the vault at ``root`` and wait for /readyz."""
    for _attempt in range(3):
        port = free_port()
        log_path = log or root.parent / f"server-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
        env["SHREDVAULT_KEYFILE"] = str(keyfile)
        if data_url is not None:
            env["SHREDVAULT_DATA_URL"] = data_url
        args = [sys.executable, "-m", "shredvault", "serve", "--vault", str(root)]
        args += ["--listen", f"127.0.0.1:{port}", *extra]
        with log_path.open("wb") as out:
            process = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return Served(url, process, log_path)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
        text = log_path.read_text("utf-8", "replace")
        if "address already in use" not in text.lower():
            raise AssertionError(f"server did not start:\n{text}")
    raise AssertionError("no free port")


@contextmanager
def served(root: Path, keyfile: Path, data_url: str | None = None, *extra: str) -> Iterator[Served]:
    """A server for the ``with`` block, stopped gracefully after it."""
    server = start_server(root, keyfile, data_url, *extra)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


@dataclass(frozen=True)
class Staff:
    """Tokens of the principals :func:`prepare_vault` adds."""

    admin: str
    operator: str
    auditor: str
    billing: str  # custom role: read and list profile.name for billing only


def prepare_vault(root: Path, keyfile: Path, data_url: str | None = None) -> Staff:
    """Create a vault with a ``profile`` kind (``phone`` searchable, as digits) and one
    principal per role."""
    from shredvault import Role, Vault

    with Vault.create(root, keyfile=keyfile, data_url=data_url) as vault:
        vault.declare_kind(
            "profile",
            fields=["name", "phone"],
            purposes=["service", "billing"],
            searchable={"phone": "digits"},
        )
        admin = vault.admin()
        admin.add_role(
            Role.build(
                "billing",
                actions=["read", "list"],
                kinds=["profile"],
                fields=["profile.name"],
                purposes=["billing"],
            )
        )
        return Staff(
            admin=admin.add_principal("boss", role="admin"),
            operator=admin.add_principal("olga", role="operator"),
            auditor=admin.add_principal("aude", role="auditor"),
            billing=admin.add_principal("bill", role="billing"),
        )
