"""The public face of an open vault: create, open, close, sessions, schema, the log.

Everything here is a short call into the core (:mod:`.context`, :mod:`.actor`) and
the operations; ``Vault`` holds the :class:`~.context.VaultContext` and the sessions
:meth:`Vault.session_for` remembers (:mod:`.logins`), nothing else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from ..keys import KdfParams, normalize_passphrase
from .access import BUILTIN_ROLES
from .actor import ADMIN, Actor
from .checkpoint import Checkpoint
from .clock import Clock, system_clock
from .context import VaultContext
from .errors import (
    UnlockError,
    VaultDecommissionedError,
)
from .keptreceipts import collect, kept
from .lifecycle import DECOMMISSIONED
from .log import Event
from .logins import Logins, login
from .opening import create_context, open_context
from .receipt import Receipt
from .reconcile import advance_mark
from .schema import KindSpec
from .session import Session
from .store import LogHead
from .verify import VerifyReport

__all__ = ["Vault"]

logger = logging.getLogger(__name__)


class Vault:
    """An open, unlocked vault. Use as a context manager, or call :meth:`close`.

    Safe to share between the threads of a process (a web service opens one): each
    thread gets its own data-store connection from the engine's pool and its own
    keystore connection, so threads coordinate through the stores' locks exactly as
    processes do. Sessions too may be shared; close the vault after the last use.
    """

    def __init__(self, ctx: VaultContext) -> None:
        self._ctx = ctx
        self._logins = Logins()  # the sessions session_for hands out again
        self.path = ctx.path
        self.vault_id = ctx.vault_id
        self.public_key = ctx.public_key

    def __repr__(self) -> str:
        return f"<Vault {self.vault_id} at {self.path}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an open vault cannot be pickled")

    @property
    def recovered_receipts(self) -> list[Receipt]:
        """Receipts of shreds that a crash interrupted and this open (or a
        decommission) finished: hand them to whoever asked for the erasure. Those this
        open finished are also kept in the keystore until :meth:`collect_receipts`."""
        return self._ctx.recovered_receipts

    def kept_receipts(self) -> list[Receipt]:
        """Receipts of shreds a crash interrupted that an open finished (this one or an
        earlier one whose opener did not read :attr:`recovered_receipts`), kept in the
        keystore until :meth:`collect_receipts` writes them out."""
        self._ctx.require_open()
        return kept(self._ctx.keys.store)

    def collect_receipts(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write every kept receipt to ``directory/<customer>.json`` (owner-only, never
        over another file), then delete them from the keystore and scrub it; returns
        the files. If a write fails nothing is deleted (the error is raised)."""
        self._ctx.require_open()
        return collect(self._ctx.keys.store, directory)

    @property
    def lifecycle(self) -> str | None:
        """None while the vault serves; ``decommissioning`` or ``decommissioned``."""
        return self._ctx.lifecycle

    # -- creating and opening ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        data_url: str | None = None,
        clock: Clock = system_clock,
        kdf_params: KdfParams | None = None,
        checkpoint_interval: int = 1000,
        busy_timeout: float = 30.0,
        unique_refs: bool = False,
    ) -> Vault:
        """Create a vault in directory ``path`` (new or empty) and open it.

        Give exactly one of ``passphrase`` (bytes) or ``keyfile`` (a 32-byte file, mode
        0600). ``data_url`` puts the data store in another database (PostgreSQL).
        ``unique_refs`` declares customer refs unique from the start
        (:meth:`Session.set_unique_refs` changes it later).
        On any failure nothing is left behind.
        """
        return cls(
            create_context(
                path,
                passphrase=passphrase,
                keyfile=keyfile,
                data_url=data_url,
                clock=clock,
                kdf_params=kdf_params,
                checkpoint_interval=checkpoint_interval,
                busy_timeout=busy_timeout,
                unique_refs=unique_refs,
            )
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        data_url: str | None = None,
        clock: Clock = system_clock,
        checkpoint_interval: int = 1000,
        busy_timeout: float = 30.0,
    ) -> Vault:
        """Unlock an existing vault.

        Raises :class:`UnlockError` (wrong passphrase/keyfile, weakened KDF header),
        :class:`StorageError` (missing or mismatched stores, newer schema) and
        :class:`AuditChainError` (log shorter than or different from the keystore's
        anchor: the vault refuses to serve). Nothing is changed when it raises.
        Receipts of shreds a crash interrupted, finished by this open, are in
        :attr:`recovered_receipts`.

        A passphrase is tried in Unicode NFC first; a vault made before passphrases
        were normalized opens with the bytes as given and is then re-keyed to the NFC
        form (a logged ``keys.change-passphrase``), after which only that form opens
        it, however it is typed (docs/keys.md, "Passphrases").
        """

        def attempt(secret: bytes | None) -> VaultContext:
            return open_context(
                path,
                passphrase=secret,
                keyfile=keyfile,
                data_url=data_url,
                clock=clock,
                checkpoint_interval=checkpoint_interval,
                busy_timeout=busy_timeout,
            )

        normalized = None if passphrase is None else normalize_passphrase(passphrase)
        try:
            return cls(attempt(normalized))
        except UnlockError:
            if passphrase is None or normalized == bytes(passphrase):
                raise
        vault = cls(attempt(bytes(passphrase)))  # an older vault: the bytes as given
        try:
            vault.admin().change_passphrase(passphrase=normalized)
        except BaseException:
            vault.close()
            raise
        return vault

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Sign a checkpoint at the head (if the log moved since the last one), then
        release the stores and forget every key. The keystore's reconciliation mark
        moves to the head first, when no shred is mid-way (:func:`advance_mark`)."""
        if self._ctx.closed:
            return
        try:
            advance_mark(self._ctx)
        finally:
            self._logins.clear()
            self._ctx.close()
            logger.info("vault %s closed", self.vault_id)

    # -- sessions -----------------------------------------------------------------------

    def admin(self) -> Session:
        """A session acting as the administrator who unlocked the vault. While a
        decommission is under way it can only finish it (data calls raise
        :class:`VaultDecommissionedError`)."""
        self._ctx.require_open()
        if self._ctx.lifecycle == DECOMMISSIONED:
            raise VaultDecommissionedError("the vault is decommissioned: it serves no data")
        return Session(Actor(self._ctx, ADMIN, BUILTIN_ROLES[ADMIN]))

    def login(self, token: str) -> Session:
        """A session acting as the principal that ``token`` names.

        Raises :class:`AccessDeniedError` (logged as a denied ``auth.login``, without
        any token material) for an unknown, revoked or expired token or a missing role.
        """
        return Session(login(self._ctx, token))

    def session_for(self, token: str) -> Session:
        """A session for ``token`` without a log entry per request (a web service calls
        it on every request): the first call for a token in this open vault is a
        :meth:`login` (logged ``auth.login``); later calls reuse its session. Every
        access is still gated and logged, and the gate re-reads the principal each time,
        so a token revoked or expired, or a role changed, applies to the very next
        access (refused and logged ``denied``). Raises as :meth:`login`."""
        return Session(self._logins.actor(self._ctx, token))

    # -- schema -------------------------------------------------------------------------

    def declare_kind(
        self,
        name: str,
        *,
        fields: Iterable[str],
        purposes: Iterable[str],
        searchable: Mapping[str, str] | None = None,
    ) -> None:
        """Declare (or redeclare) a record kind as the unlocking administrator: the fields
        it may hold, the purposes it may be used for and its searchable fields (field ->
        normalizer; docs/search.md). Logged as ``schema.declare``. A principal declares
        with :meth:`Session.declare_kind` (needs ``admin``)."""
        self._ctx.require_open()
        if self._ctx.lifecycle is not None:
            raise VaultDecommissionedError(
                f"the vault is {self._ctx.lifecycle}: its schema is closed"
            )
        self.admin().declare_kind(name, fields=fields, purposes=purposes, searchable=searchable)

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind."""
        return self._ctx.kinds()

    def kind(self, name: str) -> KindSpec:
        """One declared kind; :class:`SchemaError` if it is not declared."""
        return self._ctx.kind(name)

    # -- checkpoints and the log ----------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint at the current head now (logged as ``audit.checkpoint``) and
        return it: exactly the checkpoint at that entry, even with other writers.
        Acts as the unlocking administrator; a principal uses :meth:`Session.checkpoint`."""
        return self._ctx.sign_checkpoint(lambda tx: Event(ADMIN, ADMIN, "audit.checkpoint"))

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint (an auditor's anchor), if any."""
        return self._ctx.latest_checkpoint()

    def verify_log(
        self,
        *,
        since: int = 1,
        anchor: Checkpoint | None = None,
        anchor_shortfall: str = "truncated",
        strict: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Verify the stored chain (from ``since``) against the stored checkpoints."""
        return self._ctx.verify_log(
            since=since,
            anchor=anchor,
            anchor_shortfall=anchor_shortfall,
            strict=strict,
            progress=progress,
        )

    @property
    def head(self) -> LogHead:
        return self._ctx.head()

    @property
    def backend(self) -> str:
        """The data store's database: ``"sqlite"`` or ``"postgresql"``."""
        return str(self._ctx.data.engine.dialect.name)
