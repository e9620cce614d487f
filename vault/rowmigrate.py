"""Upgrading a data store to authenticated rows (schema 2 -> 3), at its first open.

In ONE data-store transaction (so a crash leaves either schema 2, untouched, or
schema 3, complete; the next open simply runs it again):

1. add the columns (``seq``, ``auth`` on the five tables, ``aad_v`` on records with
   1 for every existing row, ``target`` on the log) and the log's (target, seq) index,
   each only if missing;
2. fill ``target`` of every existing log entry from what its body says (records and
   customers from the ``record`` / ``subject`` columns, which verification checks
   against the body; principals, roles and kinds from the body itself);
3. stamp every row with the seq of the ``store.authenticate`` entry this transaction
   logs and authenticate it (vault/rowauth.py), records in batches;
4. set the data schema to 3 and log ``store.authenticate`` with the counts.

Then the keystore records that this vault's rows are authenticated
(:data:`ROWS_MARK`). From then on a data store that says an older schema was put
back or downgraded by someone: the vault refuses to open it (:class:`TamperError`),
rather than authenticate whatever rows it holds now. What the upgrade cannot know:
a row changed in the data store *before* the upgrade is authenticated as it stands
(docs/rows.md, docs/threat-model.md); a stored role is checked on every load as
creating one checks it, whatever its authenticator says.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, inspect, literal, select, text, update

from .actor import ADMIN
from .context import Tx, VaultContext
from .errors import StorageError, TamperError
from .faults import crash_point
from .log import CUSTOMER_CHANGES, NAMED_CHANGES, RECORD_CHANGES, Event, entry_target
from .rowauth import SPECS, TABLES, update_rows
from .store import AUTH_TABLES, SCHEMA_VERSION, log, meta, records

__all__ = [
    "AUTHENTICATE_ACTION",
    "ROWS_MARK",
    "ROWS_SCHEMA",
    "authenticate_rows",
    "mark_authenticated",
]

AUTHENTICATE_ACTION = "store.authenticate"
#: keystore meta key: "1" once this vault's data-store rows are authenticated
ROWS_MARK = "data_rows_authenticated"
ROWS_SCHEMA = 3
_BATCH = 2000


def mark_authenticated(ctx: VaultContext) -> None:
    """Record in the keystore that the data store's rows are authenticated."""
    store = ctx.keys.store
    with store.transaction() as conn:
        store.set_meta(conn, ROWS_MARK, "1")


def authenticate_rows(ctx: VaultContext) -> bool:
    """Upgrade a schema-2 data store to authenticated rows (module docstring); nothing
    to do for one made or upgraded already. Returns whether it upgraded now.

    Raises :class:`TamperError` when the keystore knows the rows were authenticated
    but the data store says an older schema, and :class:`StorageError` when the data
    store cannot be written (nothing changed; the next open tries again)."""
    version = ctx.data.read(_schema_version)
    marked = ctx.keys.store.get_meta(ROWS_MARK) == "1"
    if version >= ROWS_SCHEMA:
        if not marked:
            mark_authenticated(ctx)  # the data step committed, a crash came before this
        return False
    if marked:
        raise TamperError(
            f"the data store says schema {version}, but this vault's rows were "
            "authenticated already: an older copy of the data store was put back or it "
            "was downgraded; the vault refuses to serve",
            table="sv_meta",
            row="schema_version",
            reason="stale",
        )
    if version < 2:
        raise StorageError("the data store is older than schema 2: open it once to upgrade")

    def work(tx: Tx) -> bool:
        if _schema_version(tx.conn) >= ROWS_SCHEMA:
            return False  # another process upgraded it meanwhile
        _add_columns(tx.conn)
        ctx.data.before_schema_3(False)  # this transaction's entry has its target
        targets = _fill_targets(tx.conn)
        seq = tx.next_seq()
        counts = {table: _authenticate(ctx, tx.conn, table, seq) for table in AUTH_TABLES}
        tx.conn.execute(
            update(meta).where(meta.c.k == "schema_version").values(v=str(SCHEMA_VERSION))
        )
        detail: dict[str, Any] = {
            "data": {"from": version, "to": SCHEMA_VERSION},
            "rows": counts,
            "log_targets": targets,
        }
        tx.log(Event(ADMIN, ADMIN, AUTHENTICATE_ACTION, detail=detail))
        crash_point("rowmigrate:uncommitted")
        return True

    upgraded = ctx.transact(work, checkpoint=True)
    crash_point("rowmigrate:after-data")
    mark_authenticated(ctx)
    return upgraded


def _schema_version(conn: Connection) -> int:
    value = conn.execute(select(meta.c.v).where(meta.c.k == "schema_version")).scalar()
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _add_columns(conn: Connection) -> None:
    quote = conn.dialect.identifier_preparer.quote
    for name in (*AUTH_TABLES, log.name):
        have = {str(c["name"]) for c in inspect(conn).get_columns(name)}
        wanted = [("seq", "BIGINT"), ("auth", "VARCHAR(64)")] if name != log.name else []
        if name == records.name:
            wanted.append(("aad_v", "INTEGER NOT NULL DEFAULT 1"))
        if name == log.name:
            wanted.append(("target", "VARCHAR(100)"))
        for column, sql_type in wanted:
            if column not in have:
                conn.execute(text(f"ALTER TABLE {quote(name)} ADD COLUMN {column} {sql_type}"))
    for index in log.indexes:
        if index.name == "ix_sv_log_target":
            index.create(conn, checkfirst=True)


def _fill_targets(conn: Connection) -> int:
    """``target`` of the entries logged before schema 3, as :func:`entry_target` sets it."""
    done = 0
    for actions, prefix, column in (
        (RECORD_CHANGES, "record:", log.c.record),
        (CUSTOMER_CHANGES, "subject:", log.c.subject),
    ):
        result = conn.execute(
            update(log)
            .where(log.c.action.in_(sorted(actions)), log.c.outcome == "ok", column.is_not(None))
            .values(target=literal(prefix) + column)
        )
        done += int(result.rowcount or 0)
    named = conn.execute(
        select(log.c.seq, log.c.body).where(log.c.action.in_(sorted(NAMED_CHANGES)))
    ).all()
    changes = []
    for seq, body in named:
        try:
            raw = json.loads(body)
            target = entry_target(
                raw.get("action"), raw.get("outcome"), None, None, raw.get("detail")
            )
        except (ValueError, AttributeError):
            continue  # a damaged entry: verification reports it
        if target is not None:
            changes.append({"s": int(seq), "t": target})
    if changes:
        conn.execute(
            update(log).where(log.c.seq == bindparam("s")).values(target=bindparam("t")), changes
        )
    return done + len(changes)


def _authenticate(ctx: VaultContext, conn: Connection, table: str, seq: int) -> int:
    """Stamp and authenticate every row of ``table`` (keyset pages of 2000)."""
    t = TABLES[table]
    key = t.c[SPECS[table][0][0]]
    total = 0
    after: str | None = None
    while True:
        stmt = select(key).order_by(key).limit(_BATCH)
        if after is not None:
            stmt = stmt.where(key > after)
        ids = [str(i) for i in conn.execute(stmt).scalars()]
        if not ids:
            return total
        total += update_rows(
            conn, ctx.keys.row_auth, table, {i: {} for i in ids}, seq, verify=False
        )
        after = ids[-1]
