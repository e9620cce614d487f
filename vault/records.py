"""Records: store, update, delete, read and list, each one logged transaction.

Batch first (DESIGN §5): ``put_many`` and ``get_many`` do one transaction and one
``executemany``; the single forms are batches of one. Plaintext is sealed and opened
only by :mod:`.sealing`, and what a role reads is cut to its field allow-list by
``Role.visible``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import RowMapping, bindparam, delete

from ..keys import CustomerKeys
from . import ids
from .actor import Actor, subject_tag
from .blindindex import drop_records, index_records
from .context import Tx, VaultContext
from .errors import TamperError, record_ciphertext
from .inputs import (
    check_batch,
    check_customer_id,
    check_limit,
    check_record_id,
    decode_cursor,
    encode_cursor,
)
from .log import Event
from .model import Page, Record
from .rowauth import (
    check_records,
    record_tagger,
    records_select,
    refusal_error,
    update_rows,
)
from .schema import check_name, encode_fields, removed_by_update
from .sealing import AAD_V, envelope, open_fields, record_version, seal_records
from .store import records

__all__ = ["PutItem", "delete_record", "get_many", "list_records", "put_many", "update_record"]

PutItem = tuple[str, str, Mapping[str, Any]]


def put_many(
    ctx: VaultContext, actor: Actor, items: Sequence[PutItem], *, purpose: str
) -> list[str]:
    """Store records ``(customer_id, kind, fields)`` in one transaction and one
    ``executemany``; one log entry per record. All or nothing: an undeclared kind or
    field (:class:`SchemaError`), a purpose not declared or not allowed, a field
    outside the role's allow-list (:class:`AccessDeniedError`), or an unknown or
    shredded customer stores none of them."""
    check_batch(items)
    check_name("purpose", purpose)
    plaintexts: list[bytes] = []
    kinds_of: list[str] = []
    field_names: list[list[str]] = []
    by_customer: dict[str, list[int]] = defaultdict(list)
    fields_by_kind: dict[str, set[str]] = defaultdict(set)
    for i, item in enumerate(items):
        customer_id, kind, fields = item
        check_customer_id(customer_id)
        spec = ctx.kind(kind)
        plaintexts.append(encode_fields(spec, fields))
        kinds_of.append(kind)
        names = sorted(fields)
        field_names.append(names)
        fields_by_kind[kind].update(names)
        by_customer[customer_id].append(i)
    rids = ids.new_ids(ids.RECORD, len(items))
    cids = list(by_customer)
    now = ctx.now()

    def seal(keys: Mapping[str, CustomerKeys], only: Sequence[str]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for cid in only:
            idx = by_customer[cid]
            blobs = seal_records(keys[cid], [(rids[i], kinds_of[i], 1, plaintexts[i]) for i in idx])
            out.update(zip(idx, blobs, strict=True))
        return out

    keys = ctx.keys.customer_keys(cids)
    sealed = seal(keys, [c for c in cids if c in keys])

    def work(tx: Tx) -> list[str]:
        only = keys.get(cids[0]) if len(cids) == 1 else None
        for kind, names in fields_by_kind.items():
            role = actor.gate(
                tx.conn,
                "write",
                "record.put",
                kind=kind,
                purpose=purpose,
                subject=subject_tag(only),
            )
            actor.deny_fields(role, kind, sorted(names), "record.put", purpose, subject_tag(only))
        states = actor.customer_states(tx.conn, cids, "record.put", purpose)
        stale = [c for c in cids if c not in keys or keys[c].current.version != states[c]]
        if stale:
            # Rotated by another process since we sealed: reload, seal those again.
            ctx.keys.forget(stale)
            fresh = ctx.keys.customer_keys(stale)
            keys.update(fresh)
            sealed.update(seal(fresh, stale))
        rows = []
        events = []
        first = tx.next_seq()
        record_tag = record_tagger(ctx.keys.row_auth)
        details: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        for i, (cid, _kind, _fields) in enumerate(items):
            ck = keys[cid]
            dv = ck.current.version
            tag = record_tag(rids[i], cid, kinds_of[i], 1, dv, first + i)
            rows.append((rids[i], cid, kinds_of[i], 1, dv, sealed[i], now, now, 2, first + i, tag))
            events.append(
                actor.event(
                    "record.put",
                    subject=ck.subject_tag.hex(),
                    record=rids[i],
                    purpose=purpose,
                    detail=_detail(details, kinds_of[i], field_names[i]),
                )
            )
        ctx.data.insert_many(tx.conn, records, rows)
        searchable = ((r, c, k, f) for r, (c, k, f) in zip(rids, items, strict=True))
        index_records(tx.conn, ctx.keys.blind_index, ctx.kind, searchable)
        tx.log(*events)
        return rids

    return ctx.transact(work)


def update_record(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    record_id: str,
    fields: Mapping[str, Any],
    *,
    purpose: str,
) -> Record:
    """Merge ``fields`` into a record (a ``None`` value is stored as null, except for
    a field no longer writable — deprecated, or dropped from the kind — which it
    removes; such fields are otherwise kept as stored) and re-encrypt it under the
    customer's current key; returns the new record with the
    fields this role may read — only the fields it wrote when it may write but not
    read the record (an update is never a way to read)."""
    check_customer_id(customer_id)
    check_record_id(record_id)
    check_name("purpose", purpose)

    def work(tx: Tx) -> Record:
        row = _record_rows(
            ctx, actor, tx, [(customer_id, record_id)], purpose, "record.update", "write"
        )[0]
        kind = str(row["kind"])
        role = actor.current_role(tx.conn, "record.update")
        subject = ctx.subject_of(customer_id)
        actor.deny_fields(role, kind, sorted(fields), "record.update", purpose, subject)
        keys = ctx.keys.customer_keys([customer_id])
        old = _decrypt(ctx, actor, keys, customer_id, record_id, row, purpose, "record.update")
        spec = ctx.kind(kind)
        # Fields no longer writable (deprecated or dropped from the kind) that the record
        # holds are kept as they are, or removed by setting them to None.
        removed = removed_by_update(spec, fields, old)
        written = {k: v for k, v in fields.items() if k not in removed}
        encode_fields(spec, written)  # what the update writes must be writable
        merged = {k: v for k, v in {**old, **written}.items() if k not in removed}
        plaintext = encode_fields(spec, merged, kept=old.keys())
        ck = keys[customer_id]
        env = ck.current
        version = int(row["version"]) + 1
        (blob,) = seal_records(ck, [(record_id, kind, version, plaintext)])
        now = ctx.now()
        change = {
            "version": version,
            "dek_version": env.version,
            "ciphertext": blob,
            "aad_v": AAD_V,
            "updated": now,
        }
        update_rows(tx.conn, ctx.keys.row_auth, "sv_records", {record_id: change}, tx.next_seq())
        index_records(
            tx.conn,
            ctx.keys.blind_index,
            ctx.kind,
            [(record_id, customer_id, kind, merged)],
            replace=True,
        )
        tx.log(
            actor.event(
                "record.update",
                subject=ck.subject_tag.hex(),
                record=record_id,
                purpose=purpose,
                detail={"kind": kind, "fields": sorted(fields), "version": version},
            )
        )
        may_read = role.denial("read", now=now, kind=kind, purpose=purpose) is None
        shown = merged if may_read else {k: merged[k] for k in fields if k in merged}
        visible = role.visible(kind, shown)
        return Record(record_id, customer_id, kind, visible, version, str(row["created"]), now)

    return ctx.transact(work)


def delete_record(
    ctx: VaultContext, actor: Actor, customer_id: str, record_id: str, *, purpose: str
) -> None:
    """Delete one record (its ciphertext row). Logged as ``record.delete``."""
    check_customer_id(customer_id)
    check_record_id(record_id)
    check_name("purpose", purpose)

    def work(tx: Tx) -> None:
        row = _record_rows(
            ctx, actor, tx, [(customer_id, record_id)], purpose, "record.delete", "delete"
        )[0]
        tx.conn.execute(delete(records).where(records.c.id == record_id))
        drop_records(tx.conn, [record_id])
        tag = ctx.subject_of(customer_id)
        tx.log(
            actor.event(
                "record.delete",
                subject=tag,
                record=record_id,
                purpose=purpose,
                detail={"kind": str(row["kind"])},
            )
        )

    ctx.transact(work)


def get_many(
    ctx: VaultContext, actor: Actor, pairs: Sequence[tuple[str, str]], *, purpose: str
) -> list[Record]:
    """Read records ``(customer_id, record_id)``, in order, in one transaction with
    one log entry per record. No data is returned unless the entries commit. A role
    with a field allow-list gets only those fields; the entry names them."""
    check_batch(pairs)
    check_name("purpose", purpose)
    for cid, rid in pairs:
        check_customer_id(cid)
        check_record_id(rid)
    return ctx.transact(lambda tx: _read_records(ctx, actor, tx, pairs, purpose, "record.get"))


def list_records(
    ctx: VaultContext,
    actor: Actor,
    customer_id: str,
    *,
    purpose: str,
    kind: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Page[Record]:
    """Every record of a customer that may be used for ``purpose`` (optionally of one
    kind), oldest first; one log entry per record returned (one if none). With
    ``limit``/``after``: at most ``limit`` of them after the cursor ``after``, and
    ``Page.next`` continues (only the page is decrypted and logged)."""
    check_customer_id(customer_id)
    check_name("purpose", purpose)
    size = check_limit(limit)
    last = None if after is None else decode_cursor(after, (str, str))
    if kind is not None:
        ctx.kind(kind)  # SchemaError for an undeclared kind

    def work(tx: Tx) -> Page[Record]:
        subject = ctx.subject_of(customer_id)
        if kind is None and not any(purpose in k.purposes for k in ctx.kinds().values()):
            raise actor.purpose_refusal(purpose, "record.list", subject)
        role = actor.gate(
            tx.conn, "read", "record.list", kind=kind, purpose=purpose, subject=subject
        )
        actor.customer_states(tx.conn, [customer_id], "record.list", purpose)
        # Every row of the customer passes its checks before its kind picks what is
        # listed: a forged kind neither hides a record nor shows one (TamperError). A
        # page checks them all too (a customer's records are few); only the page is
        # decrypted and logged.
        stmt = records_select().where(records.c.customer_id == customer_id)
        fetched = tx.conn.execute(stmt.order_by(records.c.created, records.c.id)).all()
        bad = check_records(ctx.keys.row_auth, fetched)
        if bad:
            raise actor.tamper_refusal(refusal_error(bad), "record.list", purpose=purpose)
        rows = [r._mapping for r in fetched]
        if last is not None:
            rows = [r for r in rows if (str(r["created"]), str(r["id"])) > (last[0], last[1])]
        usable = [
            r
            for r in rows
            if (kind is None or r["kind"] == kind)
            and purpose in ctx.kind(str(r["kind"])).purposes
            and role.denial("read", now="", kind=str(r["kind"]), purpose=purpose) is None
        ]
        more = size is not None and len(usable) > size
        usable = usable[:size] if size is not None else usable
        if not usable:
            tag = ctx.subject_of(customer_id)
            tx.log(actor.event("record.list", subject=tag, purpose=purpose, detail={"count": 0}))
            return Page()
        pairs = [(customer_id, str(r["id"])) for r in usable]
        found = _read_records(ctx, actor, tx, pairs, purpose, "record.list")
        tail = usable[-1]
        cursor = encode_cursor(str(tail["created"]), str(tail["id"])) if more else None
        return Page(found, cursor)

    return ctx.transact(work)


def _record_rows(
    ctx: VaultContext,
    actor: Actor,
    tx: Tx,
    pairs: Sequence[tuple[str, str]],
    purpose: str,
    log_action: str,
    action: str = "read",
) -> list[RowMapping]:
    """The rows for ``pairs``, after the customer, role and purpose checks."""
    cids = list(dict.fromkeys(c for c, _ in pairs))
    actor.current_role(tx.conn, log_action)
    actor.customer_states(tx.conn, cids, log_action, purpose)
    fetched = tx.conn.execute(
        records_select().where(records.c.id.in_(bindparam("ids", expanding=True))),
        {"ids": list(dict.fromkeys(r for _, r in pairs))},
    ).all()
    rows = {str(r.id): r._mapping for r in fetched}
    out = []
    for cid, rid in pairs:
        row = rows.get(rid)
        if row is None or row["customer_id"] != cid:
            raise actor.not_found(log_action, rid, purpose=purpose)
        out.append(row)
    # The rows pass their checks (authenticator and freshness, read in the same
    # query) before the gate reads their kinds: a kind forged in the data store
    # decides nothing (it is a logged TamperError, not a denial).
    bad = check_records(ctx.keys.row_auth, fetched)
    if bad:
        raise actor.tamper_refusal(refusal_error(bad), log_action, purpose=purpose)
    checked: set[str] = set()
    for cid, row in zip((c for c, _ in pairs), out, strict=True):
        kind = str(row["kind"])
        if kind not in checked:
            subject = ctx.subject_of(cid)
            actor.gate(tx.conn, action, log_action, kind=kind, purpose=purpose, subject=subject)
            checked.add(kind)
    return out


def _decrypt(
    ctx: VaultContext,
    actor: Actor,
    keys: dict[str, CustomerKeys],
    cid: str,
    rid: str,
    row: RowMapping,
    purpose: str,
    action: str,
) -> dict[str, Any]:
    """A record's fields. Its row passed its checks, so a ciphertext that does not
    open under the AAD the row names (an older ciphertext of the record written back,
    or bytes from elsewhere) was put there by someone else: a logged
    :class:`TamperError`, nothing served."""
    env = envelope(ctx.keys, keys, cid, int(row["dek_version"]))
    kind, blob = str(row["kind"]), bytes(row["ciphertext"])
    try:
        with record_ciphertext(rid):
            return open_fields(env, keys[cid], rid, kind, record_version(row), blob)
    except TamperError as error:
        subject = keys[cid].subject_tag.hex()
        raise actor.tamper_refusal(error, action, subject=subject, purpose=purpose) from None


def _read_records(
    ctx: VaultContext,
    actor: Actor,
    tx: Tx,
    pairs: Sequence[tuple[str, str]],
    purpose: str,
    action: str,
) -> list[Record]:
    rows = _record_rows(ctx, actor, tx, pairs, purpose, action)
    role = actor.current_role(tx.conn, action)
    keys = ctx.keys.customer_keys(list(dict.fromkeys(c for c, _ in pairs)))
    result: list[Record] = []
    events: list[Event] = []
    details: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for (cid, rid), row in zip(pairs, rows, strict=True):
        kind = str(row["kind"])
        fields = role.visible(kind, _decrypt(ctx, actor, keys, cid, rid, row, purpose, action))
        result.append(
            Record(
                rid,
                cid,
                kind,
                fields,
                int(row["version"]),
                str(row["created"]),
                str(row["updated"]),
            )
        )
        events.append(
            actor.event(
                action,
                subject=keys[cid].subject_tag.hex(),
                record=rid,
                purpose=purpose,
                detail=_detail(details, kind, sorted(fields)),
            )
        )
    tx.log(*events)
    return result


def _detail(
    shared: dict[tuple[str, tuple[str, ...]], dict[str, Any]], kind: str, names: list[str]
) -> dict[str, Any]:
    """The log detail ``{"kind", "fields"}`` of one record in a batch, one mapping per
    distinct value, so the log encodes each once (log.append)."""
    key = (kind, tuple(names))
    detail = shared.get(key)
    if detail is None:
        detail = shared[key] = {"kind": kind, "fields": names}
    return detail
