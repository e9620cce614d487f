"""The access log (DESIGN §6): hash-chained entries appended in the caller's transaction.

Entry (canonical JSON, keys sorted)::

    {"action","actor","detail","hash","outcome","prev","purpose","record","role",
     "seq","subject","ts","v"}

``hash = SHA-256(b"shredvault/log/v1\\n" + canonical(entry without "hash"))``, hex. The
stored ``body`` is exactly those hashed bytes; an export line is the body with the
``hash`` member spliced into its sorted place. See docs/log-format.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import Connection, select

from .canonical import canonical_text
from .clock import format_ts, parse_ts
from .store import DataStore, LogHead, log

__all__ = [
    "ENTRY_VERSION",
    "GENESIS",
    "HASH_PREFIX",
    "LOG_ACTIONS",
    "LOOKUP_COLUMNS",
    "Event",
    "LogEntry",
    "append",
    "body_columns",
    "encode_body",
    "entry_hash",
    "entry_target",
    "export_line",
    "iter_entries",
    "iter_rows",
]

ENTRY_VERSION = 1
GENESIS = "0" * 64
HASH_PREFIX = b"shredvault/log/v1\n"
OUTCOMES = frozenset({"ok", "denied", "error"})
#: the actions this version writes (docs/log-format.md); a query for another action
#: is refused unless the log holds it (a typo must not answer "nobody was touched")
LOG_ACTIONS = frozenset(
    [
        "audit.checkpoint",
        "audit.query",
        "audit.report",
        "auth.login",
        "backup.create",
        "backup.drill",
        "backup.list",
        "customer.add",
        "customer.consent",
        "customer.handover",
        "customer.hold",
        "customer.import",
        "customer.list",
        "customer.reconcile",
        "customer.refs",
        "customer.release",
        "customer.report",
        "customer.retain",
        "customer.show",
        "customer.shred",
        "customer.shred-intent",
        "handover.complete",
        "handover.export",
        "handover.import",
        "keys.change-passphrase",
        "keys.retire-epoch",
        "keys.rotate-dek",
        "keys.rotate-kek",
        "keys.status",
        "notice.deliver",
        "notice.object",
        "notice.prepare",
        "policy.set",
        "principal.add",
        "principal.list",
        "principal.revoke",
        "record.delete",
        "record.get",
        "record.list",
        "record.put",
        "record.update",
        "request.close",
        "request.list",
        "request.open",
        "request.policy",
        "role.add",
        "role.list",
        "role.review",
        "role.review-list",
        "schema.alter",
        "schema.declare",
        "schema.list",
        "vault.compact",
        "vault.create",
        "vault.decommission",
        "vault.decommission-intent",
        "vault.migrate",
        "vault.restore",
        "vault.unlock",
    ]
)

#: actions whose ``ok`` entries change a record row (target ``record:<record>``)
RECORD_CHANGES = frozenset({"record.put", "record.update", "record.delete"})
#: actions whose ``ok`` entries change a customer row (target ``subject:<subject tag>``)
CUSTOMER_CHANGES = frozenset(
    {
        "customer.add",
        "customer.consent",
        "customer.import",
        "customer.hold",
        "customer.release",
        "customer.retain",
        "customer.shred-intent",
        "customer.shred",
        "keys.rotate-dek",
    }
)
#: actions whose ``ok`` entries change a named row, and the detail member naming it
NAMED_CHANGES = {
    "principal.add": ("principal", "principal"),
    "principal.revoke": ("principal", "principal"),
    "role.add": ("role", "name"),
    "schema.declare": ("kind", "kind"),
    "schema.alter": ("kind", "kind"),
    "request.open": ("request", "request"),
    "request.close": ("request", "request"),
    "request.policy": ("request-policy", "type"),
    "notice.deliver": ("notice", "notice"),
    "notice.object": ("notice", "notice"),
}


@dataclass(frozen=True, slots=True)
class Event:
    """What happened, before it gets its place in the chain. ``detail`` holds names,
    counts and ids only: never personal data or secrets."""

    actor: str
    role: str
    action: str
    outcome: str = "ok"
    subject: str | None = None
    record: str | None = None
    purpose: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored entry: its seq, hash and the exact hashed bytes; read from a data
    store, also its lookup columns (:data:`LOOKUP_COLUMNS`, which verification checks
    against the body)."""

    seq: int
    hash: str
    body: bytes
    columns: tuple[Any, ...] | None = None

    def export_line(self) -> bytes:
        return export_line(self.body, self.hash)


