"""Blind-index entries: the one place tags of searchable fields are made, written and
dropped (docs/search.md).

An entry of ``sv_search`` is ``(kind, field, tag, record_id, customer_id)`` for each
searchable field a record holds and each distinct normalized value in it, where
``tag`` is the first :data:`TAG_SIZE` bytes of ``HMAC-SHA-256(index key, aad(LABEL,
kind, field, normalized value))`` (keys/blindindex.py; ``aad`` length-prefixes each
part). Entries are written in the transaction that writes the record
(:func:`index_records`, from put, update and import), dropped with it
(:func:`drop_records`) and with a customer's tombstone (:func:`drop_customers`, from
vault/tombstone.py), and rebuilt for a kind whose searchable fields change
(vault/search.py). The data store is not trusted with them: a forged entry only names a
candidate, which find decrypts and compares; a deleted one hides a match.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    LargeBinary,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
)

from ..keys.blindindex import IndexKey
from ..keys.envelope import aad
from .normalize import normalize
from .schema import KindSpec
from .store import metadata

__all__ = [
    "LABEL",
    "TAG_SIZE",
    "IndexItem",
    "candidates",
    "drop_customers",
    "drop_kind",
    "drop_records",
    "ensure_search_table",
    "index_records",
    "query_tag",
    "search",
    "tag_message",
    "values_of",
]

LABEL = b"shredvault/search/v1"
#: bytes of the HMAC kept: 32 bits (docs/search.md, "Tag length")
TAG_SIZE = 4
_CHUNK = 500

#: The entries, one per record, searchable field and distinct normalized value. A
#: table of the data store's ``metadata`` (vault/store.py), so backups, restores and
#: new vaults carry it like the others; not authenticated (a forged entry only names a
#: candidate). Added after schema 3 as an additive table (:func:`ensure_search_table`).
search = Table(
    "sv_search",
    metadata,
    Column("kind", String(64), nullable=False),
    Column("field", String(64), nullable=False),
    Column("tag", LargeBinary, nullable=False),
    Column("record_id", String(32), nullable=False),
    Column("customer_id", String(32), nullable=False),
    Index("ix_sv_search_tag", "kind", "field", "tag"),
    Index("ix_sv_search_record", "record_id"),
    Index("ix_sv_search_customer", "customer_id"),
)

#: what :func:`index_records` indexes: (record id, customer id, kind, fields)
IndexItem = tuple[str, str, str, Mapping[str, Any]]


def tag_message(kind: str, field: str, normalized: str) -> bytes:
    """The bytes a tag is the HMAC of: ``aad(LABEL, kind, field, normalized value)``,
    each part UTF-8 and u32-big-endian length-prefixed."""
    return aad(LABEL, kind.encode(), field.encode(), normalized.encode("utf-8"))


def query_tag(key: IndexKey, kind: str, field: str, normalized: str) -> bytes:
    """The tag of one normalized value."""
    return key.tag(tag_message(kind, field, normalized))[:TAG_SIZE]


def values_of(value: object, normalizer: str) -> set[str]:
    """The normalized forms a stored field value is indexed under: a text value's, or
    each text item's of a list; other values (numbers, booleans, null) and empty forms
    give none."""
    items = value if isinstance(value, list) else [value]
    forms = {normalize(normalizer, item) for item in items if isinstance(item, str)}
    forms.discard("")
    return forms


def index_records(
    conn: Connection,
    key: IndexKey,
    spec_of: Callable[[str], KindSpec],
    items: Iterable[IndexItem],
    *,
    replace: bool = False,
) -> int:
    """Write the entries of ``items`` (records just written, their plaintext fields)
    in the caller's transaction; ``replace``: drop the records' entries first (an
    update). A kind without searchable fields costs a dictionary look-up per item and
    no SQL. Returns how many entries were written."""
    specs: dict[str, KindSpec] = {}
    rows: list[dict[str, Any]] = []
    touched: list[str] = []
    tag: Callable[[bytes], bytes] | None = None
    for rid, cid, kind, fields in items:
        spec = specs.get(kind)
        if spec is None:
            spec = specs[kind] = spec_of(kind)
        if not spec.searchable:
            continue
        touched.append(rid)
        if tag is None:
            tag = key.tagger()
        for field, normalizer in spec.searchable:
            for form in sorted(values_of(fields.get(field), normalizer)):
                digest = tag(tag_message(kind, field, form))[:TAG_SIZE]
                rows.append(
                    {
                        "kind": kind,
                        "field": field,
                        "tag": digest,
                        "record_id": rid,
                        "customer_id": cid,
                    }
                )
    if replace and touched:
        drop_records(conn, touched)
    if rows:
        conn.execute(insert(search), rows)
    return len(rows)


def ensure_search_table(conn: Connection) -> None:
    """Create ``sv_search`` (and its indexes) in a data store from before it."""
    search.create(conn, checkfirst=True)


def _delete_in(conn: Connection, column: Any, values: Sequence[str]) -> int:
    gone = 0
    for start in range(0, len(values), _CHUNK):
        part = list(values[start : start + _CHUNK])
        stmt = delete(search).where(column.in_(bindparam("v", expanding=True)))
        gone += int(conn.execute(stmt, {"v": part}).rowcount or 0)
    return gone


def drop_records(conn: Connection, record_ids: Sequence[str]) -> int:
    """Delete the entries of these records (an update rewrites them, a delete drops
    them). Returns how many were deleted."""
    return _delete_in(conn, search.c.record_id, list(record_ids))


def drop_customers(conn: Connection, customer_ids: Sequence[str]) -> int:
    """Delete every entry of these customers (their tombstones are written: shred,
    bulk shred, decommission, reconciliation, a restore's replay). Returns how many."""
    return _delete_in(conn, search.c.customer_id, list(customer_ids))


def drop_kind(conn: Connection, kind: str, fields: Collection[str] | None = None) -> int:
    """Delete a kind's entries (of ``fields`` only, when given). Returns how many."""
    stmt = delete(search).where(search.c.kind == kind)
    if fields is not None:
        if not fields:
            return 0
        stmt = stmt.where(search.c.field.in_(sorted(fields)))
    return int(conn.execute(stmt).rowcount or 0)


def candidates(conn: Connection, kind: str, field: str, tag: bytes) -> list[str]:
    """The record ids whose entries carry ``tag`` for ``kind``/``field`` (an index
    look-up on (kind, field, tag)): candidates, not matches."""
    stmt = select(search.c.record_id).where(
        search.c.kind == kind, search.c.field == field, search.c.tag == tag
    )
    return list(dict.fromkeys(str(r) for r in conn.execute(stmt).scalars()))
