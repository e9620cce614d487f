"""The privacy routine's rows (docs/requests.md): customers' requests and the answer
deadlines, consent history, change notices. Read only after their checks (vault/rowauth.py:
a forged, back-dated or rolled-back row is a :class:`TamperError`), written only
authenticated; operations (vault/requests.py, vault/notices.py), the subject report, the
handover export and the audit report share them from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select

from ..keys.rowauth import RowAuth
from . import ids
from .clock import format_ts, parse_ts
from .errors import SchemaError, TamperError
from .inputs import check_text
from .routine_tables import consents, notices, request_policy, requests
from .rowauth import insert_rows, require
from .store import log

__all__ = [
    "CHANNELS",
    "DEFAULT_DAYS",
    "NOTICE_REASONS",
    "OUTCOMES",
    "POLICY_BASIS",
    "REQUEST_TYPES",
    "Notice",
    "Request",
    "check_channel",
    "check_choice",
    "consent_history",
    "consent_in_force",
    "due_date",
    "missing_requests",
    "notice_refusals",
    "policy_days",
    "request_counts",
    "write_consent",
]

REQUEST_TYPES = ("access", "correction", "erasure", "consent-withdrawal", "complaint")
CHANNELS = ("phone", "email", "web", "in-person")
OUTCOMES = ("fulfilled", "refused", "partial")
NOTICE_REASONS = ("transfer", "new-purpose")
#: the answer deadline of every request type unless the vault's policy says otherwise
DEFAULT_DAYS = 30
POLICY_BASIS = (
    "GB/T 35273-2020 §8.7: respond to personal-information requests within 30 days; "
    "GDPR Art. 12(3): within one month"
)
#: the channel a consent given at the customer's creation is recorded with
AT_CREATION = "at-creation"


def check_choice(what: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else :class:`SchemaError` naming them."""
    if not isinstance(value, str) or value not in allowed:
        raise SchemaError(f"{what} must be one of {', '.join(allowed)}")
    return value


def check_channel(value: object) -> str:
    return check_choice("the channel", value, CHANNELS)


@dataclass(frozen=True, slots=True)
class Request:
    """A customer's request as the desk shows it (no personal data: the note stays
    sealed). ``customer`` is None once the customer was shredded (its tombstone)."""

    id: str
    customer: str | None
    type: str
    channel: str
    state: str
    opened: str
    due: str
    closed: str | None
    outcome: str | None
    reason: str | None
    receipt: Mapping[str, Any] | None
    has_note: bool
    overdue: bool

    @property
    def in_time(self) -> bool | None:
        """Closed by its due date (None while open)."""
        return None if self.closed is None else self.closed <= self.due

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer,
            "type": self.type,
            "channel": self.channel,
            "state": self.state,
            "opened": self.opened,
            "due": self.due,
            "closed": self.closed,
            "outcome": self.outcome,
            "reason": self.reason,
            "receipt": None if self.receipt is None else dict(self.receipt),
            "has_note": self.has_note,
            "overdue": self.overdue,
            "in_time": self.in_time,
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], now: str) -> Request:
        state = str(row["state"])
        receipt = row["receipt"]
        return cls(
            id=str(row["id"]),
            customer=row["customer_id"],
            type=str(row["type"]),
            channel=str(row["channel"]),
            state=state,
            opened=str(row["opened"]),
            due=str(row["due"]),
            closed=row["closed"],
            outcome=row["outcome"],
            reason=row["reason"],
            receipt=None if receipt is None else json.loads(receipt),
            has_note=row["note"] is not None,
            overdue=state == "open" and now > str(row["due"]),
        )


def policy_days(conn: Connection, auth: RowAuth) -> dict[str, int]:
    """Days to answer, per request type: the vault's checked policy rows over the
    defaults (:data:`DEFAULT_DAYS`)."""
    rows = [r._mapping for r in conn.execute(select(request_policy))]
    require(conn, auth, request_policy.name, rows)
    days = dict.fromkeys(REQUEST_TYPES, DEFAULT_DAYS)
    days.update({str(r["type"]): int(r["days"]) for r in rows if r["type"] in days})
    return days


