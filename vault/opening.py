"""Creating and unlocking a vault: the stores, the keys, the anchor check, recovery.

:func:`open_context` refuses a rolled-back or forked data store before anything is
served, then finishes what a crash interrupted (shreds, key events, a keystore scrub).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from sqlalchemy import Connection, exc, select

from ..keys import KdfParams, KeyRing, KeyStore
from . import ids
from .actor import ADMIN
from .blindindex import ensure_search_table
from .clock import Clock, format_ts, system_clock
from .context import VaultContext, load_keyfile_key
from .customers import finish_interrupted_adds
from .dataurl import DATA_URL_KEY, data_url_for, remembered_form
from .errors import StorageError, VaultDecommissionedError, keys_errors
from .files import create_empty
from .layout import DATA_FILE, KEYS_FILE, RESTORE_MARKER
from .lifecycle import DECOMMISSIONED, INTENT_SEQ_KEY, LIFECYCLE_KEY, final_entry_seq
from .log import Event
from .migrate import unlink_tombstones, upgrade_stores
from .reconcile import ClaimScan, plan_reconcile, read_mark, reconcile, refuse_unconfirmed
from .rotate import log_pending_key_event
from .rowmigrate import ROWS_MARK, ROWS_SCHEMA, authenticate_rows
from .shred import roll_forward
from .store import SCHEMA_VERSION, DataStore, meta, metadata, set_unique_refs
from .tombstone import TOMBSTONES_FORMAT, TOMBSTONES_KEY

__all__ = ["create_context", "open_context"]

logger = logging.getLogger(__name__)


def create_context(
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
) -> VaultContext:
    """Create a vault in directory ``path`` (new or empty); its open context.

    Give exactly one of ``passphrase`` (bytes) or ``keyfile`` (a 32-byte file, mode
    0600). ``data_url`` puts the data store in another database (PostgreSQL).
    On any failure nothing is left behind.
    """
    root = Path(path)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StorageError(f"{root} exists and is not an empty directory")
    keyfile_key = load_keyfile_key(keyfile)
    remembered = remembered_form(data_url) if data_url else None  # before anything exists
    vault_id = ids.new_id(ids.VAULT)
    created = format_ts(clock())
    made_dir = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    data: DataStore | None = None
    keyring: KeyRing | None = None
    made_schema = False
    made_files: list[str] = []  # only what this call created is removed on failure
    try:
        with keys_errors():
            keyring = KeyRing.create(
                root / KEYS_FILE,
                vault_id,
                created=created,
                passphrase=passphrase,
                keyfile_key=keyfile_key,
                params=kdf_params,
            )
        made_files.append(KEYS_FILE)
        with keyring.store.transaction() as conn:
            keyring.store.set_meta(conn, "data_location", "external" if data_url else "sqlite")
            keyring.store.set_meta(conn, ROWS_MARK, "1")  # its rows are authenticated from birth
            if remembered is not None:
                keyring.store.set_meta(conn, DATA_URL_KEY, remembered)
        if not data_url:
            create_empty(root / DATA_FILE)  # owner-only before SQLite opens it
            made_files.append(DATA_FILE)
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
                    TOMBSTONES_KEY: TOMBSTONES_FORMAT,
                },
            )
            if unique_refs:
                set_unique_refs(conn, True)
        ctx = VaultContext(
            root,
            keyring,
            data,
            clock=clock,
            checkpoint_interval=checkpoint_interval,
            lifecycle=None,
        )
        ctx.transact(
            lambda tx: tx.log(
                Event(ADMIN, ADMIN, "vault.create", detail={"vault": vault_id}),
            ),
            checkpoint=True,
        )
        logger.info("vault %s created (%s data store)", vault_id, data.engine.dialect.name)
        return ctx
    except BaseException:
        if data is not None:
            if data_url and made_schema:
                _drop_schema(data)  # only tables this call created; never a vault's
            data.dispose()
        if keyring is not None:
            keyring.close()
        # Another process creating a vault in the same directory at the same moment
        # owns whatever it made: a failed call never removes files it did not create.
        for name in made_files:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (root / (name + suffix)).unlink(missing_ok=True)
        if made_dir:
            with contextlib.suppress(OSError):  # not empty: someone else's files are in it
                root.rmdir()
        raise


def open_context(
    path: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    data_url: str | None = None,
    clock: Clock = system_clock,
    checkpoint_interval: int = 1000,
    busy_timeout: float = 30.0,
    restoring: bool = False,
) -> VaultContext:
    """Unlock an existing vault: its open context (with the receipts of shreds a crash
    interrupted that this open finished in ``recovered_receipts``).

    Raises :class:`UnlockError` (wrong passphrase/keyfile, weakened KDF header),
    :class:`StorageError` (missing or mismatched stores, newer schema) and
    :class:`AuditChainError` (log shorter than or different from the keystore's
    anchor, or recording a shred the keystore cannot confirm of a customer whose row
    says active: the vault refuses to serve). Nothing is changed when it raises
    before the ``vault.unlock`` entry; after it, an open that fails leaves what it
    finished logged, and the next open finishes the rest. Before serving, it erases
    again every customer whose shred the log records but whose keys the keystore
    still holds (:mod:`.reconcile`).
    """
    root = Path(path)
    if (root / RESTORE_MARKER).exists() and not restoring:
        raise StorageError(
            f"{root} holds an unfinished restore: it will not serve until the restore "
            "completes (run `shredvault backup restore` again into an empty directory)"
        )
    keyfile_key = load_keyfile_key(keyfile)
    with keys_errors():
        store = KeyStore.open(root / KEYS_FILE)
    if store.get_meta(LIFECYCLE_KEY) == DECOMMISSIONED:
        store.close()
        raise VaultDecommissionedError(
            f"{root} is decommissioned: it holds no keys and serves no data. "
            "`audit verify`, `audit export`, `receipt verify` and `certificate verify` "
            "still work; `shredvault decommission` re-emits its certificate"
        )
    try:
        with keys_errors():
            keyring = KeyRing.unlock(store, passphrase=passphrase, keyfile_key=keyfile_key)
    except BaseException:
        store.close()
        raise
    data = None
    try:
        location, stored = store.get_meta("data_location"), store.get_meta(DATA_URL_KEY)
        data_url = data_url_for(location, stored, data_url)
        if data_url is None and not (root / DATA_FILE).is_file():
            raise StorageError(f"the data store {root / DATA_FILE} is missing")
        data = _connect_data(root, data_url, busy_timeout)
        _check_data_store(data, keyring.vault_id)
        if location == "external" and stored is None and data_url:
            _remember(keyring, data_url)  # a vault from before URLs were remembered
        ctx = VaultContext(
            root,
            keyring,
            data,
            clock=clock,
            checkpoint_interval=checkpoint_interval,
            lifecycle=keyring.store.get_meta(LIFECYCLE_KEY),
        )
        if ctx.lifecycle is not None:
            ctx.check_anchor()
            # Decommissioning: the decommission itself finishes interrupted shreds,
            # and once its final entry exists nothing more may be logged.
            intent_seq = int(keyring.store.get_meta(INTENT_SEQ_KEY) or 0)
            ctx.final_seq = final_entry_seq(data, intent_seq)
            if ctx.final_seq is not None:
                return ctx
            data.run(lambda conn, _head: data.ensure_additive_tables(conn))
            ctx.transact(lambda tx: tx.log(Event(ADMIN, ADMIN, "vault.unlock")), checkpoint=True)
            data.run(lambda conn, _head: ensure_search_table(conn))
            return ctx
        # The shreds the log records after the keystore's mark are read in the same
        # pass that verifies the log, which then starts at the mark if that is earlier
        # than the anchor: nothing unverified is acted on.
        mark = read_mark(keyring.store)
        scan = ClaimScan(after=mark)
        report = ctx.check_anchor(since=mark + 1, observe=scan.observe)
        refuse_unconfirmed(plan_reconcile(ctx, scan))  # before anything is written
        data.run(lambda conn, _head: data.ensure_additive_tables(conn))  # tables added later
        ctx.transact(lambda tx: tx.log(Event(ADMIN, ADMIN, "vault.unlock")), checkpoint=True)
        data.run(lambda conn, _head: ensure_search_table(conn))  # a store from before it
        upgrade_stores(ctx)  # a vault from before key separation (vault/migrate.py)
        authenticate_rows(ctx)  # a vault from before authenticated rows (vault/rowmigrate.py)
        unlink_tombstones(ctx)  # tombstones from before issue 16 item 5 (vault/migrate.py)
        erased = reconcile(ctx, scan, report.last_seq)
        if erased:
            logger.warning(
                "vault %s: reconciliation erased the keys of %d customer(s) whose shred "
                "the log records (an older keystore was put back?)",
                ctx.vault_id,
                len(erased),
            )
        finish_interrupted_adds(ctx)  # keys a crash left without their customers' rows
        ctx.recovered_receipts = roll_forward(ctx)
        if ctx.recovered_receipts:
            logger.warning(
                "vault %s: finished %d shred(s) a crash interrupted; their receipts are "
                "kept until collected",
                ctx.vault_id,
                len(ctx.recovered_receipts),
            )
        log_pending_key_event(ctx)
        keyring.finish_pending_scrub()  # a bulk shred or reconciliation cut short before it
        logger.info(
            "vault %s opened (%s data store, log at seq %d)",
            ctx.vault_id,
            data.engine.dialect.name,
            report.last_seq,
        )
        return ctx
    except BaseException:
        if data is not None:
            data.dispose()
        keyring.close()
        raise


def _connect_data(root: Path, data_url: str | None, busy_timeout: float) -> DataStore:
    if data_url:
        return DataStore.connect(url=data_url, busy_timeout=busy_timeout)
    return DataStore.connect(sqlite_path=root / DATA_FILE, busy_timeout=busy_timeout)


def _remember(keyring: KeyRing, data_url: str) -> None:
    remembered = remembered_form(data_url)
    if remembered is not None:
        with keys_errors(), keyring.store.transaction() as conn:
            keyring.store.set_meta(conn, DATA_URL_KEY, remembered)


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
    data.before_schema_3(version < ROWS_SCHEMA)


def _drop_schema(data: DataStore) -> None:
    # Cleanup after a failed create must not mask the error that caused it.
    with contextlib.suppress(exc.SQLAlchemyError), data.engine.begin() as conn:
        metadata.drop_all(conn)
