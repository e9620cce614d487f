"""The one gate: who is acting, and whether they may (DESIGN §6).

An :class:`Actor` is a principal (or the administrator who unlocked the vault) acting
on an open vault. Every operation asks :meth:`Actor.gate` inside its logged
transaction: the actor's role is re-read (a revocation, an expiry or a role change in
any process applies to the very next call), checked for the action, the kind and the
purpose, the purpose is checked against the kind's declaration (minimal collection),
and a denial rolls the work back and commits a ``denied`` entry on its own. Returned
plaintext is cut to the role's field allow-list by :func:`visible_fields`, here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy import Connection, RowMapping, bindparam, select

from ..keys import CustomerKeys
from ..keys.rowauth import RowAuth
from . import ids
from .access import BUILTIN_ROLES, Role
from .context import Refusal, VaultContext
from .errors import (
    AccessDeniedError,
    NotFoundError,
    PurposeError,
    SchemaError,
    ShreddedError,
    StateConflictError,
    TamperError,
    VaultDecommissionedError,
)
from .lifecycle import DECOMMISSION_ACTION
from .log import Event
from .rowauth import Bad, check_records, records_select, refusal_error, require
from .store import customers, principals, records, roles

__all__ = ["ADMIN", "Actor", "load_role", "subject_tag", "system_actor"]

ADMIN = "admin"


class Actor:
    """Who acts: a name, a role, and (for token sessions) the principal's lookup id."""

    def __init__(
        self, ctx: VaultContext, name: str, role: Role, principal: str | None = None
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.role = role
        self.principal = principal  # lookup id; None for the unlocking administrator
        # (transaction, role): the role as re-read in the current transaction. Holding
        # the transaction object keeps its identity unique while it is cached.
        self._role_cache: tuple[object, Role] | None = None

    def __repr__(self) -> str:
        return f"<Actor {self.name!r} role={self.role.name!r}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("actors cannot be pickled")

    def event(self, action: str, **kw: Any) -> Event:
        """A log entry by this actor (its role as it was when the session began)."""
        return Event(self.name, self.role.name, action, **kw)

    # -- the decision ---------------------------------------------------------------------

    def current_role(self, conn: Connection, log_action: str) -> Role:
        """This actor's role as of now: re-read for token sessions, so revocation,
        expiry and role changes in any process apply to the very next call."""
        ctx = self.ctx
        if ctx.lifecycle is not None and log_action != DECOMMISSION_ACTION:
            ev = self.event(
                log_action, outcome="denied", detail={"reason_code": "vault_decommissioned"}
            )
            raise Refusal(
                VaultDecommissionedError(
                    f"the vault is {ctx.lifecycle}: it serves no data "
                    "(only finishing the decommission and auditing work)"
                ),
                ev,
            )
        if self.principal is None:
            return self.role
        txn = conn.get_transaction()
        cached = self._role_cache
        if cached is not None and txn is not None and cached[0] is txn:
            return cached[1]  # already re-read in this transaction
        now = ctx.now()
        row = conn.execute(select(principals).where(principals.c.lookup == self.principal)).first()
        reason = None
        role = None
        try:
            if row is not None:
                require(conn, ctx.keys.row_auth, "sv_principals", [row._mapping])
            if row is None or row.revoked:
                reason = "token_revoked"
            elif row.expires is not None and now >= row.expires:
                reason = "token_expired"
            else:
                role = load_role(conn, str(row.role), ctx.keys.row_auth)
        except TamperError as error:
            raise self.tamper_refusal(error, log_action) from None
        if role is None and reason is None:
            reason = "role_missing"
        if reason is not None or role is None:
            ev = self.event(log_action, outcome="denied", detail={"reason_code": reason})
            raise Refusal(AccessDeniedError(f"access denied: {reason}"), ev)
        self._role_cache = (txn, role)
        return role

    def gate(
        self,
        conn: Connection,
        action: str,
        log_action: str,
        *,
        kind: str | None = None,
        purpose: str | None = None,
        subject: str | None = None,
        whole_vault: bool = False,
    ) -> Role:
        """Allow ``action`` (on ``kind`` for ``purpose``) and return the role as of now,
        or raise a :class:`Refusal` that logs the denial with a reason code.
        ``whole_vault``: the action copies every kind and field (a backup), so a role
        limited to some of them is refused."""
        role = self.current_role(conn, log_action)
        reason = role.denial(action, now=self.ctx.now(), kind=kind, purpose=purpose)
        if reason is None and whole_vault:
            reason = role.narrowed()
        if reason is None and kind is not None and purpose is not None:
            try:
                self.ctx.kind(kind).check_purpose(purpose)
            except PurposeError as error:
                ev = self.event(
                    log_action,
                    outcome="denied",
                    subject=subject,
                    purpose=purpose,
                    detail={"kind": kind, "reason_code": "purpose_not_declared"},
                )
                raise Refusal(error, ev) from None
        if reason is not None:
            detail: dict[str, Any] = {"reason_code": reason}
            if kind is not None:
                detail["kind"] = kind
            ev = self.event(
                log_action, outcome="denied", subject=subject, purpose=purpose, detail=detail
            )
            raise Refusal(
                AccessDeniedError(f"role {self.role.name!r} may not {action}: {reason}"), ev
            )
        return role

    def gate_customer(
        self, conn: Connection, action: str, log_action: str, customer_id: str, subject: str
    ) -> Role:
        """Allow ``action`` on everything a customer holds (a shred destroys it all): a
        role limited in kinds or purposes must cover the kind of every record of the
        customer (:meth:`Role.withholds`), else a :class:`Refusal` logs the denial. For
        such a role the customer's record rows are checked first (vault/rowauth.py): a
        row that fails is a logged :class:`TamperError`."""
        role = self.gate(conn, action, log_action, subject=subject)
        if role.kinds is None and role.purposes is None:
            return role
        # The decision rests on the record rows' kinds: each row must pass its checks
        # first, or a kind forged in the data store would let a limited role through.
        rows = conn.execute(records_select().where(records.c.customer_id == customer_id)).all()
        bad = check_records(self.ctx.keys.row_auth, rows)
        if bad:
            raise self.tamper_refusal(refusal_error(bad), log_action, subject=subject)
        for kind in sorted({str(r.kind) for r in rows}):
            reason = role.withholds(kind, self.ctx.kind(kind).purposes)
            if reason is not None:
                ev = self.event(
                    log_action,
                    outcome="denied",
                    subject=subject,
                    detail={"kind": kind, "reason_code": reason},
                )
                raise Refusal(
                    AccessDeniedError(
                        f"role {self.role.name!r} may not {action} customer {customer_id}: "
                        f"it has records of kind {kind} ({reason})"
                    ),
                    ev,
                )
        return role

    def authorize(self, action: str, log_action: str) -> None:
        """Check an action in a transaction of its own (for operations that log their
        own entries in later transactions, such as shredding)."""
        self.ctx.transact(lambda tx: self.gate(tx.conn, action, log_action) and None)

    def deny_fields(
        self,
        role: Role,
        kind: str,
        names: Sequence[str],
        log_action: str,
        purpose: str,
        subject: str | None = None,
        *,
        verb: str = "write",
    ) -> None:
        """Refuse (logged) writing (or, as ``verb`` says, searching) fields of ``kind``
        outside the role's allow-list."""
        allowed = role.fields_for(kind)
        if allowed is None:
            return
        outside = sorted(set(names) - allowed)
        if outside:
            ev = self.event(
                log_action,
                outcome="denied",
                subject=subject,
                purpose=purpose,
                detail={"kind": kind, "fields": outside, "reason_code": "field_not_allowed"},
            )
            raise Refusal(
                AccessDeniedError(
                    f"role {self.role.name!r} may not {verb} field(s) "
                    f"{', '.join(outside)} of {kind}"
                ),
                ev,
            )

    # -- refusals that are not denials ------------------------------------------------------

    def tamper_refusal(
        self,
        error: TamperError,
        action: str,
        *,
        subject: str | None = None,
        purpose: str | None = None,
    ) -> Refusal:
        """The logged refusal of a row that fails its checks (vault/rowauth.py): the
        entry names the table and why, never the row's content."""
        record = error.row if error.table == "sv_records" else None
        ev = self.event(
            action,
            outcome="error",
            subject=subject,
            record=record,
            purpose=purpose,
            detail={"reason_code": "row_tampered", "table": error.table, "why": error.reason},
        )
        return Refusal(error, ev)

    def purpose_refusal(self, purpose: str, action: str, subject: str | None) -> Refusal:
        ev = self.event(
            action,
            outcome="denied",
            subject=subject,
            purpose=purpose,
            detail={"reason_code": "purpose_not_declared"},
        )
        return Refusal(PurposeError(f"purpose {purpose!r} is declared for no kind"), ev)

    def not_found(self, action: str, what: str, *, purpose: str | None = None) -> Refusal:
        kind = "customer" if what.startswith(ids.CUSTOMER) else "record"
        ev = self.event(
            action, outcome="error", purpose=purpose, detail={"reason_code": f"{kind}_not_found"}
        )
        return Refusal(NotFoundError(f"no {kind} {what}"), ev)

    def customer_states(
        self, conn: Connection, cids: Sequence[str], action: str, purpose: str | None
    ) -> dict[str, int]:
        """DEK version of each customer, after checking each exists and is active
        (a logged :class:`NotFoundError` or :class:`ShreddedError` otherwise)."""
        rows = [
            r._mapping
            for r in conn.execute(
                select(customers).where(customers.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": list(cids)},
            )
        ]
        self.check_customers(conn, rows, action, purpose)
        found = {str(r["id"]): (str(r["state"]), int(r["dek_version"])) for r in rows}
        for cid in cids:
            if cid not in found:
                raise self.not_found(action, cid, purpose=purpose)
            if found[cid][0] != "active":
                raise self.inactive_refusal(cid, found[cid][0], action, purpose=purpose)
        return {cid: v for cid, (_s, v) in found.items()}

    def checked_principals_and_roles(
        self, conn: Connection, action: str
    ) -> tuple[list[RowMapping], list[RowMapping]]:
        """Every principal and role row, by name, after their checks: a forged or stale
        one refuses ``action`` (logged, :class:`TamperError`) and nothing is shown."""
        listed = [r._mapping for r in conn.execute(select(principals).order_by(principals.c.name))]
        role_rows = [r._mapping for r in conn.execute(select(roles).order_by(roles.c.name))]
        try:
            require(conn, self.ctx.keys.row_auth, "sv_principals", listed)
            require(conn, self.ctx.keys.row_auth, "sv_roles", role_rows)
        except TamperError as error:
            raise self.tamper_refusal(error, action) from None
        return listed, role_rows

    def check_customers(
        self,
        conn: Connection,
        rows: Sequence[Mapping[Any, Any]],
        action: str,
        purpose: str | None = None,
    ) -> None:
        """Refuse (logged, :class:`TamperError`) when a customer row fails its
        authenticator or is older than the log's last change of that customer."""
        found = self.ctx.keys.store.subject_tags([str(r["id"]) for r in rows]) if rows else {}
        tags = {cid: tag.hex() for cid, tag in found.items()}
        try:
            require(conn, self.ctx.keys.row_auth, "sv_customers", rows, tags=tags)
        except TamperError as error:
            subject = tags.get(error.row)
            raise self.tamper_refusal(error, action, subject=subject, purpose=purpose) from None

    def inactive_refusal(
        self,
        customer_id: str,
        state: str,
        action: str,
        *,
        purpose: str | None = None,
        message: str | None = None,
    ) -> Refusal:
        """The logged refusal for a customer that is not active: shredded (or being
        shredded), :class:`ShreddedError`; or a row that says ``shredded`` while the
        keystore still holds the customer's keys, which no shred leaves behind (the
        keys go before the row changes, and opening destroys the keys of every shred
        the log confirms): the stores disagree, :class:`StateConflictError`."""
        keys = self.ctx.keys
        keys.forget([customer_id])
        if state == "shredded":
            tag = keys.store.subject_tags([customer_id]).get(customer_id)
            if tag is not None or keys.store.deks([customer_id]):
                ev = self.event(
                    action,
                    outcome="error",
                    purpose=purpose,
                    subject=None if tag is None else tag.hex(),
                    detail={"reason_code": "state_conflict"},
                )
                return Refusal(
                    StateConflictError(
                        f"customer {customer_id} is marked shredded in the data store but "
                        "its keys are still in the keystore: refused (see docs/shredding.md)"
                    ),
                    ev,
                )
        ev = self.event(
            action, outcome="error", purpose=purpose, detail={"reason_code": "customer_shredded"}
        )
        text = message or f"customer {customer_id} was shredded; its data is gone"
        return Refusal(ShreddedError(text), ev)


def system_actor(ctx: VaultContext) -> Actor:
    """The vault itself, finishing work a crash interrupted (logged as ``vault`` with
    role ``system``); it holds no action, so it can pass no gate."""
    return Actor(ctx, "vault", Role("system", frozenset(), builtin=True))


def load_role(conn: Connection, name: str, auth: RowAuth) -> Role | None:
    """A built-in role, or a custom one from the data store; None if there is none.

    A stored role must pass its row's checks (vault/rowauth.py) and the checks that
    creating one runs (:meth:`Role.build`: no ``admin`` action, known names), else
    :class:`TamperError`: a role stored by other means than the vault is not obeyed."""
    builtin = BUILTIN_ROLES.get(name)
    if builtin is not None:
        return builtin
    row = conn.execute(select(roles).where(roles.c.name == name)).first()
    if row is None:
        return None
    require(conn, auth, "sv_roles", [row._mapping])
    try:
        raw = json.loads(row.spec)
        role = Role.from_json(raw)
        rebuilt = Role.build(
            role.name,
            actions=raw["actions"],
            kinds=raw["kinds"],
            fields=raw["fields"],
            purposes=raw["purposes"],
            expires=raw["expires"],
        )
    except (ValueError, KeyError, TypeError, SchemaError):
        rebuilt = None
    if rebuilt is None or rebuilt.name != name or rebuilt != role:
        raise refusal_error([Bad("sv_roles", name, "malformed")])
    return role


def subject_tag(keys: CustomerKeys | None) -> str | None:
    return None if keys is None else keys.subject_tag.hex()
