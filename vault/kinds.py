"""The declared schema: record kinds, their fields and purposes (minimal collection)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select

from .actor import Actor
from .context import Tx, VaultContext
from .errors import SchemaError
from .rowauth import insert_rows, require, update_rows
from .schema import KindSpec, check_name
from .search import reindex_kind
from .store import kinds

__all__ = ["alter_kind", "declare_kind", "list_kinds"]


def declare_kind(
    ctx: VaultContext,
    actor: Actor,
    name: str,
    *,
    fields: Iterable[str],
    purposes: Iterable[str],
    searchable: Mapping[str, str] | None = None,
) -> KindSpec:
    """Declare (or redeclare) a record kind: the fields it may hold, the purposes it
    may be used for and the fields found by exact match (``searchable``: field ->
    normalizer, docs/search.md); returns it. The kind's blind-index entries are
    rebuilt in the same transaction (its records decrypted when it has searchable
    fields). Needs ``admin``; logged as ``schema.declare``.

    Raises :class:`SchemaError` for a bad name (nothing logged) or
    :class:`AccessDeniedError` (logged as denied); either way nothing changes."""
    spec = KindSpec.build(name, fields, purposes, searchable)
    text = json.dumps(spec.to_json(), sort_keys=True)

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "schema.declare")
        tx.conn.execute(delete(kinds).where(kinds.c.name == spec.name))
        row = {"name": spec.name, "spec": text}
        insert_rows(tx.conn, ctx.keys.row_auth, "sv_kinds", [row], tx.next_seq())
        reindex_kind(ctx, actor, tx, spec, "schema.declare")
        tx.log(actor.event("schema.declare", detail={"kind": spec.name, **spec.to_json()}))

    ctx.transact(work)
    ctx.remember_kinds([(spec.name, text)])
    return spec


def alter_kind(
    ctx: VaultContext,
    actor: Actor,
    name: str,
    *,
    add_fields: Iterable[str] = (),
    deprecate_fields: Iterable[str] = (),
    add_purposes: Iterable[str] = (),
    add_searchable: Mapping[str, str] | None = None,
    drop_searchable: Iterable[str] = (),
) -> KindSpec:
    """Evolve a declared kind: add fields, deprecate fields (still read, removed by an
    update setting them to None, no longer written), add purposes, make fields
    searchable (field -> normalizer) or not; returns it. Records are not rewritten; a
    change of searchable fields rebuilds the kind's blind-index entries in the same
    transaction (docs/search.md). Needs ``admin``; logged as ``schema.alter`` with
    what changed and the new spec. :class:`SchemaError` (nothing logged or changed)
    for an undeclared kind or a change :meth:`KindSpec.altered` refuses."""
    check_name("kind", name)

    def work(tx: Tx) -> tuple[KindSpec, str]:
        actor.gate(tx.conn, "admin", "schema.alter")
        row = tx.conn.execute(select(kinds).where(kinds.c.name == name)).first()
        if row is None:
            raise SchemaError(f"kind {name!r} is not declared")
        require(tx.conn, ctx.keys.row_auth, "sv_kinds", [row._mapping])
        old = KindSpec.from_json(name, json.loads(row.spec))
        new = old.altered(
            add_fields=add_fields,
            deprecate_fields=deprecate_fields,
            add_purposes=add_purposes,
            add_searchable=add_searchable,
            drop_searchable=drop_searchable,
        )
        text = json.dumps(new.to_json(), sort_keys=True)
        update_rows(tx.conn, ctx.keys.row_auth, "sv_kinds", {name: {"spec": text}}, tx.next_seq())
        changed = {
            "added_fields": sorted((new.fields - old.fields) | (old.deprecated - new.deprecated)),
            "deprecated_fields": sorted(new.deprecated - old.deprecated),
            "added_purposes": sorted(new.purposes - old.purposes),
        }
        if new.searchable != old.searchable:
            before, after = dict(old.searchable), dict(new.searchable)
            changed["searchable"] = sorted(f for f in after if before.get(f) != after[f])
            changed["unsearchable"] = sorted(before.keys() - after.keys())
            reindex_kind(ctx, actor, tx, new, "schema.alter")
        tx.log(
            actor.event("schema.alter", detail={"kind": name, "changed": changed, **new.to_json()})
        )
        return new, text

    new, text = ctx.transact(work)
    ctx.remember_kinds([(name, text)])
    return new


def list_kinds(ctx: VaultContext, actor: Actor) -> dict[str, KindSpec]:
    """Every declared kind (names, fields, purposes: schema, no personal data).
    Needs ``list``; logged as one ``schema.list`` entry."""

    def work(tx: Tx) -> list[tuple[str, str]]:
        actor.gate(tx.conn, "list", "schema.list")
        rows = ctx.checked_kinds(tx.conn)
        tx.log(actor.event("schema.list", detail={"count": len(rows)}))
        return rows

    return ctx.remember_kinds(ctx.transact(work))
