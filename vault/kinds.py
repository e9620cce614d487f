"""The declared schema: record kinds, their fields and purposes (minimal collection)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import delete

from .actor import Actor
from .context import Tx, VaultContext
from .rowauth import insert_rows
from .schema import KindSpec
from .store import kinds

__all__ = ["declare_kind", "list_kinds"]


def declare_kind(
    ctx: VaultContext, actor: Actor, name: str, *, fields: Iterable[str], purposes: Iterable[str]
) -> KindSpec:
    """Declare (or redeclare) a record kind: the fields it may hold and the purposes
    it may be used for; returns it. Needs ``admin``; logged as ``schema.declare``.

    Raises :class:`SchemaError` for a bad name (nothing logged) or
    :class:`AccessDeniedError` (logged as denied); either way nothing changes."""
    spec = KindSpec.build(name, fields, purposes)
    text = json.dumps(spec.to_json(), sort_keys=True)

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "schema.declare")
        tx.conn.execute(delete(kinds).where(kinds.c.name == spec.name))
        row = {"name": spec.name, "spec": text}
        insert_rows(tx.conn, ctx.keys.row_auth, "sv_kinds", [row], tx.next_seq())
        tx.log(actor.event("schema.declare", detail={"kind": spec.name, **spec.to_json()}))

    ctx.transact(work)
    ctx.remember_kinds([(spec.name, text)])
    return spec


def list_kinds(ctx: VaultContext, actor: Actor) -> dict[str, KindSpec]:
    """Every declared kind (names, fields, purposes: schema, no personal data).
    Needs ``list``; logged as one ``schema.list`` entry."""

    def work(tx: Tx) -> list[tuple[str, str]]:
        actor.gate(tx.conn, "list", "schema.list")
        rows = ctx.checked_kinds(tx.conn)
        tx.log(actor.event("schema.list", detail={"count": len(rows)}))
        return rows

    return ctx.remember_kinds(ctx.transact(work))
