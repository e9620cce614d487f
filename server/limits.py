"""Abuse resistance: token buckets for failed logins, per token id and per client
address, in memory.

A bucket holds ``burst`` tries and refills at ``per_minute``; each failed login takes
one from the token id's bucket and one from the address's. While either is empty,
logins for that id or from that address are refused (429) without being tried. The
tables are bounded (``max_keys``, oldest forgotten first), so a flood of made-up ids
cannot grow the server's memory.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoginLimiter", "RateLimit", "TokenBucket", "token_id_of"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``burst`` failed logins at once, then ``per_minute`` more each minute."""

    burst: int = 10
    per_minute: float = 10.0


class TokenBucket:
    """Buckets keyed by a string; thread-safe."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._max_keys = max_keys
        self._clock = clock
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, then = self._levels.get(key, (float(self._limit.burst), now))
        refill = (now - then) * self._limit.per_minute / 60.0
        return min(float(self._limit.burst), level + refill)

    def has_room(self, key: str) -> bool:
        """Whether one more try is allowed now (takes nothing)."""
        with self._lock:
            return self._level(key, self._clock()) >= 1.0

    def take(self, key: str) -> None:
        """Take one try from ``key``'s bucket (not below empty)."""
        with self._lock:
            now = self._clock()
            level = max(0.0, self._level(key, now) - 1.0)
            self._levels[key] = (level, now)
            self._levels.move_to_end(key)
            while len(self._levels) > self._max_keys:
                self._levels.popitem(last=False)


def token_id_of(token: str) -> str:
    """What identifies a token in the limiter and in the server's log: a short hash of
    its public lookup part (never the token, nor its secret part), or ``malformed``."""
    lookup = token.removeprefix("svp_").partition("_")[0] if token.startswith("svp_") else ""
    if not lookup or len(lookup) > 64:
        return "malformed"
    return hashlib.sha256(lookup.encode("utf-8", "replace")).hexdigest()[:12]


class LoginLimiter:
    """Failed logins per token id and per client address."""

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_token = TokenBucket(limit, clock=clock)
        self._by_address = TokenBucket(limit, clock=clock)

    def allows(self, token_id: str, address: str) -> bool:
        """Whether a login with this token id from this address may be tried now."""
        return self._by_token.has_room(token_id) and self._by_address.has_room(address)

    def failed(self, token_id: str, address: str) -> None:
        """Count a failed login against both."""
        self._by_token.take(token_id)
        self._by_address.take(address)
