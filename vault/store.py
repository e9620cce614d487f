"""The data store: tables, engines and the one-writer transaction (DESIGN §2, §5, §6).

SQLAlchemy Core only. Every logged transaction runs through :meth:`DataStore.run`: on
SQLite it begins with ``BEGIN IMMEDIATE``; on PostgreSQL it locks the log-head row first.
Exactly one writer appends at a time; ``UNIQUE(seq)``/``UNIQUE(prev)`` forbid a fork.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    exc,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

from .errors import StorageError, VaultBusyError, disk_fault_error

__all__ = [
    "AUTH_TABLES",
    "RARE_WHERE",
    "REF_INDEX",
    "SCHEMA_VERSION",
    "UNIQUE_REFS_KEY",
    "DataStore",
    "LogHead",
    "backup_state",
    "backups",
    "checkpoints",
    "customers",
    "ensure_ref_index",
    "handover_imports",
    "kinds",
    "log",
    "log_head",
    "meta",
    "principals",
    "records",
    "roles",
    "set_unique_refs",
    "unique_refs",
]

# 1: sv_principals.token_hash held SHA-256(token).
# 2: it holds HMAC-SHA-256(token-MAC key, SHA-256(token)) (keys/tokenmac.py, vault/migrate.py).
# 3: principals, roles, kinds, customers and records carry ``seq`` and ``auth`` (vault/rowauth.py,
#    docs/rows.md), records ``aad_v``, and the log a ``target`` column (vault/log.py).
SCHEMA_VERSION = 3
#: the tables whose rows carry an authenticator (vault/rowauth.py)
AUTH_TABLES = ("sv_kinds", "sv_roles", "sv_principals", "sv_customers", "sv_records")
GENESIS = "0" * 64
#: sv_meta key: "1" while customer refs are unique (docs/customers.md); absent otherwise
UNIQUE_REFS_KEY = "unique_refs"
#: the unique index that enforces it in the database; it exists exactly while the key does
REF_INDEX = "ux_sv_customers_ref"

metadata = MetaData()

meta = Table(
    "sv_meta",
    metadata,
    Column("k", String(64), primary_key=True),
    Column("v", Text, nullable=False),
)

kinds = Table(
    "sv_kinds",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),
    # The log seq of the entry that last changed the row, and the row's authenticator.
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

customers = Table(
    "sv_customers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("ref", String(200), nullable=True, index=True),
    Column("state", String(16), nullable=False),
    Column("dek_version", Integer, nullable=False),
    Column("retain_until", String(32), nullable=True),
    Column("legal_hold", Boolean, nullable=False, default=False),
    Column("consent", Text, nullable=False),
    Column("created", String(32), nullable=False),
    Column("shredded", String(32), nullable=True),
    # Only while state is "shredding": where the intent entry is, for roll-forward.
    Column("shred_intent_seq", BigInteger, nullable=True),
    # The log seq of the entry that last changed the row, and the row's authenticator.
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
    Index("ix_sv_customers_state", "state", "retain_until"),
    # Keyed by the random id, no rowid: the rows' order must not follow the order of
    # the customer.add entries (vault/tombstone.py; older tables are rebuilt at open).
    sqlite_with_rowid=False,
)

records = Table(
    "sv_records",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("customer_id", String(32), ForeignKey("sv_customers.id"), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("dek_version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created", String(32), nullable=False),
    Column("updated", String(32), nullable=False),
    # 1: sealed before schema 3 (the AAD lacks the record version); 2: the AAD binds it.
    Column("aad_v", Integer, nullable=False, default=2),
    # The log seq of the entry that last changed the row, and the row's authenticator.
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
    Index("ix_sv_records_customer", "customer_id", "kind"),
)

roles = Table(
    "sv_roles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("created", String(32), nullable=False),
    # The log seq of the entry that last changed the row, and the row's authenticator.
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

principals = Table(
    "sv_principals",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("lookup", String(16), nullable=False, unique=True),
    Column("role", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("expires", String(32), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created", String(32), nullable=False),
    # The log seq of the entry that last changed the row, and the row's authenticator.
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

backups = Table(
    "sv_backups",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("head", String(64), nullable=False),
    Column("created", String(32), nullable=False),
    Column("expires", String(32), nullable=True),
)

# Where each backup was written, and when it was forgotten (retired: it stops counting
# on the key-copy clock). Added after schema version 2 as an additive table, like
# sv_handover_imports; a backup made before it has no row (path unknown, not forgotten).
backup_state = Table(
    "sv_backup_state",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("path", Text, nullable=True),
    Column("forgotten", String(32), nullable=True),
)

# Handover packages this vault imported: a package id is accepted once (replay
# protection). Added after schema version 1 shipped; ensure_additive_tables() creates it
# in older data stores (older code simply ignores the extra table).
handover_imports = Table(
    "sv_handover_imports",
    metadata,
    Column("package", String(32), primary_key=True),
    Column("seller_vault", String(32), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("customers", Integer, nullable=False),
    Column("records", BigInteger, nullable=False),
    Column("imported", String(32), nullable=False),
)

RARE_WHERE = text("action IN ('keys.rotate-kek.done', 'keys.rotate-dek', 'vault.restore')")
log = Table(
    "sv_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
    Column("ts", String(32), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(64), nullable=True),
    Column("record", String(32), nullable=True),
    Column("outcome", String(16), nullable=False),
    # The exact bytes that were hashed: canonical JSON of the entry without "hash".
    Column("body", LargeBinary, nullable=False),
    # Which authenticated row the entry changed (log.entry_target): outside the hashed
    # body, so verification checks it against the body. Freshness checks look it up.
    Column("target", String(100), nullable=True),
    # Reports: a subject's entries, and an actor's or a time window's (breach scope).
    Index("ix_sv_log_subject", "subject"),
    Index("ix_sv_log_actor_ts", "actor", "ts"),
    Index("ix_sv_log_ts", "ts"),
    # Partial, rare actions: a query uses it only when it repeats RARE_WHERE's text.
    Index("ix_sv_log_rare", "action", "seq", sqlite_where=RARE_WHERE, postgresql_where=RARE_WHERE),
    # Partial: reads (most entries) have no target and cost the index nothing.
    Index(
        "ix_sv_log_target",
        "target",
        "seq",
        sqlite_where=text("target IS NOT NULL"),
        postgresql_where=text("target IS NOT NULL"),
    ),
)

log_head = Table(
    "sv_log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("ts", String(32), nullable=False),
)

checkpoints = Table(
    "sv_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class LogHead:
    """The newest log entry: its seq (0 for an empty log), hash and timestamp."""

    seq: int
    hash: str
    ts: str


T = TypeVar("T")

_RETRIES = 8


def _is_sqlite_busy(error: BaseException) -> bool:
    text = str(getattr(error, "orig", error)).lower()
    return "database is locked" in text or "database is busy" in text


def _pg_retryable(error: exc.DBAPIError) -> bool:
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    # serialization_failure, deadlock_detected, unique_violation (a racing fork)
    return code in {"40001", "40P01", "23505"}


class DataStore:
    """An engine on the data store plus the vault's transaction discipline."""

    def __init__(self, engine: Engine, *, busy_timeout: float) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.busy_timeout = busy_timeout
        mark = "?" if self.is_sqlite else "%s"
        # Prebuilt INSERTs for the hot paths, run as one DBAPI executemany of tuples:
        # no per-row parameter processing (values are already str/int/bytes).
        self._insert_sql = {
            t.name: f"INSERT INTO {t.name} ({', '.join(c.name for c in t.columns)}) "
            f"VALUES ({', '.join(mark for _ in t.columns)})"
            for t in (records, log)
        }

        self._log_width = len(log.columns)

    def before_schema_3(self, legacy: bool) -> None:
        """Whether the data store predates schema 3 (its log has no ``target`` column
        until vault/rowmigrate.py adds it): entries are then inserted without it."""
        mark = "?" if self.is_sqlite else "%s"
        names = [c.name for c in log.columns if not (legacy and c.name == "target")]
        self._log_width = len(names)
        self._insert_sql[log.name] = (
            f"INSERT INTO {log.name} ({', '.join(names)}) VALUES ({', '.join(mark for _ in names)})"
        )

    def insert_many(self, conn: Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
        """Insert tuples in ``table``'s column order with one prebuilt ``executemany``."""
        if rows:
            if table is log and self._log_width < len(log.columns):
                rows = [r[: self._log_width] for r in rows]
            conn.exec_driver_sql(self._insert_sql[table.name], rows)

    def __repr__(self) -> str:
        return f"<DataStore {self.engine.dialect.name}>"

    @classmethod
    def connect(
        cls, *, sqlite_path: Path | None = None, url: str | None = None, busy_timeout: float = 30.0
    ) -> DataStore:
        """An engine for a SQLite file or a SQLAlchemy URL (PostgreSQL via psycopg)."""
        if url is not None:
            try:
                parsed = make_url(url)
            except exc.ArgumentError:
                # The message would echo the URL, password included: say less.
                raise StorageError("the data URL is not a valid SQLAlchemy URL") from None
            kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True}
            if parsed.get_backend_name() == "postgresql":
                kwargs["isolation_level"] = "READ COMMITTED"
                timeout_ms = int(busy_timeout * 1000)
                kwargs["connect_args"] = {"options": f"-c lock_timeout={timeout_ms}"}
                if "options" in parsed.query:
                    extra = parsed.query["options"]
                    extra_text = extra if isinstance(extra, str) else " ".join(extra)
                    kwargs["connect_args"]["options"] += " " + extra_text
                    parsed = parsed.difference_update_query(["options"])
            try:
                engine = create_engine(parsed, **kwargs)
            except (exc.ArgumentError, exc.NoSuchModuleError, ImportError):
                raise StorageError(
                    f"cannot use the data URL (backend {parsed.get_backend_name()!r}, driver "
                    f"{parsed.get_driver_name()!r}): install its driver, e.g. "
                    "pip install 'shredvault[postgres]'"
                ) from None
        else:
            assert sqlite_path is not None
            engine = create_engine(
                f"sqlite:///{sqlite_path}",
                hide_parameters=True,
                connect_args={"timeout": busy_timeout, "check_same_thread": False},
            )
            _sqlite_discipline(engine)
        return cls(engine, busy_timeout=busy_timeout)

    def dispose(self) -> None:
        self.engine.dispose()

    def create_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
        except exc.SQLAlchemyError as error:
            raise StorageError(f"cannot create the data store: {describe_error(error)}") from None

    def ensure_additive_tables(self, conn: Connection) -> None:
        """Create tables added since schema version 1 (only new tables, no changed ones,
        so the version stays 1) when an older data store lacks them."""
        for table in metadata.sorted_tables:  # and vault/routine_tables.py's
            if table.name.startswith(("sv_handover", "sv_backup_", "sv_req", "sv_con", "sv_not")):
                table.create(conn, checkfirst=True)
        next(i for i in log.indexes if i.name == "ix_sv_log_rare").create(conn, checkfirst=True)

    def has_schema(self) -> bool:
        try:
            with self.engine.connect() as conn:
                return self.engine.dialect.has_table(conn, "sv_meta")
        except exc.SQLAlchemyError as error:
            raise self._failure(error, "cannot reach the data store") from None

    def run(self, work: Callable[[Connection, LogHead], T]) -> T:
        """Run ``work`` in one transaction holding the log-head lock; commit or roll back.

        Retries a bounded number of times when PostgreSQL reports a serialization
        failure, deadlock or a unique violation from a racing writer. Raises
        :class:`VaultBusyError` when the lock was not had in time and
        :class:`StorageError` for any other database failure; either way nothing of
        ``work`` was committed.
        """
        deadline = time.monotonic() + self.busy_timeout
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn:
                    head = self._lock_head(conn)
                    return work(conn, head)
            except exc.OperationalError as error:
                if self.is_sqlite and _is_sqlite_busy(error):
                    raise VaultBusyError(
                        "the vault is busy: another writer held it longer than "
                        f"{self.busy_timeout:g}s; nothing was changed"
                    ) from None
                if not self.is_sqlite and _pg_retryable(error) and time.monotonic() < deadline:
                    time.sleep(0.005 * (attempt + 1))
                    continue
                if not self.is_sqlite and getattr(error.orig, "sqlstate", None) == "55P03":
                    raise VaultBusyError(
                        "the vault is busy: the log lock was not had in time; nothing was changed"
                    ) from None
                raise self._failure(error) from None
            except exc.IntegrityError as error:
                if not self.is_sqlite and _pg_retryable(error) and time.monotonic() < deadline:
                    continue
                raise StorageError(f"data store refused a write: {describe_error(error)}") from None
            except exc.DBAPIError as error:
                raise self._failure(error) from None
        raise VaultBusyError("the vault is busy: too many conflicting writers; nothing was changed")

    def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a read-only transaction (used only for unlogged reads:
        verification, export and status, which reveal no personal data)."""
        try:
            with self.engine.connect().execution_options(sv_readonly=True) as conn:
                return work(conn)
        except exc.OperationalError as error:
            if self.is_sqlite and _is_sqlite_busy(error):
                raise VaultBusyError("the vault is busy; try again") from None
            raise self._failure(error) from None
        except exc.DBAPIError as error:
            raise self._failure(error) from None

    def _failure(
        self, error: exc.SQLAlchemyError, doing: str = "data store failure"
    ) -> StorageError:
        """The error for a failed transaction: a DiskFaultError when the SQLite file's
        disk is full or read-only (the transaction rolled back), else a StorageError."""
        if self.is_sqlite:
            where = self.engine.url.database
            fault = disk_fault_error(getattr(error, "orig", error), where, doing)
            if fault is not None:
                return fault
        return StorageError(f"{doing}: {describe_error(error)}")

    def _lock_head(self, conn: Connection) -> LogHead:
        stmt = select(log_head.c.seq, log_head.c.hash, log_head.c.ts).where(log_head.c.id == 1)
        if not self.is_sqlite:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one_or_none()
        if row is None:
            raise StorageError("the data store has no log head row: not a shredvault data store")
        return LogHead(int(row.seq), str(row.hash), str(row.ts))

    def init_rows(self, conn: Connection, values: dict[str, str]) -> None:
        conn.execute(insert(meta), [{"k": k, "v": v} for k, v in values.items()])
        conn.execute(insert(log_head).values(id=1, seq=0, hash=GENESIS, ts=""))

    @staticmethod
    def set_head(conn: Connection, head: LogHead) -> None:
        conn.execute(
            update(log_head)
            .where(log_head.c.id == 1)
            .values(seq=head.seq, hash=head.hash, ts=head.ts)
        )


def unique_refs(conn: Connection) -> bool:
    """Whether the vault declares customer refs unique."""
    return conn.execute(select(meta.c.v).where(meta.c.k == UNIQUE_REFS_KEY)).scalar() == "1"


def set_unique_refs(conn: Connection, unique: bool) -> None:
    """Turn the unique-refs rule on (the flag and a unique index on ``sv_customers.ref``;
    NULL refs never collide) or off (both gone), in the caller's transaction. The
    caller checks for duplicates first: the index refuses to build over them."""
    conn.execute(meta.delete().where(meta.c.k == UNIQUE_REFS_KEY))
    if unique:
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX IF NOT EXISTS {REF_INDEX} ON sv_customers (ref)")
        conn.execute(insert(meta).values(k=UNIQUE_REFS_KEY, v="1"))
    else:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {REF_INDEX}")


def ensure_ref_index(conn: Connection) -> None:
    """Rebuild the unique-refs index where a copy of the tables lost it (a backup
    snapshot or a restore made table by table from :data:`metadata`)."""
    if unique_refs(conn):
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX IF NOT EXISTS {REF_INDEX} ON sv_customers (ref)")


def _sqlite_discipline(engine: Engine) -> None:
    """WAL, full fsync on commit, and ``BEGIN IMMEDIATE`` for every transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event own BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted rows (record rows and the earlier version of a tombstone) are zeroed
        # in the file, not left in free space (vault/tombstone.py).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Readers that reveal no personal data (verify, export) take no write lock.
        readonly = conn.get_execution_options().get("sv_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def describe_error(error: exc.SQLAlchemyError) -> str:
    """The driver's message without SQL parameters (engines hide them as well)."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def tables_in(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())
