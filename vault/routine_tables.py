"""The privacy routine's tables (docs/requests.md): customers' requests, the answer
policy, consent history and change notices. Additive tables in the data store's
metadata (created at open where missing: ``store.ADDITIVE_TABLES``); every row carries
``seq`` and ``auth`` (vault/rowauth.py, docs/rows.md).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text

from .store import metadata

__all__ = [
    "ROUTINE_SPECS",
    "ROUTINE_TABLES",
    "ROUTINE_TARGETS",
    "consents",
    "notices",
    "request_policy",
    "requests",
]

requests = Table(
    "sv_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    # Null once the customer is shredded: the request's tombstone (vault/tombstone.py).
    Column("customer_id", String(32), nullable=True, index=True),
    Column("type", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("opened", String(32), nullable=False),
    Column("due", String(32), nullable=False),
    Column("closed", String(32), nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("reason", Text, nullable=True),
    Column("receipt", Text, nullable=True),
    # The note sealed under the customer's DEK version ``note_dek`` (vault/sealing.py).
    Column("note", LargeBinary, nullable=True),
    Column("note_dek", Integer, nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
    Index("ix_sv_requests_state", "state", "due"),
)

request_policy = Table(
    "sv_request_policy",
    metadata,
    Column("type", String(32), primary_key=True),
    Column("days", Integer, nullable=False),
    Column("changed", String(32), nullable=False),
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

consents = Table(
    "sv_consent_history",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("customer_id", String(32), nullable=False, index=True),
    Column("consent", Text, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("ts", String(32), nullable=False),
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

notices = Table(
    "sv_notices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("customer_id", String(32), nullable=False, index=True),
    Column("batch", String(32), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("effective", String(32), nullable=False),
    Column("prepared", String(32), nullable=False),
    Column("delivered", String(32), nullable=True),
    Column("channel", String(16), nullable=True),
    Column("objected", String(32), nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("auth", String(64), nullable=True),
)

ROUTINE_TABLES = (requests, request_policy, consents, notices)


def _text(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, "t") for name in names)


#: the routine tables' authenticated columns (vault/rowauth.py ``SPECS``, docs/rows.md);
#: ``d``: the SHA-256 of a sealed note, or null
ROUTINE_SPECS: dict[str, tuple[tuple[str, str], ...]] = {
    "sv_requests": (
        *_text("id", "customer_id", "type", "channel", "state", "opened", "due", "closed"),
        *_text("outcome", "reason", "receipt"),
        ("note_dek", "i"),
        ("note", "d"),
    ),
    "sv_request_policy": (("type", "t"), ("days", "i"), ("changed", "t")),
    "sv_consent_history": _text("id", "customer_id", "consent", "channel", "actor", "ts"),
    "sv_notices": (
        *_text("id", "customer_id", "batch", "reason", "recipient", "effective", "prepared"),
        *_text("delivered", "channel", "objected"),
    ),
}
#: the log ``target`` prefix naming each routine table's rows (docs/rows.md)
ROUTINE_TARGETS = {
    "sv_requests": "request:",
    "sv_request_policy": "request-policy:",
    "sv_consent_history": "consent:",
    "sv_notices": "notice:",
}
