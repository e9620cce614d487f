"""Find records by a searchable field's value through the blind index (docs/search.md).

:func:`find` normalizes the query, looks its tag up in ``sv_search`` (an index probe),
checks the candidate record rows and their customers' rows, decrypts each candidate
and keeps only those whose field really holds the value (tags are truncated, and the
data store may hold forged entries), all inside the gate's logged transaction.
:func:`reindex_kind` rebuilds a kind's entries when its searchable fields change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, RowMapping, bindparam, select

from ..keys import CustomerKeys
from .actor import Actor
from .blindindex import IndexItem, candidates, drop_kind, index_records, query_tag, values_of
from .context import Tx, VaultContext
from .errors import NotSearchableError, SchemaError, TamperError, record_ciphertext
from .log import Event
from .model import Record
from .normalize import normalize
from .rowauth import check_records, records_select, refusal_error
from .schema import KindSpec, check_name
from .sealing import envelope, open_fields, record_version
from .store import customers, records

__all__ = ["MAX_QUERY_CHARS", "find", "reindex_kind"]

ACTION = "record.find"
#: the longest query accepted (a field holds at most 64 KiB)
MAX_QUERY_CHARS = 64 * 1024
_CHUNK = 500


def _query(spec: KindSpec, field: str, value: object) -> tuple[str, str]:
    """(normalizer, normalized query). Errors never show the value."""
    normalizer = spec.normalizer(field)
    if normalizer is None:
        shown = ", ".join(f for f, _n in spec.searchable) or "none"
        raise NotSearchableError(
            f"field {field} of kind {spec.name!r} is not searchable (searchable: {shown}; "
            f"make it so with `kind alter {spec.name} --searchable {field}=NORMALIZER`)"
        )
    if not isinstance(value, str):
        raise SchemaError(f"a search value must be text, not {type(value).__name__}")
    if len(value) > MAX_QUERY_CHARS:
        raise SchemaError(f"a search value may be at most {MAX_QUERY_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError("the search value is not valid Unicode text") from None
    wanted = normalize(normalizer, value)
    if not wanted:
        raise SchemaError(
            f"the search value is empty once normalized ({normalizer}): nothing can match it"
        )
    return normalizer, wanted


def find(
    ctx: VaultContext, actor: Actor, kind: str, field: str, value: str, *, purpose: str
) -> list[Record]:
    """The records of ``kind`` whose searchable ``field`` holds ``value`` (compared in
    its normalized form), oldest first, cut to the role's field allow-list. Needs
    ``read`` on the kind for ``purpose`` and the field in the role's allow-list (a
    logged denial otherwise). Logged as one ``record.find`` entry per record returned
    (one if none), each naming the kind, the field and the number of matches, never
    the value nor its tag. :class:`NotSearchableError` for a field not declared
    searchable, :class:`SchemaError` for a bad kind or value (neither logged);
    :class:`TamperError` (logged) for a candidate row that fails its checks."""
    check_name("kind", kind)
    check_name("field", field)
    check_name("purpose", purpose)
    spec = ctx.kind(kind)

    def work(tx: Tx) -> list[Record]:
        role = actor.gate(tx.conn, "read", ACTION, kind=kind, purpose=purpose)
        actor.deny_fields(role, kind, [field], ACTION, purpose, verb="search")
        # after the gate: a role that may not read the kind is not told its fields
        normalizer, wanted = _query(spec, field, value)
        tag = query_tag(ctx.keys.blind_index, kind, field, wanted)
        rows = _candidate_rows(ctx, actor, tx.conn, candidates(tx.conn, kind, field, tag), purpose)
        active = _active_customers(actor, tx.conn, rows, purpose)
        keys = ctx.keys.customer_keys(sorted(active))
        found: list[tuple[Record, str]] = []
        for row in rows:
            cid, rid = str(row["customer_id"]), str(row["id"])
            if cid not in keys or str(row["kind"]) != kind:
                continue
            fields = _open(ctx, actor, keys, row, purpose)
            if wanted not in values_of(fields.get(field), normalizer):
                continue  # a false candidate: a truncated tag's collision, or a forged entry
            shown = role.visible(kind, fields)
            version, created, updated = (
                int(row["version"]),
                str(row["created"]),
                str(row["updated"]),
            )
            record = Record(rid, cid, kind, shown, version, created, updated)
            found.append((record, keys[cid].subject_tag.hex()))
        tx.log(*_events(actor, found, kind, field, purpose))
        return [record for record, _subject in found]

    return ctx.transact(work)


def _candidate_rows(
    ctx: VaultContext, actor: Actor, conn: Connection, ids: Sequence[str], purpose: str
) -> list[RowMapping]:
    """The record rows of ``ids`` that exist, after their checks (a row that fails is
    a logged TamperError: a forged kind decides nothing), oldest first."""
    fetched: list[Row[Any]] = []
    for start in range(0, len(ids), _CHUNK):
        stmt = records_select().where(records.c.id.in_(bindparam("ids", expanding=True)))
        fetched += conn.execute(stmt, {"ids": list(ids[start : start + _CHUNK])}).all()
    bad = check_records(ctx.keys.row_auth, fetched)
    if bad:
        raise actor.tamper_refusal(refusal_error(bad), ACTION, purpose=purpose)
    rows = [r._mapping for r in fetched]
    return sorted(rows, key=lambda r: (str(r["created"]), str(r["id"])))


def _active_customers(
    actor: Actor, conn: Connection, rows: Sequence[RowMapping], purpose: str
) -> set[str]:
    """The customers of ``rows`` that are active, after their rows' checks."""
    cids = list(dict.fromkeys(str(r["customer_id"]) for r in rows))
    if not cids:
        return set()
    found = [
        r._mapping
        for r in conn.execute(
            select(customers).where(customers.c.id.in_(bindparam("ids", expanding=True))),
            {"ids": cids},
        )
    ]
    actor.check_customers(conn, found, ACTION, purpose)
    return {str(r["id"]) for r in found if r["state"] == "active"}


