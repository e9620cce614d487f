"""The key-copy clock: how many shredded customers' keys the backups still hold.

A copy of keys.db (a backup) made at log seq ``n`` holds the keys of every customer
shredded after ``n`` that existed at ``n``, until the copy expires or is destroyed.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from .store import backups, log

__all__ = ["backup_key_copies", "shredded_since"]


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
    """Sum over unexpired backups of the customers shredded after each was taken."""
    total = 0
    live = select(backups.c.seq).where((backups.c.expires.is_(None)) | (backups.c.expires > now))
    for (seq,) in conn.execute(live).all():
        total += shredded_since(conn, int(seq))
    return total
