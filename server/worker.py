"""The open vault behind the server: a bounded pool of threads runs the vault calls,
each request with the session :meth:`Vault.session_for` gives its token.

The Vault is safe to share between threads, so requests run side by side. On SQLite
the default is one thread: every request is a write (its log entry), SQLite has one
writer, and threads that lose the race wait in SQLite's busy handler, whose backoff
sleeps turned a p50 of 19 ms into a p99 of 1 s (benchmarks/README.md); one thread
queues them fairly instead. ``session_for`` logs a token's first use
in this process as ``auth.login`` and reuses its session after that; the gate re-reads
the principal (revocation, expiry) and its role on every access, so nothing is cached
that could outlive a revocation. The event loop stays free for parsing, limits and
replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..vault import Session, Vault

__all__ = ["DEFAULT_THREADS", "VaultWorker", "default_threads"]

T = TypeVar("T")

#: threads running vault calls at once (``serve --threads``) on PostgreSQL
DEFAULT_THREADS = 8


def default_threads(vault: Vault) -> int:
    """One thread on SQLite (one writer; see above), :data:`DEFAULT_THREADS` otherwise."""
    return 1 if vault.backend == "sqlite" else DEFAULT_THREADS


class VaultWorker:
    """Drives the unlocked vault from ``threads`` threads (by default
    :func:`default_threads`) while the server runs; at shutdown signs a checkpoint and
    stops them. Whoever opened the vault closes it."""

    def __init__(self, vault: Vault, *, threads: int | None = None) -> None:
        threads = default_threads(vault) if threads is None else threads
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._vault = vault
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shredvault")
        self._closed = False

    @property
    def vault(self) -> Vault:
        return self._vault

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on one of the vault's threads and return its result (or raise)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def session(self, token: str) -> Session:
        """The session ``token`` names (call on a vault thread): a login, logged, on the
        token's first use in this process; :class:`AccessDeniedError` for a bad token."""
        return self._vault.session_for(token)

    def close(self) -> None:
        """Wait for the calls in flight, then sign a checkpoint at the log head (every
        acknowledged write is then under a signature). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._vault.checkpoint()
