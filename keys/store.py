"""The keystore file ``keys.db``: wrapped keys, subject tags and the rollback anchor.

Plain ``sqlite3``: the keystore's guarantees are pragmas (``secure_delete``,
``synchronous=FULL``, WAL checkpoints with TRUNCATE) set and checked exactly. It holds
only wrapped keys; :mod:`keys.connection` sets the pragmas and runs each write as one
``BEGIN IMMEDIATE`` transaction; :mod:`keys.erasure` destroys keys in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from . import erasure
from .connection import (
    TRUNCATE_DEADLINE_S,
    ThreadConnections,
    connect,
    keystore_error,
    truncate_wal,
    write_transaction,
)
from .errors import DiskFaultError, KeystoreError, OutputExistsError
from .files import create_empty

__all__ = ["SCHEMA_VERSION", "DekRow", "KeyStore", "KeystoreHeader"]

# 1: the root key itself wrapped the epochs and seeds and made the key-check value.
# 2: subkeys of the root do (keys/subkeys.py), and a wrapped MAC seed (table mac_seed).
SCHEMA_VERSION = 2
_CHUNK = 500  # stays under SQLite's host-parameter limit
_SQLITE_MAGIC = b"SQLite format 3\x00"

_MAC_SEED_TABLE = """CREATE TABLE IF NOT EXISTS mac_seed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wrapped BLOB NOT NULL,
    created TEXT NOT NULL
)"""

_SCHEMA = (
    _MAC_SEED_TABLE
    + ";\n"
    + """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE kek_epochs (
    epoch INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE deks (
    customer_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    epoch INTEGER NOT NULL REFERENCES kek_epochs(epoch),
    wrapped BLOB NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (customer_id, version)
);
CREATE INDEX deks_by_epoch ON deks(epoch);
CREATE TABLE subject_tags (customer_id TEXT PRIMARY KEY, tag BLOB NOT NULL);
CREATE TABLE signing (
    generation INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    public_key BLOB NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE receipt_salts (customer_id TEXT PRIMARY KEY, salt BLOB NOT NULL);
CREATE TABLE anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL
);
"""
)


@dataclass(frozen=True, slots=True)
class KeystoreHeader:
    """The keystore's public header: identity, KDF settings and key-check value."""

    vault_id: str
    schema_version: int
    key_source: str  # "passphrase" | "keyfile"
    kdf: str  # JSON text of KdfParams.to_dict(), empty for keyfile vaults
    salt: bytes
    key_check: bytes
    active_epoch: int
    created: str


@dataclass(frozen=True, slots=True)
class DekRow:
    """One wrapped DEK row as stored."""

    customer_id: str
    version: int
    epoch: int
    wrapped: bytes
    created: str


class KeyStore:
    """Connections to ``keys.db``, one per thread (keys/connection.py); close when done."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._connections = ThreadConnections(path, conn)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._connections.current()  # this thread's

    def __repr__(self) -> str:
        return f"<KeyStore {self.path}>"

    # -- opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, header: KeystoreHeader) -> KeyStore:
        """Create a new keystore file; refuses to touch an existing one."""
        path = Path(path)
        try:
            create_empty(path)  # 0600 before SQLite opens it; its -wal/-shm inherit that
        except OutputExistsError:
            raise KeystoreError(f"keystore {path} already exists") from None
        try:
            conn = connect(path)  # the pragmas the keystore's guarantees rest on
            store = cls(path, conn)
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            with store.transaction() as c:
                c.executemany(
                    "INSERT INTO meta (k, v) VALUES (?, ?)",
                    [
                        ("vault_id", header.vault_id),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("key_source", header.key_source),
                        ("kdf", header.kdf),
                        ("salt", header.salt.hex()),
                        ("key_check", header.key_check.hex()),
                        ("active_epoch", str(header.active_epoch)),
                        ("created", header.created),
                        (erasure.LAYOUT_KEY, erasure.LAYOUT),
                        (erasure.SCRUB_EPOCH, "1"),
                    ],
                )
        except BaseException:
            path.unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            raise
        return store

    @classmethod
    def open(cls, path: Path) -> KeyStore:
        """Open an existing keystore; refuses a missing file or a newer schema."""
        path = Path(path)
        if not path.is_file():
            raise KeystoreError(f"keystore {path} not found")
        with open(path, "rb") as handle:
            magic = handle.read(len(_SQLITE_MAGIC))
        if magic != _SQLITE_MAGIC:
            # Checked before connecting: enabling WAL would otherwise write to the file.
            raise KeystoreError(f"{path} is not a shredvault keystore (not an SQLite file)")
        conn = None
        try:
            conn = connect(path)
            store = cls(path, conn)
            version = int(store._meta("schema_version"))
        except (sqlite3.DatabaseError, KeyError, ValueError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):  # opening writes its WAL index
                error = keystore_error(None, exc, f"cannot open the keystore {path}", path)
                if isinstance(error, DiskFaultError):
                    raise error from None
            raise KeystoreError(f"{path} is not a shredvault keystore ({exc})") from None
        if version > SCHEMA_VERSION:
            conn.close()
            raise KeystoreError(
                f"keystore schema version {version} is newer than this shredvault "
                f"supports ({SCHEMA_VERSION}); upgrade shredvault"
            )
        if conn.execute("PRAGMA secure_delete").fetchone()[0] != 1:
            conn.close()
            raise KeystoreError("could not enable secure_delete on the keystore")
        if store.get_meta(erasure.LAYOUT_KEY) != erasure.LAYOUT:
            try:
                erasure.convert_layout(conn, TRUNCATE_DEADLINE_S)
            except BaseException:
                conn.close()
                raise
        return store

    def close(self) -> None:
        self._connections.close()  # every thread's

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``); rolled back on any error, which
        surfaces as :class:`KeystoreError` (:func:`~keys.connection.write_transaction`)."""
        return write_transaction(self._conn)

    def scrub(self, deadline_s: float = TRUNCATE_DEADLINE_S) -> None:
        """Close the scrub epoch (:func:`~keys.erasure.close_scrub_epoch`): filler rows
        deleted, file rebuilt, WAL truncated; :class:`KeystoreError` if busy."""
        erasure.close_scrub_epoch(self._conn, deadline_s)

    def scrub_state(self) -> erasure.ScrubState:
        """Where the scrub epoch stands (:func:`~keys.erasure.scrub_state`)."""
        return erasure.scrub_state(self._conn)

    def checkpoint_truncate(self, deadline_s: float = TRUNCATE_DEADLINE_S) -> None:
        """Copy the WAL into the file and truncate it, retrying until ``deadline_s``
        (:func:`~keys.connection.truncate_wal`; :class:`KeystoreError` if held open).
        After keys were overwritten in place this is their erasure: the file gets the
        filler, no WAL frame keeps an old page; cost: pages written, not keystore size."""
        truncate_wal(self._conn, deadline_s)

    erase_in_place = checkpoint_truncate

    # -- header ----------------------------------------------------------------------

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return str(row[0])

    def header(self) -> KeystoreHeader:
        try:
            return KeystoreHeader(
                vault_id=self._meta("vault_id"),
                schema_version=int(self._meta("schema_version")),
                key_source=self._meta("key_source"),
                kdf=self._meta("kdf"),
                salt=bytes.fromhex(self._meta("salt")),
                key_check=bytes.fromhex(self._meta("key_check")),
                active_epoch=int(self._meta("active_epoch")),
                created=self._meta("created"),
            )
        except (KeyError, ValueError) as exc:
            raise KeystoreError(f"keystore header is damaged ({exc})") from None

    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    def delete_meta(self, conn: sqlite3.Connection, key: str) -> None:
        conn.execute("DELETE FROM meta WHERE k = ?", (key,))

    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every meta entry whose key starts with ``prefix`` (meta holds a few rows)."""
        rows = self._conn.execute("SELECT k, v FROM meta")
        return {str(k): str(v) for k, v in rows if str(k).startswith(prefix)}

    def get_meta(self, key: str) -> str | None:
        try:
            return self._meta(key)
        except KeyError:
            return None

    # -- KEK epochs and signing seed -------------------------------------------------

    def epochs(self) -> dict[int, bytes]:
        rows = self._conn.execute("SELECT epoch, wrapped FROM kek_epochs ORDER BY epoch")
        return {int(e): bytes(w) for e, w in rows}

    def epoch_rows(self) -> list[tuple[int, str, int]]:
        """(epoch, created, DEK count) for every epoch."""
        rows = self._conn.execute(
            "SELECT e.epoch, e.created, (SELECT COUNT(*) FROM deks d WHERE d.epoch = e.epoch "
            f"AND d.{erasure.LIVE}) "
            "FROM kek_epochs e ORDER BY e.epoch"
        )
        return [(int(e), str(c), int(n)) for e, c, n in rows]

    def add_epoch(self, conn: sqlite3.Connection, epoch: int, wrapped: bytes, created: str) -> None:
        conn.execute(
            "INSERT INTO kek_epochs (epoch, wrapped, created) VALUES (?, ?, ?)",
            (epoch, wrapped, created),
        )

    def signing_seed(self) -> tuple[int, bytes, bytes]:
        """(generation, wrapped seed, public key) of the newest signing key."""
        row = self._conn.execute(
            "SELECT generation, wrapped, public_key FROM signing ORDER BY generation DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise KeystoreError("keystore holds no signing key")
        return int(row[0]), bytes(row[1]), bytes(row[2])

    def public_key(self) -> bytes:
        """The vault's Ed25519 public key; readable without unlocking. Once the signing
        seed is destroyed (decommission) the key survives in ``meta`` so that auditors
        can still check checkpoints."""
        row = self._conn.execute(
            "SELECT public_key FROM signing ORDER BY generation DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            return bytes(row[0])
        kept = self.get_meta("public_key")
        if kept is None:
            raise KeystoreError("keystore holds no signing key")
        return bytes.fromhex(kept)

    def add_signing_seed(
        self, conn: sqlite3.Connection, generation: int, wrapped: bytes, public: bytes, created: str
    ) -> None:
        conn.execute(
            "INSERT INTO signing (generation, wrapped, public_key, created) VALUES (?, ?, ?, ?)",
            (generation, wrapped, public, created),
        )

    # -- DEKs and subject tags -------------------------------------------------------

    def deks(self, customer_ids: Sequence[str]) -> list[DekRow]:
        out: list[DekRow] = []
        for chunk in _chunks(customer_ids):
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                "SELECT customer_id, version, epoch, wrapped, created FROM deks "
                f"WHERE customer_id IN ({marks})",
                chunk,
            )
            out.extend(DekRow(str(c), int(v), int(e), bytes(w), str(t)) for c, v, e, w, t in rows)
        return out

    def insert_deks(self, conn: sqlite3.Connection, rows: Iterable[DekRow]) -> None:
        conn.executemany(
            "INSERT INTO deks (customer_id, version, epoch, wrapped, created) VALUES (?,?,?,?,?)",
            [(r.customer_id, r.version, r.epoch, r.wrapped, r.created) for r in rows],
        )

    def subject_tags(self, customer_ids: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for chunk in _chunks(customer_ids):
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT customer_id, tag FROM subject_tags WHERE customer_id IN ({marks})", chunk
            )
            out.update((str(c), bytes(t)) for c, t in rows)
        return out

    def customers_for_tags(self, tags: Sequence[bytes]) -> dict[bytes, str]:
        """Reverse lookup: subject tag -> customer id, for tags still in the keystore
        (a shredded customer's tag is gone, so its old entries stay unlinked)."""
        out: dict[bytes, str] = {}
        items = list(tags)
        for i in range(0, len(items), _CHUNK):
            chunk = items[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT tag, customer_id FROM subject_tags WHERE tag IN ({marks})", chunk
            )
            out.update((bytes(t), str(c)) for t, c in rows)
        return out

    def insert_subject_tags(self, conn: sqlite3.Connection, tags: dict[str, bytes]) -> None:
        conn.executemany(
            "INSERT INTO subject_tags (customer_id, tag) VALUES (?, ?)", list(tags.items())
        )

    def delete_customer(self, conn: sqlite3.Connection, customer_id: str) -> list[DekRow]:
        """Destroy every DEK version and the subject tag of one customer in place
        (:mod:`keys.erasure`); return what went. The rows stay, holding filler, until
        the scrub epoch closes (:meth:`scrub`); no query sees them meanwhile."""
        rows = [DekRow(*r) for r in erasure.overwrite_deks(conn, "customer_id = ?", (customer_id,))]
        if erasure.overwrite_tag(conn, customer_id) or rows:
            erasure.note_destroyed(conn)
        return rows

    def deks_outside_epoch(self, epoch: int, limit: int) -> list[DekRow]:
        """DEKs wrapped by an epoch older than ``epoch`` (the active one is the newest),
        found through the epoch index rather than a scan."""
        rows = self._conn.execute(
            "SELECT customer_id, version, epoch, wrapped, created FROM deks "
            f"WHERE epoch < ? AND {erasure.LIVE} LIMIT ?",
            (epoch, limit),
        )
        return [DekRow(str(c), int(v), int(e), bytes(w), str(t)) for c, v, e, w, t in rows]

    def rewrap_deks(
        self, conn: sqlite3.Connection, updates: list[tuple[int, bytes, str, int, int]]
    ) -> None:
        """(new epoch, new wrapped, customer, version, old epoch) for each DEK."""
        # A new epoch number may take more bytes than the old: such a row is rewritten
        # elsewhere, which can move its neighbours. The rotation's end scrubs.
        self.set_meta(conn, erasure.SCRUB_DUE, "1")
        conn.executemany(
            "UPDATE deks SET epoch = ?, wrapped = ? "
            "WHERE customer_id = ? AND version = ? AND epoch = ?",
            updates,
        )

    def delete_epoch(self, conn: sqlite3.Connection, epoch: int) -> bytes | None:
        """Delete an epoch and the rows destroyed in place under it (filler); the
        caller scrubs the keystore afterwards."""
        erasure.purge_epoch(conn, epoch)
        row = conn.execute("SELECT wrapped FROM kek_epochs WHERE epoch = ?", (epoch,)).fetchone()
        conn.execute("DELETE FROM kek_epochs WHERE epoch = ?", (epoch,))
        return None if row is None else bytes(row[0])

    def dek_counts(self) -> dict[int, int]:
        rows = self._conn.execute(
            f"SELECT epoch, COUNT(*) FROM deks WHERE {erasure.LIVE} GROUP BY epoch"
        )
        return {int(e): int(n) for e, n in rows}

    def oldest_dek(self) -> str | None:
        row = self._conn.execute(f"SELECT MIN(created) FROM deks WHERE {erasure.LIVE}").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def deks_created_before(self, moment: str) -> list[str]:
        rows = self._conn.execute(
            f"SELECT customer_id FROM deks WHERE {erasure.LIVE} GROUP BY customer_id "
            "HAVING MAX(created) < ?",
            (moment,),
        )
        return [str(r[0]) for r in rows]

    def delete_dek_versions(
        self, conn: sqlite3.Connection, customer_id: str, below: int
    ) -> list[DekRow]:
        """Destroy a customer's DEK versions below ``below`` in place (:mod:`keys.erasure`)."""
        where = "customer_id = ? AND version < ?"
        rows = [DekRow(*r) for r in erasure.overwrite_deks(conn, where, (customer_id, below))]
        if rows:
            erasure.note_destroyed(conn)
        return rows

    def replace_root_wrapped(
        self,
        conn: sqlite3.Connection,
        epochs: dict[int, bytes],
        seeds: dict[int, bytes],
        meta: dict[str, str],
        mac_seed: bytes | None = None,
    ) -> None:
        conn.executemany(
            "UPDATE kek_epochs SET wrapped = ? WHERE epoch = ?", [(w, e) for e, w in epochs.items()]
        )
        if mac_seed is not None:
            conn.execute("UPDATE mac_seed SET wrapped = ? WHERE id = 1", (mac_seed,))
        conn.executemany(
            "UPDATE signing SET wrapped = ? WHERE generation = ?",
            [(w, g) for g, w in seeds.items()],
        )
        conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(meta.items()))

    def mac_seed(self) -> bytes | None:
        """The wrapped MAC seed (schema 2 on); None when the keystore holds none."""
        if not self._has_mac_seed_table(self._conn):
            return None
        row = self._conn.execute("SELECT wrapped FROM mac_seed WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def add_mac_seed(self, conn: sqlite3.Connection, wrapped: bytes, created: str) -> None:
        """Store the wrapped MAC seed (making its table in a schema-1 file)."""
        conn.execute(_MAC_SEED_TABLE)
        conn.execute(
            "INSERT INTO mac_seed (id, wrapped, created) VALUES (1, ?, ?)", (wrapped, created)
        )

    @staticmethod
    def _has_mac_seed_table(conn: sqlite3.Connection) -> bool:
        found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mac_seed'"
        return conn.execute(found).fetchone() is not None

    def signing_seeds(self) -> dict[int, bytes]:
        rows = self._conn.execute("SELECT generation, wrapped FROM signing")
        return {int(g): bytes(w) for g, w in rows}

    def receipt_salt(self, customer_id: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT salt FROM receipt_salts WHERE customer_id = ?", (customer_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_receipt_salt(self, conn: sqlite3.Connection, customer_id: str, salt: bytes) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO receipt_salts (customer_id, salt) VALUES (?, ?)",
            (customer_id, salt),
        )

    def delete_receipt_salt(self, conn: sqlite3.Connection, customer_id: str) -> bool:
        done = conn.execute("DELETE FROM receipt_salts WHERE customer_id = ?", (customer_id,))
        return done.rowcount > 0

    def receipt_salt_customers(self) -> list[str]:
        return [str(r[0]) for r in self._conn.execute("SELECT customer_id FROM receipt_salts")]

    def count_deks(self) -> int:
        return int(
            self._conn.execute(f"SELECT COUNT(*) FROM deks WHERE {erasure.LIVE}").fetchone()[0]
        )

    # -- rollback anchor -------------------------------------------------------------

    def anchor(self) -> tuple[int, bytes, bytes] | None:
        """(seq, checkpoint body, signature) of the newest checkpoint the vault wrote."""
        row = self._conn.execute("SELECT seq, body, signature FROM anchor WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def advance_anchor(self, seq: int, body: bytes, signature: bytes) -> None:
        """Record a newer checkpoint as the anchor; never moves it backwards."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO anchor (id, seq, body, signature) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, body = excluded.body, "
                "signature = excluded.signature WHERE excluded.seq > anchor.seq",
                (seq, body, signature),
            )


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    items = list(items)
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
