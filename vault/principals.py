"""Principals and roles (admin only): who may act, and what a role allows."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import delete, select

from .access import BUILTIN_ROLES, Role, new_token, normalize_expiry
from .actor import Actor, load_role
from .context import Tx, VaultContext
from .errors import NotFoundError, SchemaError, TamperError
from .inputs import check_known, suggest
from .model import Principal
from .rowauth import insert_rows, require, update_rows
from .schema import check_name
from .store import principals, roles

__all__ = ["add_principal", "add_role", "list_principals", "list_roles", "revoke_principal"]


def add_principal(
    ctx: VaultContext, actor: Actor, name: str, *, role: str, expires: datetime | None = None
) -> str:
    """Create a principal and return its token: shown once, stored only as its
    verifier (``KeyRing.token_mac``), which no one can make without the keystore."""
    check_name("principal", name)
    check_name("role", role)
    until = normalize_expiry(expires)
    token, lookup = new_token()

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "principal.add")
        if load_role(tx.conn, role, ctx.keys.row_auth) is None:
            raise SchemaError(f"no role {role!r} (add it with add_role)")
        exists = tx.conn.execute(select(principals.c.name).where(principals.c.name == name)).first()
        if exists is not None:
            raise SchemaError(f"a principal named {name!r} already exists")
        row = {
            "name": name,
            "lookup": lookup,
            "role": role,
            "token_hash": ctx.keys.token_mac(token),
            "expires": until,
            "revoked": False,
            "created": ctx.now(),
        }
        insert_rows(tx.conn, ctx.keys.row_auth, "sv_principals", [row], tx.next_seq())
        tx.log(
            actor.event("principal.add", detail={"principal": name, "role": role, "expires": until})
        )

    ctx.transact(work)
    return token


def revoke_principal(ctx: VaultContext, actor: Actor, name: str) -> None:
    """Revoke a principal's token at once (in every process)."""
    check_name("principal", name)

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "principal.revoke")
        # A forged row is replaced all the same: revoking never grants anything.
        done = update_rows(
            tx.conn,
            ctx.keys.row_auth,
            "sv_principals",
            {name: {"revoked": True}},
            tx.next_seq(),
            verify=False,
        )
        if done == 0:
            raise NotFoundError(f"no principal {name!r}")
        tx.log(actor.event("principal.revoke", detail={"principal": name}))

    ctx.transact(work)


def list_principals(ctx: VaultContext, actor: Actor) -> list[Principal]:
    """Every principal (never a token or its hash). Each row passes its checks
    first, else a logged :class:`TamperError` lists none: a forged row is never shown
    as if the vault had written it (``audit check-store`` names every failing row)."""

    def work(tx: Tx) -> list[Principal]:
        actor.gate(tx.conn, "admin", "principal.list")
        rows = [r._mapping for r in tx.conn.execute(select(principals).order_by(principals.c.name))]
        try:
            require(tx.conn, ctx.keys.row_auth, "sv_principals", rows)
        except TamperError as error:
            raise actor.tamper_refusal(error, "principal.list") from None
        tx.log(actor.event("principal.list", detail={"count": len(rows)}))
        return [
            Principal(
                str(r["name"]), str(r["role"]), r["expires"], bool(r["revoked"]), str(r["created"])
            )
            for r in rows
        ]

    return ctx.transact(work)


def add_role(ctx: VaultContext, actor: Actor, role: Role, *, replace: bool = False) -> None:
    """Add a custom role (built from :meth:`Role.build`).

    A role of that name that exists already raises :class:`SchemaError` and nothing
    changes, unless ``replace``: then the new spec takes its place for its
    principals' very next call, logged as ``role.add`` with ``detail.replaced``."""
    if not isinstance(role, Role):
        raise SchemaError("add_role takes a Role (build one with Role.build)")
    role = _rebuilt(role)
    _check_declared(ctx, role)
    spec = json.dumps(role.to_json(), sort_keys=True)

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "admin", "role.add")
        exists = (
            tx.conn.execute(select(roles.c.name).where(roles.c.name == role.name)).first()
            is not None
        )
        if exists and not replace:
            raise SchemaError(
                f"role {role.name} exists; pass replace=True / --replace to change it"
            )
        tx.conn.execute(delete(roles).where(roles.c.name == role.name))
        row = {"name": role.name, "spec": spec, "created": ctx.now()}
        insert_rows(tx.conn, ctx.keys.row_auth, "sv_roles", [row], tx.next_seq())
        detail = role.to_json()
        if exists:
            detail["replaced"] = True
        tx.log(actor.event("role.add", detail=detail))

    ctx.transact(work)


def list_roles(ctx: VaultContext, actor: Actor) -> list[Role]:
    """Built-in and custom roles."""

    def work(tx: Tx) -> list[Role]:
        actor.gate(tx.conn, "admin", "role.list")
        custom = []
        for r in tx.conn.execute(select(roles.c.name).order_by(roles.c.name)).scalars().all():
            try:
                loaded = load_role(tx.conn, str(r), ctx.keys.row_auth)
            except TamperError as error:
                raise actor.tamper_refusal(error, "role.list") from None
            if loaded is not None:
                custom.append(loaded)
        tx.log(actor.event("role.list", detail={"count": len(custom) + len(BUILTIN_ROLES)}))
        return list(BUILTIN_ROLES.values()) + custom

    return ctx.transact(work)


def _check_declared(ctx: VaultContext, role: Role) -> None:
    """The kinds and fields a role names are declared in this vault (and its purposes
    are not near-misses of declared ones), else a SchemaError with the closest declared
    names: a typo would make a role that quietly allows nothing (or less than meant)."""
    declared = ctx.kinds()
    named = set(role.kinds or ()) | set(role.fields or {})
    check_known("kind(s)", sorted(named), declared)
    for kind, fields in sorted((role.fields or {}).items()):
        check_known(f"field(s) of kind {kind}", sorted(fields), declared[kind].fields)
    # A purpose may be named before any kind declares it (it then allows nothing yet);
    # one that is not declared but close to a declared one is taken for a typo.
    purposes = {p for spec in declared.values() for p in spec.purposes}
    typos = [p for p in sorted(role.purposes or ()) if p not in purposes and suggest(p, purposes)]
    check_known("purpose(s)", typos, purposes)


def _rebuilt(role: Role) -> Role:
    """``role`` through :meth:`Role.build`'s checks (names, actions, no ``admin``, not a
    built-in name), however it was made."""
    raw = role.to_json()
    return Role.build(
        raw["name"],
        actions=raw["actions"],
        kinds=raw["kinds"],
        fields=raw["fields"],
        purposes=raw["purposes"],
        expires=raw["expires"],
    )
