"""An open vault: the keystore, the data store, the log discipline and its lifecycle."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NoReturn, TypeVar

from sqlalchemy import Connection, exc, func, select

from ..keys import (
    InvalidKeyError,
    KdfParams,
    KeyRing,
    KeyStore,
    KeystoreError,
    SecretBytes,
    WeakParametersError,
    WrongKeyError,
    load_keyfile,
)
from . import ids
from .access import BUILTIN_ROLES, split_token, token_matches
from .checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoints,
    make_checkpoint,
    parse_checkpoint,
    store_checkpoint,
)
from .clock import Clock, format_ts, system_clock
from .errors import (
    AccessDeniedError,
    AuditChainError,
    SchemaError,
    StorageError,
    UnlockError,
    VaultDecommissionedError,
    VaultError,
)
from .files import create_empty
from .lifecycle import (
    DECOMMISSION_ACTION,
    DECOMMISSIONED,
    INTENT_SEQ_KEY,
    LIFECYCLE_KEY,
    final_entry_seq,
)
from .log import Event, append, iter_entries
from .receipt import Receipt
from .rotate import log_pending_key_event
from .schema import KindSpec
from .shred import roll_forward
from .store import SCHEMA_VERSION, DataStore, LogHead, checkpoints, kinds, log, meta, principals
from .verify import VerifyReport, verify_chain

__all__ = ["DATA_FILE", "KEYS_FILE", "RESTORE_MARKER", "Vault"]

KEYS_FILE = "keys.db"
DATA_FILE = "data.db"
RESTORE_MARKER = "RESTORE-INCOMPLETE"
ADMIN = "admin"

T = TypeVar("T")


@dataclass(slots=True)
class Tx:
    """A logged transaction in progress: the connection, the head it started from,
    and the events that will be chained when ``work`` returns."""

    conn: Connection
    head: LogHead
    events: list[Event] = field(default_factory=list)
    checkpoint: bool = False

    def log(self, *events: Event) -> None:
        self.events.extend(events)


class Refusal(Exception):
    """Raised inside a transaction to roll it back, log ``events`` on their own, and
    then raise ``error`` to the caller (denials and not-found are logged too)."""

    def __init__(self, error: VaultError, *events: Event) -> None:
        super().__init__(str(error))
        self.error = error
        self.events = events


class Vault:
    """An open, unlocked vault. Use as a context manager, or call :meth:`close`.

    Not safe to share between threads; open one per thread or process (processes
    coordinate through the stores' locks).
    """

    def __init__(
        self,
        path: Path,
        keyring: KeyRing,
        data: DataStore,
        *,
        clock: Clock,
        checkpoint_interval: int,
    ) -> None:
        self.path = path
        self.vault_id = keyring.vault_id
        self.public_key = keyring.public_key
        self._keys = keyring
        self._data = data
        self._clock = clock
        self._interval = checkpoint_interval
        self._kinds: dict[str, KindSpec] = {}
        self._closed = False
        #: Receipts of shreds that a crash interrupted and this open finished.
        self.recovered_receipts: list[Receipt] = []
        #: None while the vault serves; "decommissioning" / "decommissioned" (lifecycle.py)
        self.lifecycle: str | None = keyring.store.get_meta(LIFECYCLE_KEY)
        # Seq of the final vault.decommission entry once written: nothing may follow it.
        self._final_seq: int | None = None

    def __repr__(self) -> str:
        return f"<Vault {self.vault_id} at {self.path}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an open vault cannot be pickled")

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
    ) -> Vault:
        """Create a vault in directory ``path`` (new or empty) and open it.

        Give exactly one of ``passphrase`` (bytes) or ``keyfile`` (a 32-byte file, mode
        0600). ``data_url`` puts the data store in another database (PostgreSQL).
        On any failure nothing is left behind.
        """
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise StorageError(f"{root} exists and is not an empty directory")
        keyfile_key = _load_keyfile(keyfile)
        vault_id = ids.new_id(ids.VAULT)
        created = format_ts(clock())
        made_dir = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        data: DataStore | None = None
        keyring: KeyRing | None = None
        made_schema = False
        try:
            try:
                keyring = KeyRing.create(
                    root / KEYS_FILE,
                    vault_id,
                    created=created,
                    passphrase=passphrase,
                    keyfile_key=keyfile_key,
                    params=kdf_params,
                )
            except InvalidKeyError as error:
                raise UnlockError(str(error)) from None
            except KeystoreError as error:
                raise StorageError(str(error)) from None
            with keyring.store.transaction() as conn:
                keyring.store.set_meta(conn, "data_location", "external" if data_url else "sqlite")
            if not data_url:
                create_empty(root / DATA_FILE)  # owner-only before SQLite opens it
            data = _connect_data(root, data_url, busy_timeout)
            if data.has_schema():
                raise StorageError("the data store already holds a vault; refusing to overwrite it")
            data.create_schema()
            made_schema = True
            data.read(lambda c: None)
            with data.engine.begin() as conn:
                data.init_rows(
                    conn,
                    {
                        "vault_id": vault_id,
                        "schema_version": str(SCHEMA_VERSION),
                        "public_key": keyring.public_key.hex(),
                        "created": created,
                    },
                )
            vault = cls(root, keyring, data, clock=clock, checkpoint_interval=checkpoint_interval)
            vault._transact(
                lambda tx: tx.log(
                    Event(ADMIN, ADMIN, "vault.create", detail={"vault": vault_id}),
                ),
                checkpoint=True,
            )
            return vault
        except BaseException:
            if data is not None:
                if data_url and made_schema:
                    _drop_schema(data)  # only tables this call created; never a vault's
                data.dispose()
            if keyring is not None:
                keyring.close()
            for name in (KEYS_FILE, DATA_FILE):
                for suffix in ("", "-wal", "-shm", "-journal"):
                    (root / (name + suffix)).unlink(missing_ok=True)
            if made_dir:
                root.rmdir()
            raise

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
        _restoring: bool = False,
    ) -> Vault:
        """Unlock an existing vault.

        Raises :class:`UnlockError` (wrong passphrase/keyfile, weakened KDF header),
        :class:`StorageError` (missing or mismatched stores, newer schema) and
        :class:`AuditChainError` (log shorter than or different from the keystore's
        anchor: the vault refuses to serve). Nothing is changed when it raises.
        """
        root = Path(path)
        if (root / RESTORE_MARKER).exists() and not _restoring:
            raise StorageError(
                f"{root} holds an unfinished restore: it will not serve until the restore "
                "completes (run `shredvault backup restore` again into an empty directory)"
            )
        keyfile_key = _load_keyfile(keyfile)
        try:
            store = KeyStore.open(root / KEYS_FILE)
        except KeystoreError as error:
            raise StorageError(str(error)) from None
        if store.get_meta(LIFECYCLE_KEY) == DECOMMISSIONED:
            store.close()
            raise VaultDecommissionedError(
                f"{root} is decommissioned: it holds no keys and serves no data. "
                "`audit verify`, `audit export`, `receipt verify` and `certificate verify` "
                "still work; `shredvault decommission` re-emits its certificate"
            )
        try:
            try:
                keyring = KeyRing.unlock(store, passphrase=passphrase, keyfile_key=keyfile_key)
            except WrongKeyError:
                raise UnlockError("wrong passphrase or keyfile") from None
            except WeakParametersError as error:
                raise UnlockError(str(error)) from None
            except InvalidKeyError as error:
                raise UnlockError(str(error)) from None
            except KeystoreError as error:
                raise StorageError(str(error)) from None
        except BaseException:
            store.close()
            raise
        data = None
        try:
            if data_url is None and store.get_meta("data_location") == "external":
                raise StorageError(
                    "this vault keeps its data in an external database: pass data_url "
                    "(CLI: --data-url or SHREDVAULT_DATA_URL)"
                )
            if data_url is None and not (root / DATA_FILE).is_file():
                raise StorageError(f"the data store {root / DATA_FILE} is missing")
            data = _connect_data(root, data_url, busy_timeout)
            _check_data_store(data, keyring.vault_id)
            vault = cls(root, keyring, data, clock=clock, checkpoint_interval=checkpoint_interval)
            vault._check_anchor()
            if vault.lifecycle is not None:
                # Decommissioning: the decommission itself finishes interrupted shreds,
                # and once its final entry exists nothing more may be logged.
                intent_seq = int(keyring.store.get_meta(INTENT_SEQ_KEY) or 0)
                vault._final_seq = final_entry_seq(data, intent_seq)
                if vault._final_seq is not None:
                    return vault
            vault._transact(lambda tx: tx.log(Event(ADMIN, ADMIN, "vault.unlock")), checkpoint=True)
            if vault.lifecycle is None:
                vault.recovered_receipts = roll_forward(vault)
                log_pending_key_event(vault)
                keyring.finish_pending_scrub()  # a bulk shred cut short before its scrub
            return vault
        except BaseException:
            if data is not None:
                data.dispose()
            keyring.close()
            raise

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
        release the stores and forget every key."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._final_seq is None:  # after the final entry there is nothing to sign
                self._checkpoint_head()
        except VaultError:
            pass  # closing must release the stores even when the data store is gone
        finally:
            self._keys.close()
            self._data.dispose()

    def _require_open(self) -> None:
        if self._closed:
            raise StorageError("the vault is closed")

    # -- sessions -----------------------------------------------------------------------

    def admin(self) -> Session:
        """A session acting as the administrator who unlocked the vault. While a
        decommission is under way it can only finish it (data calls raise
        :class:`VaultDecommissionedError`)."""
        self._require_open()
        if self.lifecycle == DECOMMISSIONED:
            raise VaultDecommissionedError("the vault is decommissioned: it serves no data")
        return Session(self, actor=ADMIN, role=BUILTIN_ROLES[ADMIN])

    def login(self, token: str) -> Session:
        """A session acting as the principal that ``token`` names.

        Raises :class:`AccessDeniedError` (logged as a denied ``auth.login``, without
        any token material) for an unknown, revoked or expired token or a missing role.
        """
        self._require_open()
        lookup = split_token(token)

        def work(tx: Tx) -> Session:
            if self.lifecycle is not None:
                ev = Event(
                    "unknown",
                    "none",
                    "auth.login",
                    outcome="denied",
                    detail={"reason_code": "vault_decommissioned"},
                )
                raise Refusal(
                    VaultDecommissionedError(
                        f"the vault is {self.lifecycle}: it serves no data and takes no logins"
                    ),
                    ev,
                )
            row = None
            if lookup is not None:
                row = tx.conn.execute(
                    select(principals).where(principals.c.lookup == lookup)
                ).first()
            # Compare even when nothing matched, so timing does not tell the cases apart.
            stored = str(row.token_hash) if row is not None else "0" * 64
            matches = token_matches(token if isinstance(token, str) else "", stored)
            now = format_ts(self._clock())
            reason = None
            if row is None or not matches:
                reason = "unknown_token"
            elif row.revoked:
                reason = "token_revoked"
            elif row.expires is not None and now >= row.expires:
                reason = "token_expired"
            role = None if reason else load_role(tx.conn, str(row.role))  # type: ignore[union-attr]
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
            return Session(self, actor=str(row.name), role=role, principal=lookup)

        return self._transact(work)

    # -- schema -------------------------------------------------------------------------

    def declare_kind(self, name: str, *, fields: Iterable[str], purposes: Iterable[str]) -> None:
        """Declare (or redeclare) a record kind as the unlocking administrator: the fields
        it may hold and the purposes it may be used for. Logged as ``schema.declare``.
        A principal declares with :meth:`Session.declare_kind` (needs ``admin``)."""
        self._require_open()
        if self.lifecycle is not None:
            raise VaultDecommissionedError(f"the vault is {self.lifecycle}: its schema is closed")
        self.admin().declare_kind(name, fields=fields, purposes=purposes)

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind."""
        self._reload_kinds()
        return dict(self._kinds)

    def kind(self, name: str) -> KindSpec:
        spec = self._kinds.get(name)
        if spec is None:
            self._reload_kinds()  # another process may have declared it
            spec = self._kinds.get(name)
            if spec is None:
                raise SchemaError(f"kind {name!r} is not declared (declare it with declare_kind)")
        return spec

    def _reload_kinds(self) -> None:
        self._remember_kinds(self._data.read(_read_kinds))

    def _remember_kinds(self, rows: Iterable[tuple[str, str]]) -> dict[str, KindSpec]:
        """Cache the kinds ``(name, spec JSON)`` read from the data store; returns them."""
        found = {}
        for name, text in rows:
            raw = json.loads(text)
            found[name] = KindSpec(name, frozenset(raw["fields"]), frozenset(raw["purposes"]))
        self._kinds.update(found)
        return found

    # -- the logged transaction ------------------------------------------------------

    def _transact(self, work: Callable[[Tx], T], *, checkpoint: bool = False) -> T:
        """Run ``work`` and chain the events it logged, in one transaction.

        Fail closed: if the entries cannot be written, the whole transaction rolls back
        and the caller gets the error, not the data. A :class:`Refusal` rolls back the
        work, commits only its events, then raises its error.
        """
        self._require_open()
        try:
            result, cp = self._data.run(
                lambda conn, head: self._chain(conn, head, work, checkpoint)
            )
        except Refusal as refusal:
            self._log_refusal(refusal)
        if cp is not None:
            self._advance_anchor(cp)
        return result

    def _log_refusal(self, refusal: Refusal) -> NoReturn:
        """Commit a refusal's entries in a transaction of their own, then raise its error."""
        events = refusal.events

        def log_only(tx: Tx) -> None:
            tx.log(*events)

        if events and self._final_seq is None:  # nothing is logged after the final entry
            self._data.run(lambda conn, head: self._chain(conn, head, log_only, False))
        raise refusal.error from None

    def _chain(
        self, conn: Connection, head: LogHead, work: Callable[[Tx], T], checkpoint: bool
    ) -> tuple[T, Checkpoint | None]:
        tx = Tx(conn, head, checkpoint=checkpoint)
        result = work(tx)
        if self._final_seq is not None and tx.events:
            raise VaultDecommissionedError(
                f"the vault's log ended with its {DECOMMISSION_ACTION} entry: nothing more "
                "is logged (finish the decommission)"
            )
        new_head, _ = append(conn, self._data, head, tx.events, self._clock())
        crossed = new_head.seq // self._interval > head.seq // self._interval
        cp = None
        if new_head.seq > head.seq and (tx.checkpoint or crossed):
            cp = make_checkpoint(self._keys.signer, self.vault_id, new_head)
            store_checkpoint(conn, cp)
        return result, cp

    def _advance_anchor(self, cp: Checkpoint) -> None:
        # The checkpoint is committed in the data store; a lagging anchor only weakens
        # rollback detection until the next checkpoint advances it.
        with contextlib.suppress(KeystoreError):
            self._keys.store.advance_anchor(cp.seq, cp.body, cp.signature)

    # -- checkpoints and the anchor -----------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint at the current head now (logged as ``audit.checkpoint``) and
        return it: exactly the checkpoint at that entry, even with other writers.
        Acts as the unlocking administrator; a principal uses :meth:`Session.checkpoint`."""
        return self._sign_checkpoint(lambda tx: Event(ADMIN, ADMIN, "audit.checkpoint"))

    def _sign_checkpoint(self, entry: Callable[[Tx], Event]) -> Checkpoint:
        """Log ``entry(tx)`` (which may raise a :class:`Refusal`) and sign a checkpoint
        at exactly that entry."""

        def work(tx: Tx) -> int:
            tx.log(entry(tx))
            return tx.head.seq + 1

        seq = self._transact(work, checkpoint=True)
        (signed,) = self._data.read(lambda conn: load_checkpoints(conn, since=seq, until=seq))
        return signed

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint (an auditor's anchor), if any."""
        return self._data.read(latest_checkpoint)

    def _checkpoint_head(self) -> None:
        def work(conn: Connection, head: LogHead) -> Checkpoint | None:
            last = conn.execute(select(func.max(checkpoints.c.seq))).scalar()
            if head.seq == 0 or (last is not None and int(last) >= head.seq):
                return None
            cp = make_checkpoint(self._keys.signer, self.vault_id, head)
            store_checkpoint(conn, cp)
            return cp

        cp = self._data.run(work)
        if cp is not None:
            self._advance_anchor(cp)

    def _check_anchor(self) -> None:
        """Verify the log from the keystore's anchor to the head; refuse a rolled-back,
        truncated or forked data store."""
        anchor_row = self._keys.store.anchor()
        anchor = None if anchor_row is None else parse_checkpoint(anchor_row[1], anchor_row[2])
        since = anchor.seq if anchor is not None else 1
        report = self.verify_log(since=since, anchor=anchor, anchor_shortfall="rolled back")
        if not report.ok:
            raise AuditChainError(
                f"the access log fails verification ({report.reason} at seq {report.bad_seq}): "
                f"{report.message}; the vault refuses to serve",
                reason=report.reason or "invalid",
                seq=report.bad_seq,
            )

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
        return verify_store(
            self._data,
            vault_id=self.vault_id,
            public_key=self.public_key,
            since=since,
            anchor=anchor,
            anchor_shortfall=anchor_shortfall,
            strict=strict,
            progress=progress,
        )

    @property
    def head(self) -> LogHead:
        return self._data.read(lambda conn: _read_head(conn))


def verify_store(
    data: DataStore,
    *,
    vault_id: str,
    public_key: bytes | None,
    since: int = 1,
    anchor: Checkpoint | None = None,
    anchor_shortfall: str = "truncated",
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify a data store's chain, its checkpoints and its head row."""

    # Order matters with writers running: a checkpoint commits with the head row that
    # covers it, so checkpoints read *before* the head are all at or below it, and every
    # entry up to that head has committed. Entries appended after we read the head are
    # simply not part of this verification.
    cps = data.read(lambda conn: load_checkpoints(conn, since=since))
    head = data.read(_read_head)
    report = verify_chain(
        iter_entries(data, since=since, until=head.seq),
        vault_id=vault_id,
        public_key=public_key,
        checkpoints=cps,
        anchor=anchor,
        anchor_shortfall=anchor_shortfall,
        from_genesis=since <= 1,
        strict=strict,
        progress=progress,
        last_seq_before=min(head.seq, since - 1),
    )
    if report.ok and (head.seq != report.last_seq or head.hash != report.head):
        reason = "truncated" if head.seq > report.last_seq else "modified"
        report.fail(
            reason,
            min(head.seq, report.last_seq) + 1,
            f"the log head row says seq {head.seq} but the log ends at {report.last_seq}",
        )
    if report.ok:
        # Rows past the head row: read the highest seq first, then the head. A real
        # entry commits together with a head at least as high, so a later head read
        # covers it; a row beyond that head was slipped in without one.
        highest = data.read(lambda conn: conn.execute(select(func.max(log.c.seq))).scalar())
        latest = data.read(_read_head)
        if highest is not None and int(highest) > latest.seq:
            report.fail(
                "inserted",
                latest.seq + 1,
                f"entries up to seq {highest} lie beyond the head row (seq {latest.seq})",
            )
    return report


def _read_kinds(conn: Connection) -> list[tuple[str, str]]:
    """Every declared kind as ``(name, spec JSON)``."""
    return [(str(n), str(t)) for n, t in conn.execute(select(kinds.c.name, kinds.c.spec))]


def _read_head(conn: Connection) -> LogHead:
    from .store import log_head

    row = conn.execute(select(log_head.c.seq, log_head.c.hash, log_head.c.ts)).one()
    return LogHead(int(row.seq), str(row.hash), str(row.ts))


def _load_keyfile(keyfile: str | os.PathLike[str] | None) -> SecretBytes | None:
    if keyfile is None:
        return None
    try:
        return load_keyfile(Path(keyfile))
    except InvalidKeyError as error:
        raise UnlockError(str(error)) from None


def _connect_data(root: Path, data_url: str | None, busy_timeout: float) -> DataStore:
    if data_url:
        return DataStore.connect(url=data_url, busy_timeout=busy_timeout)
    return DataStore.connect(sqlite_path=root / DATA_FILE, busy_timeout=busy_timeout)


def _check_data_store(data: DataStore, vault_id: str) -> None:
    if not data.has_schema():
        raise StorageError("the data store is missing or empty (no shredvault tables)")

    def read(conn: Connection) -> dict[str, str]:
        return {str(k): str(v) for k, v in conn.execute(select(meta.c.k, meta.c.v)).all()}

    values = data.read(read)
    if values.get("vault_id") != vault_id:
        raise StorageError(
            "the data store belongs to another vault than the keystore "
            f"({values.get('vault_id')} vs {vault_id}); refusing to open"
        )
    version = int(values.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"data store schema version {version} is newer than this shredvault supports "
            f"({SCHEMA_VERSION}); upgrade shredvault"
        )


def _drop_schema(data: DataStore) -> None:
    from .store import metadata

    # Cleanup after a failed create must not mask the error that caused it.
    with contextlib.suppress(exc.SQLAlchemyError), data.engine.begin() as conn:
        metadata.drop_all(conn)


# Sessions import Vault's transaction types; keep the import at the bottom.
from .session import Session, load_role  # noqa: E402
