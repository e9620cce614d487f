"""Answering inspectors: the breach-scope query (which customers and records an actor,
a role, an action or a window touched; ids and metadata only, never plaintext) and the
audit report (principals and roles, keys against policy, backups and the key-copy
clock, checkpoints, chain verification, shreds, holds, retention, denials).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from .access import BUILTIN_ROLES
from .actor import ADMIN, Actor
from .audit import format_public_key
from .backup import backup_list
from .cadence import routine_status
from .canonical import canonical, canonical_text
from .chain import verify_store
from .clock import format_ts
from .context import Tx, VaultContext
from .errors import SchemaError, TamperError
from .inputs import (
    check_known,
    check_limit,
    decode_cursor,
    encode_cursor,
    moment_text,
    parse_json,
)
from .log import GENESIS, LOG_ACTIONS
from .rotate import KeyPolicy, key_status
from .routine import request_counts
from .rowauth import authentic, sign
from .store import checkpoints, customers, log, meta, principals, roles
from .verify import Row

__all__ = ["audit_query", "audit_report", "normalize_time", "routine_section"]

_QUERY_LIMIT = 100_000


def audit_query(
    ctx: VaultContext,
    asker: Actor,
    *,
    actor: str | None = None,
    role: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    """The breach-scope question: which customers and records were touched (by an
    actor, a role, an action, an outcome, in a time window ``[since, until)``), with
    counts per action. Ids and metadata only. Logged as ``audit.query``.

    ``limit`` takes at most that many matching entries, in log order after the cursor
    ``after`` (keyset on ``seq``); ``next`` is the cursor for the following page, or
    None when no entry is left."""
    size = check_limit(limit)
    (after_seq,) = (0,) if after is None else decode_cursor(after, (int,))
    if outcome is not None and outcome not in {"ok", "denied", "error"}:
        raise SchemaError("outcome is one of ok, denied, error")
    if action is not None and action not in LOG_ACTIONS:
        logged = ctx.data.read(
            lambda conn: {str(a) for (a,) in conn.execute(select(log.c.action).distinct())}
        )
        check_known("action", [action], LOG_ACTIONS | logged)
    if role is not None and role not in BUILTIN_ROLES:
        custom = ctx.data.read(lambda conn: {str(r) for (r,) in conn.execute(select(roles.c.name))})
        # "none": the role logged for a caller that is no principal (a bad token)
        check_known("role", [role], {*BUILTIN_ROLES, "none"} | custom)
    if actor is not None:
        # Every name an entry can carry: principals (revoked ones too, and those only the
        # log still names), the administrator and the system's own actors.
        named = ctx.data.read(
            lambda conn: (
                {str(a) for (a,) in conn.execute(select(log.c.actor).distinct())}
                | {str(n) for (n,) in conn.execute(select(principals.c.name))}
            )
        )
        if actor not in named | {ADMIN}:
            check_known("actor", [actor], named | {ADMIN})
    since_ts = normalize_time("since", since)
    until_ts = normalize_time("until", until)
    filters = {
        k: v
        for k, v in {
            "actor": actor,
            "role": role,
            "action": action,
            "outcome": outcome,
            "since": since_ts,
            "until": until_ts,
            "limit": size,
            "after": after,
        }.items()
        if v is not None
    }
    stmt = select(log.c.seq, log.c.subject, log.c.record, log.c.action, log.c.ts, log.c.body)
    if actor is not None:
        stmt = stmt.where(log.c.actor == actor)
    if action is not None:
        stmt = stmt.where(log.c.action == action)
    if outcome is not None:
        stmt = stmt.where(log.c.outcome == outcome)
    if since_ts is not None:
        stmt = stmt.where(log.c.ts >= since_ts)
    if until_ts is not None:
        stmt = stmt.where(log.c.ts < until_ts)
    if after is not None:
        stmt = stmt.where(log.c.seq > after_seq)
    stmt = stmt.order_by(log.c.seq)
    cap = _QUERY_LIMIT if size is None else size
    if role is None:
        stmt = stmt.limit(cap + 1)
    # The role is inside the hashed body, not a column: stream the candidates and keep
    # those whose entry names the role, up to the limit (a cheap byte test first, then
    # the parsed field, since a detail could hold the same text).
    needle = None if role is None else b'"role":' + canonical({"r": role})[5:-1]

    def work(tx: Tx) -> list[Any]:
        asker.gate(tx.conn, "audit", "audit.query")
        kept: list[Any] = []
        result = tx.conn.execute(stmt, execution_options={"stream_results": True})
        for batch in result.partitions(5_000):
            for r in batch:
                if needle is not None and (
                    needle not in r.body or json.loads(r.body)["role"] != role
                ):
                    continue
                kept.append(r)
            if len(kept) > cap:
                result.close()
                break
        tx.log(asker.event("audit.query", detail={"filters": filters}))
        return kept

    rows = ctx.transact(work)
    truncated = len(rows) > cap
    rows = rows[:cap]
    per_action = Counter(str(r.action) for r in rows)
    tags = {str(r.subject) for r in rows if r.subject}
    known = ctx.keys.store.customers_for_tags([bytes.fromhex(t) for t in tags])
    by_tag = {tag.hex(): cid for tag, cid in known.items()}
    touched: dict[str, dict[str, Any]] = {}
    unlinked = 0
    for r in rows:
        if not r.subject:
            continue
        cid = by_tag.get(str(r.subject))
        if cid is None:
            unlinked += 1
            continue
        item = touched.setdefault(cid, {"customer": cid, "records": set(), "actions": Counter()})
        if r.record:
            item["records"].add(str(r.record))
        item["actions"][str(r.action)] += 1
    return {
        "filters": filters,
        "entries": len(rows),
        "truncated": truncated,
        "first_seq": rows[0].seq if rows else None,
        "last_seq": rows[-1].seq if rows else None,
        "per_action": dict(sorted(per_action.items())),
        "customers": [
            {
                "customer": v["customer"],
                "records": sorted(v["records"]),
                "actions": dict(sorted(v["actions"].items())),
            }
            for v in sorted(touched.values(), key=lambda x: str(x["customer"]))
        ],
        "entries_about_shredded_customers": unlinked,
        "next": encode_cursor(int(rows[-1].seq)) if truncated else None,
    }


def audit_report(
    ctx: VaultContext, actor: Actor, *, expiring_days: int = 30, full: bool = False
) -> dict[str, Any]:
    """One page for an inspector. Logged as ``audit.report``.

    The log's totals (shreds, denials, last logins) are running totals kept beside
    the log with the vault's authenticator, at a verified seq and hash: the report
    verifies and counts only the entries after them, and stores the new totals (so
    its cost follows the entries since the last report, not the log's length).
    ``full``: verify and count the whole log again (docs/decisions.md)."""
    # The report's own gate comes first: a refused report is logged as ``audit.report``,
    # not as whichever part of it (key status, backups) happened to be asked for first.
    actor.authorize("audit", "audit.report")
    now_dt = ctx.clock()
    now = format_ts(now_dt)
    soon = format_ts(now_dt + timedelta(days=expiring_days))
    policy = KeyPolicy()
    status = key_status(ctx, actor, policy)
    backup_rows = backup_list(ctx, actor)
    tally = None if full else _load_tally(ctx)
    start = None if tally is None else (tally.seq, tally.head)
    counted = _Tally.empty() if tally is None else tally
    verification = verify_store(
        ctx.data,
        vault_id=ctx.vault_id,
        public_key=ctx.public_key,
        after=start,
        columns=True,
        tap=counted.count,
    )
    if start is not None:
        verification.notes.append(
            f"entries up to seq {start[0]} were verified and counted by an earlier report "
            "(its totals carry the vault's authenticator); `shredvault audit verify` "
            "re-checks the whole log"
        )
    if not verification.ok:
        # Totals from an unverified stretch are worth nothing: count the log's columns
        # as before, and the report says the log fails.
        counted = _Tally.empty()

    def work(tx: Tx) -> dict[str, Any]:
        actor.gate(tx.conn, "audit", "audit.report")
        conn = tx.conn
        last_use = counted.logins
        if not verification.ok:
            last_use = dict(
                conn.execute(
                    select(log.c.actor, func.max(log.c.ts))
                    .where(log.c.action == "auth.login", log.c.outcome == "ok")
                    .group_by(log.c.actor)
                ).all()
            )
        # Every principal, role and listed customer row passes its checks first, else
        # a logged TamperError and no report: a forged row is never shown as authentic.
        listed, role_rows = actor.checked_principals_and_roles(conn, "audit.report")
        people = []
        for p in listed:
            expires = p["expires"]
            state = "revoked" if p["revoked"] else "active"
            if not p["revoked"] and expires is not None:
                state = "expired" if now >= expires else ("expiring" if soon >= expires else state)
            people.append(
                {
                    "name": p["name"],
                    "role": p["role"],
                    "expires": expires,
                    "state": state,
                    "last_login": last_use.get(p["name"]),
                }
            )
        custom_roles = []
        for r in role_rows:
            spec = json.loads(r["spec"])
            expires = spec.get("expires")
            spec["state"] = (
                "expired"
                if expires and now >= expires
                else "expiring"
                if expires and soon >= expires
                else "active"
            )
            custom_roles.append(spec)
        counts: dict[Any, Any] = dict(
            conn.execute(select(customers.c.state, func.count()).group_by(customers.c.state)).all()
        )
        # Ids only: the inspector sees who is held or overdue, never their details.
        held_rows = [
            r._mapping
            for r in conn.execute(
                select(customers).where(customers.c.legal_hold.is_(True)).order_by(customers.c.id)
            )
        ]
        past_rows = [
            r._mapping
            for r in conn.execute(
                select(customers)
                .where(customers.c.state == "active", customers.c.retain_until < now)
                .order_by(customers.c.id)
            )
        ]
        shown = {str(r["id"]): r for r in [*held_rows, *past_rows]}
        actor.check_customers(conn, list(shown.values()), "audit.report")
        held = [str(r["id"]) for r in held_rows]
        past = [str(r["id"]) for r in past_rows]
        if verification.ok:
            counted.seq, counted.head = verification.last_seq, verification.head
            _save_tally(conn, ctx, counted)
            shreds, denials = counted.shreds, counted.denials
        else:
            shreds = conn.execute(
                select(func.count())
                .select_from(log)
                .where(log.c.action == "customer.shred", log.c.outcome == "ok")
            ).scalar_one()
            denials = dict(
                conn.execute(
                    select(log.c.actor, func.count())
                    .where(log.c.outcome == "denied")
                    .group_by(log.c.actor)
                ).all()
            )
        n_checkpoints = conn.execute(select(func.count()).select_from(checkpoints)).scalar_one()
        desk = _request_desk(ctx, actor, tx, now)
        tx.log(actor.event("audit.report"))
        return {
            "principals": people,
            "roles": custom_roles,
            "customers": {
                "active": int(counts.get("active", 0)),
                "shredding": int(counts.get("shredding", 0)),
                "shredded": int(counts.get("shredded", 0)),
                "legal_hold": len(held),
                "past_retention": len(past),
            },
            "legal_hold_ids": held,
            "past_retention_ids": past,
            "shreds": int(shreds),
            "denials_by_actor": {str(k): int(v) for k, v in sorted(denials.items())},
            "checkpoints": int(n_checkpoints),
            "requests": desk,
        }

    body = ctx.transact(work)
    latest = ctx.latest_checkpoint()
    return {
        "type": "shredvault-audit-report",
        "v": 1,
        "vault": ctx.vault_id,
        "generated": now,
        **body,
        "keys": {
            **status.to_json(),
            "policy": {
                "max_kek_age_days": policy.max_kek_age_days,
                "max_dek_age_days": policy.max_dek_age_days,
            },
        },
        "backups": [b.to_json() for b in backup_rows],
        "log": {
            **verification.to_json(),
            "latest_checkpoint": None if latest is None else latest.to_json(),
            "public_key": format_public_key(ctx.public_key),
        },
        **routine_section(ctx),
    }


def _request_desk(ctx: VaultContext, actor: Actor, tx: Tx, now: str) -> dict[str, Any]:
    """The request desk's figures (docs/requests.md): open, overdue, closed in time and
    late; a forged, rolled-back or deleted request row refuses the report (logged)."""
    try:
        return request_counts(tx.conn, ctx.keys.row_auth, now)
    except TamperError as error:
        raise actor.tamper_refusal(error, "audit.report") from None


# -- the routine: restore drills and access reviews (issue 23, items 4 and 5) -----------


def routine_section(ctx: VaultContext) -> dict[str, Any]:
    """The report's ``routine``: the last restore drill and the last access review
    against their intervals, with a warning for each that is overdue."""
    status = routine_status(ctx)
    return {"routine": {**status.to_json(), "warnings": status.warnings()}}


_TALLY = "audit_tally"


@dataclass(slots=True)
class _Tally:
    """Running totals of the log up to entry ``seq`` (hash ``head``)."""

    seq: int
    head: str
    shreds: int
    denials: dict[str, int]
    logins: dict[str, str]

    @classmethod
    def empty(cls) -> _Tally:
        return cls(0, GENESIS, 0, {}, {})

    def count(self, batch: Sequence[Row]) -> None:
        """Add a batch of verified rows (seq, hash, body, ts, actor, action, subject,
        record, outcome, target): the lookup columns, which verification holds to the
        signed bodies."""
        denials, logins = self.denials, self.logins
        for row in batch:
            ts, who, action, outcome = row[3], str(row[4]), row[5], row[8]
            if outcome == "denied":
                denials[who] = denials.get(who, 0) + 1
            elif outcome == "ok":
                if action == "customer.shred":
                    self.shreds += 1
                elif action == "auth.login" and isinstance(ts, str) and ts > logins.get(who, ""):
                    logins[who] = ts

    def text(self) -> str:
        return canonical_text(
            {
                "denials": self.denials,
                "head": self.head,
                "logins": self.logins,
                "seq": self.seq,
                "shreds": self.shreds,
            }
        )


def _load_tally(ctx: VaultContext) -> _Tally | None:
    """The stored totals if their authenticator holds, else None (count afresh)."""
    stored = ctx.data.read(
        lambda conn: conn.execute(select(meta.c.v).where(meta.c.k == _TALLY)).scalar()
    )
    if stored is None:
        return None
    try:
        doc = parse_json(str(stored), what="the audit tally", fail=ValueError)
        body, seq, auth = doc["tally"], doc["seq"], doc["auth"]
        if not authentic(ctx.keys.row_auth, meta.name, {"k": _TALLY, "v": body, "seq": seq,
                                                          "auth": auth}):  # fmt: skip
            return None
        raw = json.loads(body)
        tally = _Tally(raw["seq"], raw["head"], raw["shreds"], raw["denials"], raw["logins"])
    except (ValueError, KeyError, TypeError):
        return None
    return tally if tally.seq == seq else None


def _save_tally(conn: Connection, ctx: VaultContext, tally: _Tally) -> None:
    body = tally.text()
    auth = sign(ctx.keys.row_auth, meta.name, {"k": _TALLY, "v": body}, tally.seq)
    value = canonical_text({"auth": auth, "seq": tally.seq, "tally": body})
    done = conn.execute(update(meta).where(meta.c.k == _TALLY).values(v=value)).rowcount
    if not done:
        conn.execute(insert(meta).values(k=_TALLY, v=value))


def normalize_time(name: str, value: str | None) -> str | None:
    """A window bound as the log stores times (fixed-width RFC 3339 UTC), so text
    comparison is time comparison; garbage is a SchemaError, never a silent filter."""
    return None if value is None else moment_text(value, what=f"--{name}")
