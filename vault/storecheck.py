"""Checking every authenticated row of the data store, with the vault open.

Offline verification (no passphrase) checks the log's chain and signatures but cannot
check row authenticators: they are MACs under a key only an unlocked vault holds. This
walks every row of the five authenticated tables (vault/rowauth.py) in pages, checks
each one's authenticator and freshness (no later log entry changed its object), and
reports the rows that fail — table, row id and why — without refusing anything else.
Needs the ``audit`` action; logged as one ``store.check`` entry with counts only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from .actor import Actor
from .context import Tx, VaultContext
from .rowauth import SPECS, TABLES, Bad, check_rows
from .store import AUTH_TABLES

__all__ = ["CHECK_ACTION", "StoreCheck", "check_store"]

CHECK_ACTION = "store.check"
_PAGE = 2000


@dataclass(slots=True)
class StoreCheck:
    """What :func:`check_store` found: rows checked per table, and the failing ones."""

    rows: dict[str, int] = field(default_factory=dict)
    tampered: list[Bad] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.tampered

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": dict(self.rows),
            "tampered": [b.to_json() for b in self.tampered],
        }


def _check_table(
    ctx: VaultContext,
    table: str,
    tampered: list[Bad],
    progress: Callable[[int], None] | None,
) -> int:
    """Check one table's rows in keyset pages (each page its own read); returns how
    many rows there were and appends the failing ones to ``tampered``."""
    t = TABLES[table]
    key = t.c[SPECS[table][0][0]]
    auth = ctx.keys.row_auth
    total = 0
    after: str | None = None

    def page(conn: Connection) -> list[Bad] | None:
        stmt = select(t).order_by(key).limit(_PAGE)
        if after is not None:
            stmt = stmt.where(key > after)
        rows = [r._mapping for r in conn.execute(stmt)]
        if not rows:
            return None
        seen.append((len(rows), str(rows[-1][key.name])))
        tags = None
        if table == "sv_customers":
            found = ctx.keys.store.subject_tags([str(r["id"]) for r in rows])
            tags = {cid: tag.hex() for cid, tag in found.items()}
        return check_rows(conn, auth, table, rows, tags=tags)

    seen: list[tuple[int, str]] = []
    while True:
        bad = ctx.data.read(page)
        if bad is None:
            return total
        tampered += bad
        count, after = seen[-1]
        total += count
        if progress is not None:
            progress(count)


def check_store(
    ctx: VaultContext, actor: Actor, *, progress: Callable[[int], None] | None = None
) -> StoreCheck:
    """Check every authenticated row (module docstring); ``progress`` gets row counts."""
    actor.authorize("audit", CHECK_ACTION)
    report = StoreCheck()
    for table in AUTH_TABLES:
        report.rows[table] = _check_table(ctx, table, report.tampered, progress)

    def log(tx: Tx) -> None:
        by_table: dict[str, int] = {}
        for bad in report.tampered:
            by_table[bad.table] = by_table.get(bad.table, 0) + 1
        detail = {"rows": dict(report.rows), "tampered": by_table}
        outcome = "ok" if report.ok else "error"
        tx.log(actor.event(CHECK_ACTION, outcome=outcome, detail=detail))

    ctx.transact(log)
    return report
