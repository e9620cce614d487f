"""Third-party access reviews (issue 23, item 5; docs/access-control.md, "Reviews").

``role review`` lists every custom role and every principal with what it is granted
(actions, kinds, fields, purposes, expiry), when it last acted and how many log
entries it made since the last review; ``role review --done`` records that the review
was made (``role.review``), which starts the counts again. The counts come from the
log's ``(actor, ts)`` index: one range per principal, never a scan of the whole log.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from .access import BUILTIN_ROLES
from .actor import Actor
from .cadence import record_last, routine_status
from .context import Tx, VaultContext
from .inputs import check_text
from .store import log

__all__ = ["MAX_NOTE", "review_done", "role_review"]

#: a review note's length (names and decisions, never personal data: it is logged)
MAX_NOTE = 300


def role_review(ctx: VaultContext, actor: Actor) -> dict[str, Any]:
    """Roles and principals with their grants, last use and activity since the last
    review, and where the review routine stands. Needs ``audit`` (an auditor may
    review; only an admin marks it done); logged as ``role.review-list``. A forged
    principal or role row is a logged TamperError and no listing."""
    status = routine_status(ctx).review
    last = status.last if status.last is not None and status.last["outcome"] == "ok" else None
    since = None if last is None else (int(last["seq"]), str(last["ts"]))
    now = ctx.now()

    def work(tx: Tx) -> dict[str, Any]:
        actor.gate(tx.conn, "audit", "role.review-list")
        people, custom = _listing(ctx, actor, tx.conn, since, now)
        tx.log(
            actor.event(
                "role.review-list",
                detail={"principals": len(people), "roles": len(custom)},
            )
        )
        return {"principals": people, "roles": custom}

    body = ctx.transact(work)
    return {
        "type": "shredvault-role-review",
        "v": 1,
        "vault": ctx.vault_id,
        "generated": now,
        "since": None if last is None else last["ts"],
        "last_review": last,
        "policy": {
            "interval_days": status.interval_days,
            "due": status.due,
            "overdue": status.overdue,
        },
        **body,
    }


def review_done(ctx: VaultContext, actor: Actor, *, note: str | None = None) -> dict[str, Any]:
    """Record that the review was made (``role.review``: how many principals and roles
    were reviewed and what they did since the last review, and the note): the counts
    start again from here. Admin only. SchemaError for a note that is blank, longer
    than :data:`MAX_NOTE` characters or not text (nothing logged)."""
    if note is not None:
        check_text(note, "a review note", max_chars=MAX_NOTE)
    status = routine_status(ctx).review
    last = status.last if status.last is not None and status.last["outcome"] == "ok" else None
    since = None if last is None else (int(last["seq"]), str(last["ts"]))
    now = ctx.now()

    def work(tx: Tx) -> dict[str, Any]:
        actor.gate(tx.conn, "admin", "role.review")
        people, custom = _listing(ctx, actor, tx.conn, since, now)
        detail: dict[str, Any] = {
            "principals": len(people),
            "roles": len(custom),
            "entries_since_last": sum(p["entries_since_review"] for p in people),
            "previous": None if last is None else last["seq"],
        }
        if note is not None:
            detail["note"] = note
        seq = tx.next_seq()
        tx.log(actor.event("role.review", detail=detail))
        return {"seq": seq, **detail}

    done = ctx.transact(work)
    record_last(ctx, "review", int(done["seq"]))
    return done


def _listing(
    ctx: VaultContext, actor: Actor, conn: Connection, since: tuple[int, str] | None, now: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    listed, role_rows = actor.checked_principals_and_roles(conn, "role.review-list")
    specs = {str(r["name"]): json.loads(r["spec"]) for r in role_rows}
    for name, builtin in BUILTIN_ROLES.items():
        specs.setdefault(name, builtin.to_json())
    people = []
    for p in listed:
        spec = specs.get(str(p["role"]), {})
        use = activity(conn, str(p["name"]), since)
        expires = p["expires"]
        state = "revoked" if p["revoked"] else "active"
        if state == "active" and expires is not None and now >= expires:
            state = "expired"
        people.append(
            {
                "name": str(p["name"]),
                "role": str(p["role"]),
                "expires": expires,
                "state": state,
                "grants": _grants(spec),
                **use,
            }
        )
    custom = []
    for r in role_rows:
        spec = specs[str(r["name"])]
        members = [p for p in people if p["role"] == r["name"]]
        last_uses = [p["last_use"] for p in members if p["last_use"] is not None]
        expires = spec.get("expires")
        custom.append(
            {
                "name": str(r["name"]),
                **_grants(spec),
                "state": "expired" if expires is not None and now >= expires else "active",
                "principals": [p["name"] for p in members],
                "last_use": max(last_uses) if last_uses else None,
                "entries_since_review": sum(p["entries_since_review"] for p in members),
                "denied_since_review": sum(p["denied_since_review"] for p in members),
            }
        )
    return people, custom


def _grants(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "actions": spec.get("actions"),
        "kinds": spec.get("kinds"),
        "fields": spec.get("fields"),
        "purposes": spec.get("purposes"),
        "role_expires": spec.get("expires"),
    }


def activity(conn: Connection, name: str, since: tuple[int, str] | None) -> dict[str, Any]:
    """A principal's last entry's time, and its entries (and denials among them) after
    the review entry ``since`` = (seq, ts), or ever: ranges of the ``(actor, ts)``
    index, so the cost follows that principal's entries, not the log's length."""
    last_use = conn.execute(select(func.max(log.c.ts)).where(log.c.actor == name)).scalar()
    stmt = select(func.count()).select_from(log).where(log.c.actor == name)
    if since is not None:
        stmt = stmt.where(log.c.ts >= since[1], log.c.seq > since[0])
    entries = int(conn.execute(stmt).scalar_one())
    denied = int(conn.execute(stmt.where(log.c.outcome == "denied")).scalar_one())
    return {
        "last_use": last_use,
        "entries_since_review": entries,
        "denied_since_review": denied,
    }