#: the log table's columns outside the hashed body that repeat (or derive from) it
LOOKUP_COLUMNS = ("ts", "actor", "action", "subject", "record", "outcome", "target")


def entry_target(
    action: object, outcome: object, subject: object, record: object, detail: object
) -> str | None:
    """Which authenticated row an entry changed, as its ``target`` column holds it
    (docs/rows.md): ``record:<id>``, ``subject:<tag>``, ``principal:<name>``,
    ``role:<name>`` or ``kind:<name>``; None for an entry that changed none (reads,
    denials, errors). Freshness checks find the newest change of a row by it."""
    if outcome != "ok" or not isinstance(action, str):
        return None
    if action in RECORD_CHANGES:
        return f"record:{record}" if isinstance(record, str) else None
    if action in CUSTOMER_CHANGES:
        return f"subject:{subject}" if isinstance(subject, str) else None
    named = NAMED_CHANGES.get(action)
    if named is not None and isinstance(detail, Mapping):
        name = detail.get(named[1])
        return f"{named[0]}:{name}" if isinstance(name, str) else None
    return None


def body_columns(body: bytes) -> tuple[Any, ...]:
    """The :data:`LOOKUP_COLUMNS` an entry's body says (ValueError if malformed)."""
    raw = json.loads(body)
    if not isinstance(raw, dict):
        raise ValueError("entry is not an object")
    action, subject, record = raw.get("action"), raw.get("subject"), raw.get("record")
    outcome, detail = raw.get("outcome"), raw.get("detail")
    target = entry_target(action, outcome, subject, record, detail)
    return (raw.get("ts"), raw.get("actor"), action, subject, record, outcome, target)


def entry_hash(body: bytes) -> str:
    """The chain hash of an entry's canonical bytes (without ``hash``)."""
    return hashlib.sha256(HASH_PREFIX + body).hexdigest()


def export_line(body: bytes, digest: str) -> bytes:
    """Canonical JSON of the entry *with* ``hash``: ``hash`` sorts just before ``outcome``,
    the first key after the nested ``detail`` object, so the last ``,"outcome":"``
    in the body is the top-level one (quotes inside strings are always escaped)."""
    at = body.rindex(b',"outcome":"')
    return body[:at] + b',"hash":"' + digest.encode("ascii") + b'"' + body[at:]


def _timestamp(head: LogHead, now: datetime) -> tuple[str, int]:
    """The entry time and how far it was clamped (µs) so time never goes backwards."""
    ts = format_ts(now)
    if head.ts and ts < head.ts:
        behind = parse_ts(head.ts) - parse_ts(ts)
        return (
            head.ts,
            behind.days * 86_400_000_000 + behind.seconds * 1_000_000 + behind.microseconds,
        )
    return ts, 0


_BODY = (
    '{"action":%s,"actor":%s,"detail":%s,"outcome":%s,"prev":"%s","purpose":%s,'
    '"record":%s,"role":%s,"seq":%d,"subject":%s,"ts":"%s","v":1}'
)


def encode_body(
    ev: Event,
    seq: int,
    ts: str,
    prev: str,
    detail: Mapping[str, Any],
    text: dict[Any, str],
    detail_text: str | None = None,
) -> bytes:
    """Canonical JSON of an entry without ``hash``, built from a template in sorted key
    order (byte-identical to :func:`~vault.canonical.canonical` of the dict; tested).
    ``text`` memoizes JSON string encodings across a batch; ``detail_text``, when
    given, is ``canonical_text(detail)`` already made."""

    def enc(value: str | None) -> str:
        out = text.get(value)
        if out is None:
            out = "null" if value is None else encode_basestring(value)
            text[value] = out
        return out

    return (
        _BODY
        % (
            enc(ev.action),
            enc(ev.actor),
            detail_text if detail_text is not None else canonical_text(detail) if detail else "{}",
            enc(ev.outcome),
            prev,
            enc(ev.purpose),
            enc(ev.record),
            enc(ev.role),
            seq,
            enc(ev.subject),
            ts,
        )
    ).encode("utf-8")


