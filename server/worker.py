"""The open vault behind the server: one worker thread runs every vault call, and
sessions are kept per token for a short while.

The Vault is driven from a single thread, so the server is correct whether or not the
library is thread-safe; the event loop stays free for parsing, limits and replies.
Once the Vault is safe to share between threads, the executor can hold several
workers (docs/server.md says how). A cached session is safe to reuse: the gate re-reads
the principal (revocation, expiry) and its role on every call, so the cache only
saves the login itself (and its ``auth.login`` log entry) for ``session_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..vault import Session, Vault

__all__ = ["VaultWorker"]

T = TypeVar("T")


class VaultWorker:
    """Drives the unlocked vault while the server runs; at shutdown signs a checkpoint
    and stops its thread. Whoever opened the vault closes it."""

    def __init__(
        self,
        vault: Vault,
        *,
        session_ttl: float = 30.0,
        max_sessions: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._vault = vault
        self._ttl = session_ttl
        self._max_sessions = max_sessions
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shredvault")
        # keyed by the token's SHA-256: the cache does not keep tokens themselves
        self._sessions: OrderedDict[bytes, tuple[Session, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def vault(self) -> Vault:
        return self._vault

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the vault's thread and return its result (or raise)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def session(self, token: str) -> Session:
        """The session ``token`` names (call on the vault's thread). A cache miss logs
        in, which raises :class:`AccessDeniedError` for a bad token."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        with self._lock:
            hit = self._sessions.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        session = self._vault.login(token)
        with self._lock:
            self._sessions[key] = (session, now + self._ttl)
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        return session

    def close(self) -> None:
        """Sign a checkpoint at the log head on the vault's thread (every acknowledged
        write is then under a signature), forget the sessions and stop the thread.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._sessions.clear()
        try:
            self._executor.submit(self._vault.checkpoint).result()
        finally:
            self._executor.shutdown(wait=True)
