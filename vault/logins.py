"""Logging in with a token, and the sessions a long-running service reuses.

:func:`login` checks a token and logs ``auth.login`` (granted or denied). A web
service would otherwise log in on every request; :class:`Logins` remembers, per open
vault, the actor of each token that logged in, so only a token's first request in this
process is a login. Nothing is lost to the gate: it re-reads the principal on every
access (:meth:`.actor.Actor.current_role`), so a revocation, an expiry or a role
change applies to the very next access.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import select

from .access import split_token
from .actor import Actor, load_role
from .context import Refusal, Tx, VaultContext
from .errors import AccessDeniedError, TamperError, VaultDecommissionedError
from .log import Event
from .rowauth import require
from .store import principals

__all__ = ["MAX_REMEMBERED", "Logins", "login"]

#: tokens whose sessions one open vault remembers; the least recently used goes first
MAX_REMEMBERED = 4096


def login(ctx: VaultContext, token: str) -> Actor:
    """The actor ``token`` names, logged as ``auth.login``.

    Raises :class:`AccessDeniedError` (logged as a denied ``auth.login``, without any
    token material) for an unknown, revoked or expired token or a missing role.
    """
    ctx.require_open()
    lookup = split_token(token)

    def work(tx: Tx) -> Actor:
        if ctx.lifecycle is not None:
            ev = Event(
                "unknown",
                "none",
                "auth.login",
                outcome="denied",
                detail={"reason_code": "vault_decommissioned"},
            )
            raise Refusal(
                VaultDecommissionedError(
                    f"the vault is {ctx.lifecycle}: it serves no data and takes no logins"
                ),
                ev,
            )
        row = None
        if lookup is not None:
            row = tx.conn.execute(select(principals).where(principals.c.lookup == lookup)).first()
        # Compare even when nothing matched, so timing does not tell the cases apart.
        # The verifier is a MAC under a key the data store never holds: a row
        # written without it matches no token.
        stored = str(row.token_hash) if row is not None else "0" * 64
        matches = ctx.keys.token_matches(token if lookup is not None else "", stored)
        now = ctx.now()
        reason = None
        if row is None or not matches:
            reason = "unknown_token"
        elif row.revoked:
            reason = "token_revoked"
        elif row.expires is not None and now >= row.expires:
            reason = "token_expired"
        role = None
        if reason is None and row is not None:
            try:
                require(tx.conn, ctx.keys.row_auth, "sv_principals", [row._mapping])
                role = load_role(tx.conn, str(row.role), ctx.keys.row_auth)
            except TamperError as error:
                ev = Event(
                    str(row.name),
                    "none",
                    "auth.login",
                    outcome="error",
                    detail={
                        "reason_code": "row_tampered",
                        "table": error.table,
                        "why": error.reason,
                    },
                )
                raise Refusal(error, ev) from None
        if reason is None and role is None:
            reason = "role_missing"
        elif role is not None and role.expires is not None and now >= role.expires:
            reason = "role_expired"
        if reason is not None or role is None or row is None:
            actor = str(row.name) if row is not None and matches else "unknown"
            ev = Event(
                actor, "none", "auth.login", outcome="denied", detail={"reason_code": reason}
            )
            raise Refusal(AccessDeniedError(f"access denied: {reason}"), ev)
        tx.log(Event(str(row.name), role.name, "auth.login"))
        return Actor(ctx, str(row.name), role, principal=lookup)

    return ctx.transact(work)


class Logins:
    """The actors of tokens that logged in to one open vault, keyed by the token's
    verifier (an HMAC under the vault's token-MAC key, never the token), safe to use
    from many threads. A token's first use logs in; later uses return its actor."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._actors: OrderedDict[str, Actor] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()  # the map, held only for a look-up or an insert
        # Held while a login runs, so two first requests with one token log in once;
        # requests with remembered tokens do not wait for it.
        self._logging_in = threading.Lock()

    def __repr__(self) -> str:
        return f"<Logins {len(self._actors)} remembered>"

    def actor(self, ctx: VaultContext, token: str) -> Actor:
        """The remembered actor of ``token``, else :func:`login` (and remember it).
        Raises as :func:`login`; a refused token is not remembered."""
        ctx.require_open()
        if split_token(token) is None:
            return login(ctx, token)  # malformed: denied and logged, never remembered
        verifier = ctx.keys.token_mac(token)
        found = self._remembered(verifier)
        if found is not None:
            return found
        with self._logging_in:
            found = self._remembered(verifier)  # another thread may just have logged in
            if found is not None:
                return found
            actor = login(ctx, token)
            with self._lock:
                self._actors[verifier] = actor
                if len(self._actors) > self._limit:
                    self._actors.popitem(last=False)
            return actor

    def _remembered(self, verifier: str) -> Actor | None:
        with self._lock:
            found = self._actors.get(verifier)
            if found is not None:
                self._actors.move_to_end(verifier)
            return found

    def clear(self) -> None:
        """Forget every remembered actor (the next use of each token logs in)."""
        with self._lock:
            self._actors.clear()
