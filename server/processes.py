"""Several server processes on one listening socket (``serve --workers N``, PostgreSQL
only).

The parent never unlocks the vault: it binds the socket once, then starts ``N``
children with the ``spawn`` start method (a fresh interpreter: no copy of the parent's
memory). Each child receives the socket and the credential through multiprocessing's
pipe (never its argv or environment), opens and unlocks the vault itself (keys.db is
locked for several processes on one host, the data store is PostgreSQL) and runs
:func:`serve` on the shared socket; the kernel hands each new connection to one of
them. The parent supervises: SIGTERM/SIGINT is passed on as SIGTERM to every child
(each finishes its requests and signs its shutdown checkpoint); a child that dies is
logged (its pid and exit code); when every child is gone without being told to stop,
the parent exits non-zero. Failed-login limits are per process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

from ..keys import KeysError
from ..vault import VaultError
from .app import ServerConfig
from .run import Listen

__all__ = ["WorkerSpec", "bind", "run_workers"]

LOGGER = logging.getLogger("shredvault.server")

#: seconds a child has to stop after SIGTERM (uvicorn's graceful 20 s, then the
#: checkpoint) before it is killed
STOP_GRACE = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """What each child needs to open the vault and serve. ``unlock`` holds the
    credential (``passphrase`` bytes or ``keyfile`` path) and is never printed."""

    root: Path
    data_url: str | None
    unlock: Mapping[str, Any]
    listen: Listen
    tls_cert: Path | None
    tls_key: Path | None
    insecure_no_tls: bool
    config: ServerConfig | None
    threads: int | None
    log_level: str

    def __repr__(self) -> str:
        return f"<WorkerSpec {self.listen.host}:{self.listen.port}>"


def bind(listen: Listen) -> socket.socket:
    """The listening socket, bound once by the parent and shared by its children."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listen.host, listen.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ignore(signum: int, _frame: FrameType | None) -> None:
    """A signal already handled by uvicorn's graceful shutdown."""


def _child(spec: WorkerSpec, sock: socket.socket) -> None:
    """One worker process: unlock, serve on the shared socket until SIGTERM, close
    (signing a checkpoint)."""

    logging.basicConfig(
        level=spec.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        _open_and_serve(spec, sock)
    except (VaultError, KeysError) as error:  # messages hold no secret (docs/errors)
        LOGGER.error("worker process %d stopped: %s: %s", os.getpid(), type(error).__name__, error)
        sys.exit(1)


def _open_and_serve(spec: WorkerSpec, sock: socket.socket) -> None:
    from ..vault import Vault
    from .run import serve

    with Vault.open(spec.root, data_url=spec.data_url, **spec.unlock) as vault:
        # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again under
        # the handler it found: make that one a no-op, so the vault is closed (and its
        # checkpoint signed) here and the child exits 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        serve(
            vault,
            spec.listen,
            root=spec.root,
            data_url=spec.data_url,
            tls_cert=spec.tls_cert,
            tls_key=spec.tls_key,
            insecure_no_tls=spec.insecure_no_tls,
            config=spec.config,
            threads=spec.threads,
            sock=sock,
        )


def run_workers(spec: WorkerSpec, workers: int) -> int:
    """Serve with ``workers`` processes until SIGTERM/SIGINT; the exit code: 0 when
    told to stop and every child stopped cleanly, 1 otherwise."""
    if workers < 2:
        raise ValueError("run_workers needs at least 2 workers")
    sock = bind(spec.listen)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child, args=(spec, sock), name=f"shredvault-{n}")
        for n in range(workers)
    ]
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        LOGGER.info("started %d worker processes: %s", workers, [c.pid for c in children])
        sock.close()  # the children hold their own copies
        alive = list(children)
        while alive and not stopping:
            for sentinel in wait([c.sentinel for c in alive], timeout=0.5):
                dead = next(c for c in alive if c.sentinel == sentinel)
                dead.join()
                alive.remove(dead)
                LOGGER.error("worker process %s exited with code %s", dead.pid, dead.exitcode)
        if not alive:
            LOGGER.error("every worker process has exited")
            return 1
        LOGGER.info("stopping %d worker processes", len(alive))
        for child in alive:
            if child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        clean = len(alive) == workers
        for child in alive:
            child.join(STOP_GRACE)
            if child.exitcode is None:
                LOGGER.error("worker process %s did not stop: killed", child.pid)
                child.kill()
                child.join()
            if child.exitcode != 0:
                LOGGER.error("worker process %s exited with code %s", child.pid, child.exitcode)
                clean = False
        return 0 if clean else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.pid is not None and child.is_alive():
                child.kill()
                child.join()