def append(
    conn: Connection, store: DataStore, head: LogHead, events: Sequence[Event], now: datetime
) -> tuple[LogHead, list[LogEntry]]:
    """Chain ``events`` after ``head`` and insert them in one ``executemany``.

    Runs inside the caller's transaction (so the entries commit with the change they
    record) and updates the head row. Returns the new head and the entries written.
    """
    if not events:
        return head, []
    ts, clamped_us = _timestamp(head, now)
    seq, prev = head.seq, head.hash
    rows: list[tuple[Any, ...]] = []
    written: list[LogEntry] = []
    base = hashlib.sha256(HASH_PREFIX)
    text: dict[Any, str] = {}
    # Batches share one detail mapping between entries (records.put_many, get_many):
    # encode it once. Keyed by identity, which is stable while ``events`` holds them.
    details: dict[int, str] = {}
    for ev in events:
        seq += 1
        detail: Mapping[str, Any] = ev.detail
        if clamped_us:
            detail = {**detail, "clock_clamped_us": clamped_us}
            body = encode_body(ev, seq, ts, prev, detail, text)
        else:
            known = details.get(id(detail))
            if known is None:
                known = details[id(detail)] = canonical_text(detail) if detail else "{}"
            body = encode_body(ev, seq, ts, prev, detail, text, known)
        hasher = base.copy()
        hasher.update(body)
        digest = hasher.hexdigest()
        target = entry_target(ev.action, ev.outcome, ev.subject, ev.record, detail)
        rows.append(
            (
                seq,
                prev,
                digest,
                ts,
                ev.actor,
                ev.action,
                ev.subject,
                ev.record,
                ev.outcome,
                body,
                target,
            )
        )
        written.append(LogEntry(seq, digest, body))
        prev = digest
    store.insert_many(conn, log, rows)
    head = LogHead(seq, prev, ts)
    DataStore.set_head(conn, head)
    return head, written


def iter_entries(
    store: DataStore,
    *,
    since: int = 1,
    until: int | None = None,
    batch: int = 20000,
    columns: bool = False,
) -> Iterator[LogEntry]:
    """Stream stored entries in seq order, ``batch`` rows per read (flat memory);
    ``columns``: with their lookup columns, for verification."""
    extra = [log.c[name] for name in LOOKUP_COLUMNS] if columns else []
    cursor = since
    while True:
        upper = cursor + batch - 1 if until is None else min(until, cursor + batch - 1)
        if until is not None and cursor > until:
            return
        stmt = (
            select(log.c.seq, log.c.hash, log.c.body, *extra)
            .where(log.c.seq >= cursor, log.c.seq <= upper)
            .order_by(log.c.seq)
        )
        rows = store.read(lambda conn: conn.execute(stmt).all())  # noqa: B023
        if not rows:
            # A gap of a whole batch is possible in a tampered log: look past it once.
            rest = store.read(
                lambda conn: conn.execute(
                    select(log.c.seq).where(log.c.seq > upper).order_by(log.c.seq).limit(1)  # noqa: B023
                ).scalar()
            )
            if rest is None:
                return
            cursor = int(rest)
            continue
        for row in rows:
            seq, digest, body = row[0], row[1], row[2]
            # A tampered SQLite row can hold TEXT where bytes belong: verify it as bytes.
            raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
            yield LogEntry(int(seq), str(digest), raw, tuple(row[3:]) if columns else None)
        cursor = upper + 1


def iter_rows(
    store: DataStore,
    *,
    since: int = 1,
    until: int,
    batch: int = 20000,
    columns: bool = False,
) -> Iterator[list[tuple[Any, ...]]]:
    """Stored entries from ``since`` to ``until`` in seq order as batches of plain
    ``(seq, hash, body[, lookup columns])`` tuples, read through the driver's cursor
    (no SQLAlchemy row or :class:`LogEntry` per entry: at a million entries those cost
    more than verifying them). Values are as the driver returns them: a tampered row
    may hold any type, which the verifier's careful path handles."""
    names = ["seq", "hash", "body", *(LOOKUP_COLUMNS if columns else ())]

    def read(conn: Connection, low: int, high: int) -> list[tuple[Any, ...]]:
        quote = conn.dialect.identifier_preparer.quote
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"SELECT {', '.join(quote(n) for n in names)} FROM {quote(log.name)} "
            f"WHERE {quote('seq')} >= {mark} AND {quote('seq')} <= {mark} ORDER BY {quote('seq')}"
        )
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, (low, high))
            return list(cursor.fetchall())
        finally:
            cursor.close()

    cursor = since
    while cursor <= until:
        upper = min(until, cursor + batch - 1)
        rows = store.read(lambda conn: read(conn, cursor, upper))  # noqa: B023
        if rows:
            yield rows
            cursor = upper + 1
            continue
        # A gap of a whole batch is possible in a tampered log: look past it once.
        rest = store.read(
            lambda conn: conn.execute(
                select(log.c.seq).where(log.c.seq > upper).order_by(log.c.seq).limit(1)  # noqa: B023
            ).scalar()
        )
        if rest is None or int(rest) > until:
            return
        cursor = int(rest)