def due_date(opened: str, days: int) -> str:
    return format_ts(parse_ts(opened) + timedelta(days=days))


def missing_requests(conn: Connection, rows: Sequence[Mapping[Any, Any]]) -> None:
    """:class:`TamperError` if a request the log opened has no row (deleted by hand):
    the log's targets ``request:<id>`` (an index range) against the table's ids."""
    opened = {
        str(t)[len("request:") :]
        for (t,) in conn.execute(
            select(log.c.target)
            .where(log.c.target >= "request:", log.c.target < "request;")
            .distinct()
        )
    }
    gone = sorted(opened - {str(r["id"]) for r in rows})
    if gone:
        raise TamperError(
            f"request {gone[0]} is in the log but its row is gone from sv_requests: it was "
            "deleted outside the vault (docs/requests.md)",
            table=requests.name,
            row=gone[0],
            reason="missing",
        )


def request_counts(conn: Connection, auth: RowAuth, now: str) -> dict[str, int]:
    """The audit report's figures: open, overdue, closed in time, closed late (every
    row checked first, none missing)."""
    rows = [r._mapping for r in conn.execute(select(requests))]
    require(conn, auth, requests.name, rows)
    missing_requests(conn, rows)
    shown = [Request.from_row(r, now) for r in rows]
    return {
        "open": sum(r.state == "open" for r in shown),
        "overdue": sum(r.overdue for r in shown),
        "closed_in_time": sum(r.in_time is True for r in shown),
        "closed_late": sum(r.in_time is False for r in shown),
    }


# -- consent history ----------------------------------------------------------------------


def write_consent(
    conn: Connection,
    auth: RowAuth,
    customer: Mapping[Any, Any],
    consent: Mapping[str, bool],
    *,
    channel: str,
    actor: str,
    ts: str,
    seq: int,
) -> str:
    """Add a consent change to the customer's history (stamped with ``seq``, the
    ``customer.consent`` entry); a customer without history first gets the consent it
    held until now as its first entry (``at-creation``: from before consent history,
    or from ``add_customer``). Returns the change's id."""
    cid = str(customer["id"])
    found = conn.execute(select(consents.c.id).where(consents.c.customer_id == cid).limit(1))
    rows = []
    if found.first() is None:
        rows.append(
            {
                "id": ids.new_id(ids.CONSENT),
                "customer_id": cid,
                "consent": str(customer["consent"]),
                "channel": AT_CREATION,
                "actor": "vault",
                "ts": str(customer["created"]),
            }
        )
    change = ids.new_id(ids.CONSENT)
    rows.append(
        {
            "id": change,
            "customer_id": cid,
            "consent": json.dumps(dict(consent), sort_keys=True),
            "channel": channel,
            "actor": check_text(actor, "an actor name", max_chars=200),
            "ts": ts,
        }
    )
    insert_rows(conn, auth, consents.name, rows, seq)
    return change


def consent_history(
    conn: Connection, auth: RowAuth, customer: Mapping[Any, Any]
) -> list[dict[str, Any]]:
    """The customer's consent changes, oldest first, each ``{ts, actor, channel,
    consent}``; without stored history, the consent held since creation as one entry.
    The newest entry must agree with the customer row (itself checked by the caller):
    a history edited or cut outside the vault is a :class:`TamperError`."""
    rows: list[Mapping[Any, Any]] = [
        r._mapping
        for r in conn.execute(
            select(consents)
            .where(consents.c.customer_id == str(customer["id"]))
            .order_by(consents.c.seq, consents.c.ts)
        )
    ]
    require(conn, auth, consents.name, rows)
    if not rows:
        rows = [
            {
                "ts": customer["created"],
                "actor": "vault",
                "channel": AT_CREATION,
                "consent": customer["consent"],
            }
        ]
    elif json.loads(rows[-1]["consent"]) != json.loads(customer["consent"]):
        raise TamperError(
            f"the consent history of {customer['id']} does not end in the consent the "
            "customer holds: a change was removed outside the vault",
            table=consents.name,
            row=str(rows[-1]["id"]),
            reason="missing",
        )
    return [
        {
            "ts": str(r["ts"]),
            "actor": str(r["actor"]),
            "channel": str(r["channel"]),
            "consent": json.loads(r["consent"]),
        }
        for r in rows
    ]


