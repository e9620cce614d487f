"""The key-copy clock: how many shredded customers' keys the backups still hold.

A copy of keys.db (a backup) made at log seq ``n`` holds the keys of every customer
shredded after ``n`` that existed at ``n``, until the copy expires or is destroyed.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from .store import backup_state, backups, log

__all__ = ["backup_key_copies", "backup_states", "shredded_since"]


def backup_states(conn: Connection) -> dict[str, tuple[str | None, str | None]]:
    """``{backup id: (path written to, when forgotten)}`` for the backups that have a
    state row (none in a data store made before the table existed)."""
    if not conn.dialect.has_table(conn, backup_state.name):
        return {}
    rows = conn.execute(select(backup_state.c.id, backup_state.c.path, backup_state.c.forgotten))
    return {str(r.id): (r.path, r.forgotten) for r in rows}


def shredded_since(conn: Connection, seq: int) -> int:
    """Customers shredded after seq ``seq`` whose keys a copy taken at ``seq`` holds:
    those with a log entry at or before ``seq`` (a customer is created with one), so
    customers created after the copy do not count."""
    before = log.alias("before")
    held_then = (
        select(before.c.seq)
        .where(before.c.subject == log.c.subject, before.c.seq <= seq)
        .limit(1)
        .exists()
    )
    count = conn.execute(
        select(func.count())
        .select_from(log)
        .where(
            log.c.seq > seq,
            log.c.action == "customer.shred",
            log.c.outcome == "ok",
            held_then,
        )
    ).scalar_one()
    return int(count)


def backup_key_copies(conn: Connection, now: str) -> int:
    """Sum over backups neither expired nor forgotten of the customers shredded after
    each was taken."""
    total = 0
    forgotten = {bid for bid, (_path, when) in backup_states(conn).items() if when is not None}
    live = select(backups.c.id, backups.c.seq).where(
        (backups.c.expires.is_(None)) | (backups.c.expires > now)
    )
    for bid, seq in conn.execute(live).all():
        if str(bid) not in forgotten:
            total += shredded_since(conn, int(seq))
    return total
