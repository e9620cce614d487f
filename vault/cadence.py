"""The business's routine (issue 23, items 4 and 5): how often restores are rehearsed
(``backup drill``) and third parties' access reviewed (``role review``), when each last
happened, and whether one is overdue (docs/drills.md, docs/access-control.md).

The intervals live in the keystore's meta (local to the host, never in the untrusted
data store). The last drill and the last review are log entries: the keystore keeps
their seq and the entry is read by it, so what they say is covered by the hash chain;
a seq that names no such entry (a data store put back) reads as "none", which warns.
Nothing here gates or logs: its callers (key status, the audit report, the drill and
the review) do.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from .actor import Actor
from .clock import format_ts, parse_ts
from .context import Tx, VaultContext
from .errors import SchemaError, keys_errors
from .store import log

__all__ = [
    "DEFAULT_INTERVAL_DAYS",
    "ROUTINES",
    "RoutineItem",
    "RoutineStatus",
    "record_last",
    "routine_status",
    "set_interval",
]

DEFAULT_INTERVAL_DAYS = 90
#: routine -> (keystore key of its interval, keystore key of its last entry's seq,
#: the action of that entry)
ROUTINES = {
    "drill": ("drill_interval_days", "last_drill_seq", "backup.drill"),
    "review": ("review_interval_days", "last_review_seq", "role.review"),
}
_MAX_INTERVAL_DAYS = 3660
_WHAT = {"drill": "restore drill", "review": "third-party access review"}


@dataclass(frozen=True, slots=True)
class RoutineItem:
    """One routine's state: its interval, its last run (``{"seq", "ts", "outcome",
    "actor", "detail"}`` of the entry, or None), when the next is due and whether that
    has passed (a failed last drill is overdue at once)."""

    name: str
    interval_days: int
    last: dict[str, Any] | None
    due: str
    overdue: bool

    def warning(self) -> str | None:
        """A sentence for a report when the routine is overdue, else None."""
        if not self.overdue:
            return None
        what = _WHAT[self.name]
        if self.last is None:
            return f"no {what} on record within the policy of {self.interval_days} days"
        if self.last["outcome"] != "ok":
            return f"the last {what} ({self.last['ts']}) failed: run it again"
        return (
            f"the last {what} was {self.last['ts']}: overdue since {self.due} "
            f"(policy {self.interval_days} days)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_days": self.interval_days,
            "last": self.last,
            "due": self.due,
            "overdue": self.overdue,
            "warning": self.warning(),
        }


@dataclass(frozen=True, slots=True)
class RoutineStatus:
    """The drill and the review routines together."""

    drill: RoutineItem
    review: RoutineItem

    def warnings(self) -> list[str]:
        return [w for w in (self.drill.warning(), self.review.warning()) if w is not None]

    def to_json(self) -> dict[str, Any]:
        return {"drill": self.drill.to_json(), "review": self.review.to_json()}


def routine_status(ctx: VaultContext) -> RoutineStatus:
    """Where each routine stands now (no gate, no log entry: the caller's report
    carries both)."""
    now = ctx.clock()
    created = parse_ts(ctx.keys.store.header().created)
    return RoutineStatus(_item(ctx, "drill", now, created), _item(ctx, "review", now, created))


def _item(ctx: VaultContext, name: str, now: datetime, created: datetime) -> RoutineItem:
    interval = _interval(ctx, name)
    last = _last_entry(ctx, name)
    since = created if last is None else parse_ts(last["ts"])
    due = since + timedelta(days=interval)
    failed = last is not None and last["outcome"] != "ok"
    return RoutineItem(name, interval, last, format_ts(due), failed or now >= due)


def _interval(ctx: VaultContext, name: str) -> int:
    raw = ctx.keys.store.get_meta(ROUTINES[name][0])
    with contextlib.suppress(ValueError):
        if raw is not None and 1 <= int(raw) <= _MAX_INTERVAL_DAYS:
            return int(raw)
    return DEFAULT_INTERVAL_DAYS


def _last_entry(ctx: VaultContext, name: str) -> dict[str, Any] | None:
    _key, seq_key, action = ROUTINES[name]
    raw = ctx.keys.store.get_meta(seq_key)
    if raw is None or not raw.isdigit():
        return None
    body = ctx.data.read(
        lambda conn: conn.execute(select(log.c.body).where(log.c.seq == int(raw))).scalar()
    )
    if body is None:
        return None
    entry = json.loads(body)
    if entry.get("action") != action:
        return None
    return {
        "seq": entry["seq"],
        "ts": entry["ts"],
        "outcome": entry["outcome"],
        "actor": entry["actor"],
        "detail": entry["detail"],
    }


def record_last(ctx: VaultContext, name: str, seq: int) -> None:
    """Remember ``seq`` as the routine's last entry (after that entry committed: a
    crash in between leaves the older one, which warns sooner, never later)."""
    store = ctx.keys.store
    with keys_errors("cannot record the routine in the keystore"), store.transaction() as conn:
        store.set_meta(conn, ROUTINES[name][1], str(seq))


def set_interval(ctx: VaultContext, actor: Actor, name: str, days: object) -> int:
    """Set how many days may pass between two runs of routine ``name`` (``drill`` or
    ``review``): a whole number from 1 to 3660. Admin only; logged as ``policy.set``
    (``{"policy": "<name>_interval_days", "days"}``). SchemaError for a bad value,
    nothing changed or logged."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_INTERVAL_DAYS:
        raise SchemaError(f"the interval is a whole number of days from 1 to {_MAX_INTERVAL_DAYS}")
    key = ROUTINES[name][0]
    store = ctx.keys.store

    def work(tx: Tx) -> int:
        actor.gate(tx.conn, "admin", "policy.set")
        # Written inside the logged transaction: a keystore that refuses rolls the entry
        # back; an entry that then fails to commit leaves the new interval unlogged.
        with keys_errors("cannot store the policy in the keystore"), store.transaction() as kc:
            store.set_meta(kc, key, str(days))
        tx.log(actor.event("policy.set", detail={"policy": key, "days": days}))
        return days

    return ctx.transact(work)
