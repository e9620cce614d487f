"""Running the application under uvicorn: where to listen, TLS, timeouts.

A non-loopback address is refused without TLS unless the caller says
``insecure_no_tls`` (e.g. behind a TLS-terminating proxy on a private network):
bearer tokens and records must not cross a network in clear by accident.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ..vault import Auditor, SchemaError, Vault
from .app import ServerConfig, create_app
from .worker import VaultWorker

__all__ = ["Listen", "check_transport", "parse_listen", "serve"]


@dataclass(frozen=True, slots=True)
class Listen:
    """A host and port to listen on."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` (``[::1]:8470`` for IPv6); :class:`SchemaError` otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 0 < int(port) < 65536:
        raise SchemaError("listen on HOST:PORT, e.g. 127.0.0.1:8470")
    return Listen(host, int(port))


def check_transport(listen: Listen, *, tls: bool, insecure_no_tls: bool) -> None:
    """Refuse to serve a non-loopback address in clear unless told to."""
    if not listen.loopback and not tls and not insecure_no_tls:
        raise SchemaError(
            f"{listen.host} is not a loopback address: give a TLS certificate and key, "
            "or say --insecure-no-tls (only behind a TLS-terminating proxy)"
        )


def serve(
    vault: Vault,
    listen: Listen,
    *,
    root: str | os.PathLike[str],
    data_url: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure_no_tls: bool = False,
    config: ServerConfig | None = None,
    threads: int | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``vault`` until SIGINT/SIGTERM, running vault calls on ``threads``
    threads (default: 1 on SQLite, 8 on PostgreSQL); at shutdown, sign a checkpoint.
    The caller still owns (and closes) the vault. ``sock``: an already listening
    socket to serve on (several processes share one; :mod:`.processes`)."""
    check_transport(listen, tls=tls_cert is not None, insecure_no_tls=insecure_no_tls)
    if (tls_cert is None) != (tls_key is None):
        raise SchemaError("give both a TLS certificate and its key")

    def export_log(since: int) -> bytes:
        out = io.BytesIO()
        with Auditor.open(root, data_url=data_url) as auditor:
            auditor.export(out, since=since)
        return out.getvalue()

    worker = VaultWorker(vault, threads=threads)
    app = create_app(worker, config, export_log=export_log)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=listen.host,
            port=listen.port,
            ssl_certfile=None if tls_cert is None else str(tls_cert),
            ssl_keyfile=None if tls_key is None else str(tls_key),
            access_log=False,  # paths hold ids and refs; .app logs route templates
            log_config=None,  # the stdlib logging configuration of the host
            timeout_keep_alive=15,
            timeout_graceful_shutdown=20,
            limit_concurrency=256,
            server_header=False,
            lifespan="on",
        )
    )
    try:
        server.run(sockets=None if sock is None else [sock])
    finally:
        worker.close()