def _open(
    ctx: VaultContext,
    actor: Actor,
    keys: dict[str, CustomerKeys],
    row: RowMapping,
    purpose: str | None,
    action: str = ACTION,
) -> dict[str, Any]:
    """A candidate's fields (its row passed its checks: a ciphertext that does not
    open as that record is a logged TamperError)."""
    cid, rid, kind = str(row["customer_id"]), str(row["id"]), str(row["kind"])
    env = envelope(ctx.keys, keys, cid, int(row["dek_version"]))
    try:
        with record_ciphertext(rid):
            blob = bytes(row["ciphertext"])
            return open_fields(env, keys[cid], rid, kind, record_version(row), blob)
    except TamperError as error:
        subject = keys[cid].subject_tag.hex()
        raise actor.tamper_refusal(error, action, subject=subject, purpose=purpose) from None


def _events(
    actor: Actor, found: Sequence[tuple[Record, str]], kind: str, field: str, purpose: str
) -> list[Event]:
    count = len(found)
    if not found:
        detail = {"kind": kind, "field": field, "matches": 0}
        return [actor.event(ACTION, purpose=purpose, detail=detail)]
    return [
        actor.event(
            ACTION,
            subject=subject,
            record=record.id,
            purpose=purpose,
            detail={
                "kind": kind,
                "field": field,
                "fields": sorted(record.fields),
                "matches": count,
            },
        )
        for record, subject in found
    ]


def reindex_kind(ctx: VaultContext, actor: Actor, tx: Tx, spec: KindSpec, action: str) -> int:
    """Rebuild the entries of ``spec``'s kind in the caller's transaction (a kind
    declared or altered with other searchable fields): drop them all, then decrypt
    every record of the kind and index its searchable fields. Its record rows and the
    ciphertexts pass their checks first (a logged TamperError under ``action``
    otherwise). Returns how many entries were written."""
    drop_kind(tx.conn, spec.name)
    if not spec.searchable:
        return 0
    fetched = tx.conn.execute(records_select().where(records.c.kind == spec.name)).all()
    bad = check_records(ctx.keys.row_auth, fetched)
    if bad:
        raise actor.tamper_refusal(refusal_error(bad), action)
    rows = [r._mapping for r in fetched]
    keys = ctx.keys.customer_keys(sorted({str(r["customer_id"]) for r in rows}))
    items: list[IndexItem] = []
    for row in rows:
        cid = str(row["customer_id"])
        if cid in keys:  # a customer whose keys are gone has nothing to find
            fields = _open(ctx, actor, keys, row, None, action)
            items.append((str(row["id"]), cid, spec.name, fields))
    return index_records(tx.conn, ctx.keys.blind_index, lambda _kind: spec, items)