def consent_in_force(
    conn: Connection, auth: RowAuth, customers: Sequence[Mapping[Any, Any]]
) -> dict[str, dict[str, Any]]:
    """For each customer row: the change that put its consent in force, ``{since,
    channel, by, consent}`` (from creation when it has no history). Rows checked."""
    wanted = [str(c["id"]) for c in customers]
    stmt = select(consents).where(consents.c.customer_id.in_(bindparam("ids", expanding=True)))
    rows = [r._mapping for r in conn.execute(stmt, {"ids": wanted})] if wanted else []
    require(conn, auth, consents.name, rows)
    newest: dict[str, Mapping[Any, Any]] = {}
    for r in rows:
        cid = str(r["customer_id"])
        if cid not in newest or (int(r["seq"]), str(r["ts"])) > (
            int(newest[cid]["seq"]),
            str(newest[cid]["ts"]),
        ):
            newest[cid] = r
    out = {}
    for c in customers:
        last = newest.get(str(c["id"]))
        out[str(c["id"])] = (
            {"since": str(c["created"]), "channel": AT_CREATION, "by": "vault"}
            if last is None
            else {
                "since": str(last["ts"]),
                "channel": str(last["channel"]),
                "by": str(last["actor"]),
            }
        )
    return out


# -- change notices -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A change notice prepared for one customer (docs/requests.md)."""

    id: str
    customer: str
    batch: str
    reason: str
    recipient: str
    effective: str
    prepared: str
    delivered: str | None
    channel: str | None
    objected: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer,
            "batch": self.batch,
            "reason": self.reason,
            "recipient": self.recipient,
            "effective": self.effective,
            "prepared": self.prepared,
            "delivered": self.delivered,
            "channel": self.channel,
            "objected": self.objected,
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Notice:
        return cls(
            **{
                k: row[k]
                for k in (
                    "id",
                    "batch",
                    "reason",
                    "recipient",
                    "effective",
                    "prepared",
                    "delivered",
                    "channel",
                    "objected",
                )
            },
            customer=str(row["customer_id"]),
        )


def notice_refusals(
    conn: Connection, auth: RowAuth, customer_ids: Sequence[str], now: str
) -> dict[str, str]:
    """Why each customer of ``customer_ids`` may not be handed over yet, by the newest
    transfer notice prepared for it: ``no_notice``, ``not_delivered``, ``objected`` or
    ``window_open`` (its effective date, the end of the objection window, is after
    ``now``). Customers missing from the answer may go. Rows checked first."""
    rows: list[Mapping[Any, Any]] = []
    stmt = select(notices).where(
        notices.c.reason == "transfer",
        notices.c.customer_id.in_(bindparam("ids", expanding=True)),
    )
    wanted = list(customer_ids)
    for start in range(0, len(wanted), 500):
        rows += [r._mapping for r in conn.execute(stmt, {"ids": wanted[start : start + 500]})]
    require(conn, auth, notices.name, rows)
    newest: dict[str, Mapping[Any, Any]] = {}
    for r in rows:
        cid = str(r["customer_id"])
        if cid not in newest or str(r["prepared"]) > str(newest[cid]["prepared"]):
            newest[cid] = r
    out = {}
    for cid in wanted:
        row = newest.get(cid)
        if row is None:
            out[cid] = "no_notice"
        elif row["objected"] is not None:
            out[cid] = "objected"
        elif row["delivered"] is None:
            out[cid] = "not_delivered"
        elif now < str(row["effective"]):
            out[cid] = "window_open"
    return out
