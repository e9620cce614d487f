"""Acting on the vault as a principal: customers and records, every decision logged.

Each public method is one logged transaction. Inside it the session re-reads its
principal and role (so a revocation or an expiry in another process takes effect at
once), asks the role about the action, kind and purpose, checks the purpose is declared
for the kind (minimal collection), and only then touches data. A denial rolls the
work back and commits a ``denied`` entry on its own.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import Connection, RowMapping, bindparam, delete, insert, select, update

from ..keys import DecryptionError, Envelope
from ..keys.envelope import record_aad_suffix
from . import ids
from .access import BUILTIN_ROLES, Role, new_token, normalize_expiry
from .clock import format_ts
from .errors import (
    AccessDeniedError,
    LegalHoldError,
    NotFoundError,
    PurposeError,
    SchemaError,
    ShreddedError,
    VaultDecommissionedError,
    VaultError,
)
from .lifecycle import DECOMMISSION_ACTION
from .log import Event
from .model import Customer, ExpiredCustomers, Principal, Record, ShredExpiredResult
from .receipt import Receipt
from .schema import KindSpec, check_name, encode_fields
from .shred import check_reason, compact, shred_customer
from .store import customers, kinds, principals, records, roles

if TYPE_CHECKING:
    from ..keys import CustomerKeys
    from .backup import BackupInfo
    from .certificate import Certificate
    from .checkpoint import Checkpoint
    from .handover import HandoverCompletion, HandoverExport, HandoverImport, HandoverKey
    from .rotate import KeyPolicy, KeyStatus
    from .vault import Tx, Vault

__all__ = ["Session"]

_MAX_BATCH = 10_000
_MAX_REF = 200

PutItem = tuple[str, str, Mapping[str, Any]]


class Session:
    """The vault as seen by one principal (or by the unlocking administrator)."""

    def __init__(
        self, vault: Vault, *, actor: str, role: Role, principal: str | None = None
    ) -> None:
        self._vault = vault
        self.actor = actor
        self.role = role.name
        self._role = role
        self._principal = principal  # lookup id; None for the unlocking administrator
        # (transaction, role): the role as re-read in the current transaction. Holding
        # the transaction object keeps its identity unique while it is cached.
        self._role_cache: tuple[object, Role] | None = None

    def __repr__(self) -> str:
        return f"<Session actor={self.actor!r} role={self.role!r}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("sessions cannot be pickled")

    def _event(self, action: str, **kw: Any) -> Event:
        return Event(self.actor, self.role, action, **kw)

    # -- authorization ------------------------------------------------------------------

    def _current_role(self, conn: Connection, log_action: str) -> Role:
        """This session's role as of now: re-read for token sessions, so revocation,
        expiry and role changes in any process apply to the very next call."""
        from .vault import Refusal

        if self._vault.lifecycle is not None and log_action != DECOMMISSION_ACTION:
            ev = self._event(
                log_action, outcome="denied", detail={"reason_code": "vault_decommissioned"}
            )
            raise Refusal(
                VaultDecommissionedError(
                    f"the vault is {self._vault.lifecycle}: it serves no data "
                    "(only finishing the decommission and auditing work)"
                ),
                ev,
            )
        if self._principal is None:
            return self._role
        txn = conn.get_transaction()
        cached = self._role_cache
        if cached is not None and txn is not None and cached[0] is txn:
            return cached[1]  # already re-read in this transaction
        now = format_ts(self._vault._clock())
        row = conn.execute(
            select(principals.c.role, principals.c.expires, principals.c.revoked).where(
                principals.c.lookup == self._principal
            )
        ).first()
        reason = None
        if row is None or row.revoked:
            reason = "token_revoked"
        elif row.expires is not None and now >= row.expires:
            reason = "token_expired"
        role = None if reason else load_role(conn, str(row.role))  # type: ignore[union-attr]
        if role is None and reason is None:
            reason = "role_missing"
        if reason is not None or role is None:
            ev = self._event(log_action, outcome="denied", detail={"reason_code": reason})
            raise Refusal(AccessDeniedError(f"access denied: {reason}"), ev)
        self._role_cache = (txn, role)
        return role

    def _gate(
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
        """Allow ``action`` or raise a Refusal that logs the denial with a reason code.
        ``whole_vault``: the action copies every kind and field (a backup), so a role
        limited to some of them is refused."""
        from .vault import Refusal

        role = self._current_role(conn, log_action)
        now = format_ts(self._vault._clock())
        reason = role.denial(action, now=now, kind=kind, purpose=purpose)
        if reason is None and whole_vault:
            reason = role.narrowed()
        if reason is None and kind is not None and purpose is not None:
            try:
                self._vault.kind(kind).check_purpose(purpose)
            except PurposeError as error:
                ev = self._event(
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
            ev = self._event(
                log_action, outcome="denied", subject=subject, purpose=purpose, detail=detail
            )
            raise Refusal(AccessDeniedError(f"role {self.role!r} may not {action}: {reason}"), ev)
        return role

    def _gate_customer(
        self, conn: Connection, action: str, log_action: str, customer_id: str, subject: str
    ) -> Role:
        """Allow ``action`` on everything a customer holds (a shred destroys it all): a
        role limited in kinds or purposes must cover the kind of every record of the
        customer (:meth:`Role.withholds`), else a Refusal logs the denial."""
        from .vault import Refusal

        role = self._gate(conn, action, log_action, subject=subject)
        if role.kinds is None and role.purposes is None:
            return role
        held = conn.execute(
            select(records.c.kind).where(records.c.customer_id == customer_id).distinct()
        ).scalars()
        for kind in sorted(str(k) for k in held):
            reason = role.withholds(kind, self._vault.kind(kind).purposes)
            if reason is not None:
                ev = self._event(
                    log_action,
                    outcome="denied",
                    subject=subject,
                    detail={"kind": kind, "reason_code": reason},
                )
                raise Refusal(
                    AccessDeniedError(
                        f"role {self.role!r} may not {action} customer {customer_id}: "
                        f"it has records of kind {kind} ({reason})"
                    ),
                    ev,
                )
        return role

    def _authorize(self, action: str, log_action: str) -> None:
        """Check an action in a transaction of its own (for operations that log their
        own entries in later transactions, such as shredding)."""
        self._vault._transact(lambda tx: self._gate(tx.conn, action, log_action) and None)

    def _deny_fields(
        self,
        role: Role,
        kind: str,
        names: Sequence[str],
        log_action: str,
        purpose: str,
        subject: str | None = None,
    ) -> None:
        from .vault import Refusal

        allowed = role.fields_for(kind)
        if allowed is None:
            return
        outside = sorted(set(names) - allowed)
        if outside:
            ev = self._event(
                log_action,
                outcome="denied",
                subject=subject,
                purpose=purpose,
                detail={"kind": kind, "fields": outside, "reason_code": "field_not_allowed"},
            )
            raise Refusal(
                AccessDeniedError(
                    f"role {self.role!r} may not write field(s) {', '.join(outside)} of {kind}"
                ),
                ev,
            )

    # -- schema and checkpoints -------------------------------------------------------

    def declare_kind(
        self, name: str, *, fields: Iterable[str], purposes: Iterable[str]
    ) -> KindSpec:
        """Declare (or redeclare) a record kind: the fields it may hold and the purposes
        it may be used for; returns it. Needs ``admin``; logged as ``schema.declare``.

        Raises :class:`SchemaError` for a bad name (nothing logged) or
        :class:`AccessDeniedError` (logged as denied); either way nothing changes."""
        spec = KindSpec.build(name, fields, purposes)
        text = json.dumps(spec.to_json(), sort_keys=True)

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", "schema.declare")
            tx.conn.execute(delete(kinds).where(kinds.c.name == spec.name))
            tx.conn.execute(insert(kinds).values(name=spec.name, spec=text))
            tx.log(self._event("schema.declare", detail={"kind": spec.name, **spec.to_json()}))

        self._vault._transact(work)
        self._vault._kinds[spec.name] = spec
        return spec

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind (names, fields, purposes: schema, no personal data).
        Needs ``list``; logged as one ``schema.list`` entry."""
        from .vault import _read_kinds

        def work(tx: Tx) -> list[tuple[str, str]]:
            self._gate(tx.conn, "list", "schema.list")
            rows = _read_kinds(tx.conn)
            tx.log(self._event("schema.list", detail={"count": len(rows)}))
            return rows

        return self._vault._remember_kinds(self._vault._transact(work))

    def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint at the log head now and return it (see
        :meth:`Vault.checkpoint`). Needs ``audit``; logged as ``audit.checkpoint``.
        A denial is logged and signs nothing new."""

        def entry(tx: Tx) -> Event:
            self._gate(tx.conn, "audit", "audit.checkpoint")
            return self._event("audit.checkpoint")

        return self._vault._sign_checkpoint(entry)

    # -- customers -------------------------------------------------------------------

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: datetime | None = None,
    ) -> str:
        """Create a customer with fresh keys; returns its id. ``ref`` is an application
        reference (not personal data); ``consent`` flags such as ``{"transfer": True}``."""
        if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= _MAX_REF):
            raise SchemaError(f"ref must be a string of 1-{_MAX_REF} characters")
        consent_map = {check_name("consent", k): v for k, v in (consent or {}).items()}
        if not all(isinstance(v, bool) for v in consent_map.values()):
            raise SchemaError("consent values must be True or False")
        until = normalize_expiry(retain_until)
        vault = self._vault
        self._authorize("write", "customer.add")
        cid = ids.new_id(ids.CUSTOMER)
        created = format_ts(vault._clock())
        tags = vault._keys.create_customers([cid], created)
        row = {
            "id": cid,
            "ref": ref,
            "state": "active",
            "dek_version": 1,
            "retain_until": until,
            "legal_hold": False,
            "consent": json.dumps(consent_map, sort_keys=True),
            "created": created,
            "shredded": None,
        }

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "write", "customer.add")
            tx.conn.execute(insert(customers).values(**row))
            tx.log(
                self._event(
                    "customer.add",
                    subject=tags[cid].hex(),
                    detail={"consent": consent_map, "retain_until": until},
                )
            )

        try:
            vault._transact(work)
        except BaseException:
            vault._keys.destroy_customer(cid)  # no customer row: its keys must not linger
            raise
        return cid

    def customer(self, customer_id: str) -> Customer:
        """A customer's metadata (also for shredded customers). Logged."""
        _check_customer_id(customer_id)
        vault = self._vault

        def work(tx: Tx) -> Customer:
            self._gate(tx.conn, "list", "customer.show")
            row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
            if row is None:
                raise self._not_found("customer.show", customer_id)
            tag = _tag(vault._keys.customer_keys([customer_id]).get(customer_id))
            tx.log(self._event("customer.show", subject=tag))
            return _customer(row._mapping)

        return vault._transact(work)

    def list_customers(self, *, state: str | None = None) -> list[Customer]:
        """Every customer's metadata (optionally in one state). Logged as one entry."""
        stmt = select(customers).order_by(customers.c.created, customers.c.id)
        if state is not None:
            stmt = stmt.where(customers.c.state == state)

        def work(tx: Tx) -> list[Customer]:
            self._gate(tx.conn, "list", "customer.list")
            out = [_customer(r._mapping) for r in tx.conn.execute(stmt)]
            tx.log(self._event("customer.list", detail={"count": len(out)}))
            return out

        return self._vault._transact(work)

    def hold(self, customer_id: str) -> None:
        """Put a customer under legal hold: it cannot be shredded until released."""
        self._set_hold(customer_id, True)

    def release(self, customer_id: str) -> None:
        """Release a customer's legal hold."""
        self._set_hold(customer_id, False)

    def set_retention(self, customer_id: str, retain_until: datetime | str | None) -> str | None:
        """Change when a customer's data is due for erasure (``None``: keep until
        shredded on request). Admin only; logged as ``customer.retain`` with the new
        time. Returns it, normalized (RFC 3339 UTC). The next ``shred_expired`` uses it."""
        _check_customer_id(customer_id)
        until = normalize_expiry(retain_until)
        vault = self._vault

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", "customer.retain")
            self._customer_states(tx.conn, [customer_id], "customer.retain", None)
            tx.conn.execute(
                update(customers).where(customers.c.id == customer_id).values(retain_until=until)
            )
            tag = vault._keys.customer_keys([customer_id])[customer_id].subject_tag.hex()
            tx.log(self._event("customer.retain", subject=tag, detail={"retain_until": until}))

        vault._transact(work)
        return until

    def _set_hold(self, customer_id: str, held: bool) -> None:
        _check_customer_id(customer_id)
        action = "customer.hold" if held else "customer.release"
        vault = self._vault

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", action)
            self._customer_states(tx.conn, [customer_id], action, None)
            tx.conn.execute(
                update(customers).where(customers.c.id == customer_id).values(legal_hold=held)
            )
            tag = vault._keys.customer_keys([customer_id])[customer_id].subject_tag.hex()
            tx.log(self._event(action, subject=tag))

        vault._transact(work)

    # -- erasure -----------------------------------------------------------------------

    def shred(self, customer_id: str, *, reason: str) -> Receipt:
        """Crypto-shred a customer: destroy its keys so every copy of its records is
        unreadable, in time independent of how many records it has. Returns a signed
        erasure receipt. ``reason`` is logged: keep personal data out of it.

        Raises :class:`NotFoundError`, :class:`ShreddedError` (already shredded),
        :class:`LegalHoldError` or :class:`AccessDeniedError`; each is logged and
        changes nothing."""
        _check_customer_id(customer_id)
        check_reason(reason)
        self._authorize("shred", "customer.shred")
        return shred_customer(
            self._vault, self.actor, self.role, customer_id, reason, gate=self._shred_gate
        )

    def _shred_gate(self, tx: Tx, customer_id: str, subject: str) -> None:
        self._gate_customer(tx.conn, "shred", "customer.shred", customer_id, subject)

    def shred_expired(
        self,
        *,
        reason: str = "retention period ended",
        progress: Callable[[int], None] | None = None,
    ) -> ShredExpiredResult:
        """Shred every active customer whose ``retain_until`` has passed, except those
        under legal hold (reported as ``held``)."""
        check_reason(reason)
        self._authorize("shred", "customer.shred")
        vault = self._vault
        due = _expired(format_ts(vault._clock()))
        rows = vault._data.read(lambda conn: conn.execute(due).all())
        receipts: list[Receipt] = []
        held: list[str] = []
        failed: dict[str, str] = {}
        # One keystore scrub for the whole run (its cost grows with the keystore).
        with vault._keys.scrub_once() as scrubbed:
            for row in rows:
                if row.legal_hold:
                    held.append(str(row.id))
                else:
                    try:
                        receipts.append(
                            shred_customer(
                                vault,
                                self.actor,
                                self.role,
                                str(row.id),
                                reason,
                                gate=self._shred_gate,
                            )
                        )
                    except LegalHoldError:
                        held.append(str(row.id))  # held by another process meanwhile
                    except ShreddedError:
                        pass  # shredded by another process meanwhile
                    except VaultError as error:
                        # Keep going: the receipts already issued must reach the caller.
                        failed[str(row.id)] = str(error)
                if progress is not None:
                    progress(1)
        return ShredExpiredResult(receipts, held, failed, scrub_pending=not scrubbed.done)

    def expired_customers(self) -> ExpiredCustomers:
        """Who :meth:`shred_expired` would shred now, and who a legal hold keeps: a dry
        run that changes nothing. Needs the ``shred`` action; logged as one
        ``customer.list`` entry (counts only)."""
        stmt = _expired(format_ts(self._vault._clock()))

        def work(tx: Tx) -> ExpiredCustomers:
            self._gate(tx.conn, "shred", "customer.list")
            due: dict[str, str] = {}
            held: dict[str, str] = {}
            for row in tx.conn.execute(stmt):
                (held if row.legal_hold else due)[str(row.id)] = str(row.retain_until)
            tx.log(
                self._event(
                    "customer.list",
                    detail={"expired": len(due), "held": len(held), "dry_run": True},
                )
            )
            return ExpiredCustomers(due, held)

        return self._vault._transact(work)

    def compact(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Delete ciphertext rows of shredded customers (unreadable junk); returns the
        number removed. Each batch commits on its own: safe to interrupt."""
        self._authorize("admin", "vault.compact")
        return compact(self._vault, self.actor, self.role, progress)

    def decommission(
        self,
        *,
        reason: str,
        override_holds: bool = False,
        progress: Callable[[int], None] | None = None,
        on_certificate: Callable[[Certificate], None] | None = None,
    ) -> Certificate:
        """Destroy everything the vault holds and return a signed certificate of
        destruction (admin only; see :mod:`vault.decommission`). Refused, with nothing
        changed, while customers are under legal hold (:class:`DecommissionHoldError`)
        unless ``override_holds``. Resumable: after a crash, run it again. Afterwards
        the vault serves no data and can sign nothing."""
        from .decommission import decommission

        return decommission(
            self,
            reason=reason,
            override_holds=override_holds,
            progress=progress,
            on_certificate=on_certificate,
        )

    # -- keys (admin; status also for auditors) ---------------------------------------

    def rotate_kek(
        self, *, retire: bool = False, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """New KEK epoch; re-wrap every DEK under it in batches (resumable)."""
        from .rotate import rotate_kek

        return rotate_kek(self, retire=retire, progress=progress)

    def retire_epoch(self, epoch: int) -> None:
        """Delete a KEK epoch that no DEK uses any more."""
        from .rotate import retire_epoch

        retire_epoch(self, epoch)

    def rotate_dek(self, customer_id: str) -> int:
        """New DEK version for one customer, records re-encrypted, old version deleted."""
        from .rotate import rotate_dek

        _check_customer_id(customer_id)
        return rotate_dek(self, customer_id)

    def rotate_deks(
        self,
        *,
        older_than_days: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Rotate the DEK of every active customer (or those older than N days)."""
        from .rotate import customers_due, rotate_dek

        self._authorize("admin", "keys.rotate-dek")
        done = []
        with self._vault._keys.scrub_once():  # old versions leave keys.db at the end
            for customer_id in customers_due(self, older_than_days=older_than_days):
                try:
                    rotate_dek(self, customer_id)
                    done.append(customer_id)
                except ShreddedError:
                    pass  # shredded meanwhile: nothing left to rotate
                if progress is not None:
                    progress(1)
        return done

    def change_passphrase(
        self, *, passphrase: bytes | None = None, keyfile: str | None = None
    ) -> None:
        """Re-wrap the root-wrapped keys under a new passphrase or keyfile (O(epochs))."""
        from .rotate import change_passphrase
        from .vault import _load_keyfile

        change_passphrase(self, passphrase=passphrase, keyfile_key=_load_keyfile(keyfile))

    def key_status(self, policy: KeyPolicy | None = None) -> KeyStatus:
        """Key ages, DEKs per epoch, KDF parameters vs recommendation, violations."""
        from .rotate import key_status

        return key_status(self, policy)

    # -- reports ---------------------------------------------------------------------------

    def customer_report(self, customer_id: str) -> dict[str, Any]:
        """Everything held about a customer, decrypted, with its access history and a
        signed checkpoint (the subject access report). Admin or a role with export."""
        from .reports import customer_report

        _check_customer_id(customer_id)
        return customer_report(self, customer_id)

    def customer_report_from_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """The subject access report of a shredded customer, through its erasure receipt
        (see :func:`vault.reports.customer_report_from_receipt`). VerificationError if
        the receipt does not verify against this vault. Admin or a role with export."""
        from .reports import customer_report_from_receipt

        return customer_report_from_receipt(self, receipt)

    def audit_query(self, **filters: str | None) -> dict[str, Any]:
        """Which customers and records were touched (actor, role, action, outcome,
        since, until): the breach-scope question. Ids only, never plaintext."""
        from .reports import audit_query

        return audit_query(self, **filters)

    def audit_report(self) -> dict[str, Any]:
        """The inspector's one-page report (see :func:`vault.reports.audit_report`)."""
        from .reports import audit_report

        return audit_report(self)

    # -- backups -------------------------------------------------------------------------

    def backup(
        self,
        out: str,
        *,
        expires_days: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Write a signed backup archive (a consistent snapshot of both stores) and
        return its manifest. Logged as ``backup.create``; counts on the key-copy clock."""
        from .backup import create_backup

        return create_backup(self, out, expires_days=expires_days, progress=progress)

    def backups(self) -> list[BackupInfo]:
        """Recorded backups with how many customers were shredded since each."""
        from .backup import backup_list

        return backup_list(self)

    # -- business handover ---------------------------------------------------------------

    def handover_export(
        self,
        recipient_public_key: bytes,
        out: str,
        *,
        customers: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverExport:
        """Write a handover package for an acquirer (see :mod:`vault.handover`): only
        active customers whose consent has ``transfer: True``; one ``customer.handover``
        entry each, committed only once the package is complete. Admin or ``export``."""
        from .handover import export_package

        return export_package(
            self, recipient_public_key, out, customer_ids=customers, progress=progress
        )

    def handover_import(
        self,
        package: str,
        key: HandoverKey,
        *,
        seller_public_key: bytes | None = None,
        declare_kinds: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverImport:
        """Verify a handover package completely, then import its customers and records
        in one transaction (admin). Nothing is written when anything fails."""
        from .handover import import_package

        return import_package(
            self,
            package,
            key,
            seller_public_key=seller_public_key,
            declare_kinds=declare_kinds,
            progress=progress,
        )

    def handover_complete(
        self,
        package: str,
        *,
        receipts_dir: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverCompletion:
        """Shred every customer a package this vault exported transferred (admin), one
        receipt each, and return a signed summary. Resumable."""
        from .handover import complete_package

        return complete_package(self, package, receipts_dir=receipts_dir, progress=progress)

    # -- principals and roles (admin only) -------------------------------------------

    def add_principal(self, name: str, *, role: str, expires: datetime | None = None) -> str:
        """Create a principal and return its token: shown once, stored only as SHA-256."""
        check_name("principal", name)
        check_name("role", role)
        until = normalize_expiry(expires)
        token, lookup = new_token()
        from .access import hash_token

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", "principal.add")
            if load_role(tx.conn, role) is None:
                raise SchemaError(f"no role {role!r} (add it with add_role)")
            exists = tx.conn.execute(
                select(principals.c.name).where(principals.c.name == name)
            ).first()
            if exists is not None:
                raise SchemaError(f"a principal named {name!r} already exists")
            tx.conn.execute(
                insert(principals).values(
                    name=name,
                    lookup=lookup,
                    role=role,
                    token_hash=hash_token(token),
                    expires=until,
                    revoked=False,
                    created=format_ts(self._vault._clock()),
                )
            )
            tx.log(
                self._event(
                    "principal.add", detail={"principal": name, "role": role, "expires": until}
                )
            )

        self._vault._transact(work)
        return token

    def revoke_principal(self, name: str) -> None:
        """Revoke a principal's token at once (in every process)."""
        check_name("principal", name)

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", "principal.revoke")
            done = tx.conn.execute(
                update(principals).where(principals.c.name == name).values(revoked=True)
            )
            if done.rowcount == 0:
                raise NotFoundError(f"no principal {name!r}")
            tx.log(self._event("principal.revoke", detail={"principal": name}))

        self._vault._transact(work)

    def list_principals(self) -> list[Principal]:
        """Every principal (never a token or its hash)."""

        def work(tx: Tx) -> list[Principal]:
            self._gate(tx.conn, "admin", "principal.list")
            rows = tx.conn.execute(
                select(
                    principals.c.name,
                    principals.c.role,
                    principals.c.expires,
                    principals.c.revoked,
                    principals.c.created,
                ).order_by(principals.c.name)
            ).all()
            tx.log(self._event("principal.list", detail={"count": len(rows)}))
            return [
                Principal(str(r.name), str(r.role), r.expires, bool(r.revoked), str(r.created))
                for r in rows
            ]

        return self._vault._transact(work)

    def add_role(self, role: Role, *, replace: bool = False) -> None:
        """Add a custom role (built from :meth:`Role.build`).

        A role of that name that exists already raises :class:`SchemaError` and nothing
        changes, unless ``replace``: then the new spec takes its place for its
        principals' very next call, logged as ``role.add`` with ``detail.replaced``."""
        if not isinstance(role, Role):
            raise SchemaError("add_role takes a Role (build one with Role.build)")
        role = _rebuilt(role)
        spec = json.dumps(role.to_json(), sort_keys=True)

        def work(tx: Tx) -> None:
            self._gate(tx.conn, "admin", "role.add")
            exists = (
                tx.conn.execute(select(roles.c.name).where(roles.c.name == role.name)).first()
                is not None
            )
            if exists and not replace:
                raise SchemaError(
                    f"role {role.name} exists; pass replace=True / --replace to change it"
                )
            tx.conn.execute(delete(roles).where(roles.c.name == role.name))
            tx.conn.execute(
                insert(roles).values(
                    name=role.name, spec=spec, created=format_ts(self._vault._clock())
                )
            )
            detail = role.to_json()
            if exists:
                detail["replaced"] = True
            tx.log(self._event("role.add", detail=detail))

        self._vault._transact(work)

    def list_roles(self) -> list[Role]:
        """Built-in and custom roles."""

        def work(tx: Tx) -> list[Role]:
            self._gate(tx.conn, "admin", "role.list")
            custom = [
                Role.from_json(json.loads(r.spec))
                for r in tx.conn.execute(select(roles.c.spec).order_by(roles.c.name))
            ]
            tx.log(self._event("role.list", detail={"count": len(custom) + len(BUILTIN_ROLES)}))
            return list(BUILTIN_ROLES.values()) + custom

        return self._vault._transact(work)

    # -- records: write --------------------------------------------------------------

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        """Store one record; returns its id. See :meth:`put_many`."""
        return self.put_many([(customer_id, kind, fields)], purpose=purpose)[0]

    def put_many(self, items: Sequence[PutItem], *, purpose: str) -> list[str]:
        """Store records ``(customer_id, kind, fields)`` in one transaction and one
        ``executemany``; one log entry per record. All or nothing: an undeclared kind or
        field (:class:`SchemaError`), a purpose not declared or not allowed, a field
        outside the role's allow-list (:class:`AccessDeniedError`), or an unknown or
        shredded customer stores none of them."""
        if not 0 < len(items) <= _MAX_BATCH:
            raise SchemaError(f"a batch holds 1 to {_MAX_BATCH} records")
        check_name("purpose", purpose)
        vault = self._vault
        plaintexts: list[bytes] = []
        kinds_of: list[str] = []
        field_names: list[list[str]] = []
        by_customer: dict[str, list[int]] = defaultdict(list)
        fields_by_kind: dict[str, set[str]] = defaultdict(set)
        for i, item in enumerate(items):
            customer_id, kind, fields = item
            _check_customer_id(customer_id)
            spec = vault.kind(kind)
            plaintexts.append(encode_fields(spec, fields))
            kinds_of.append(kind)
            names = sorted(fields)
            field_names.append(names)
            fields_by_kind[kind].update(names)
            by_customer[customer_id].append(i)
        rids = ids.new_ids(ids.RECORD, len(items))
        cids = list(by_customer)
        now = format_ts(vault._clock())

        def seal(keys: Mapping[str, CustomerKeys], only: Sequence[str]) -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for cid in only:
                ck = keys[cid]
                env, prefix, version = ck.current, ck.record_prefix, ck.current.version
                idx = by_customer[cid]
                blobs = env.seal_many(
                    [plaintexts[i] for i in idx],
                    [record_aad_suffix(prefix, rids[i], kinds_of[i], version) for i in idx],
                )
                out.update(zip(idx, blobs, strict=True))
            return out

        keys = vault._keys.customer_keys(cids)
        sealed = seal(keys, [c for c in cids if c in keys])

        def work(tx: Tx) -> list[str]:
            only = keys.get(cids[0]) if len(cids) == 1 else None
            for kind, names in fields_by_kind.items():
                role = self._gate(
                    tx.conn, "write", "record.put", kind=kind, purpose=purpose, subject=_tag(only)
                )
                self._deny_fields(role, kind, sorted(names), "record.put", purpose, _tag(only))
            states = self._customer_states(tx.conn, cids, "record.put", purpose)
            stale = [c for c in cids if c not in keys or keys[c].current.version != states[c]]
            if stale:
                # Rotated by another process since we sealed: reload, seal those again.
                vault._keys.forget(stale)
                fresh = vault._keys.customer_keys(stale)
                keys.update(fresh)
                sealed.update(seal(fresh, stale))
            rows = []
            events = []
            for i, (cid, _kind, _fields) in enumerate(items):
                ck = keys[cid]
                rows.append((rids[i], cid, kinds_of[i], 1, ck.current.version, sealed[i], now, now))
                events.append(
                    self._event(
                        "record.put",
                        subject=ck.subject_tag.hex(),
                        record=rids[i],
                        purpose=purpose,
                        detail={"kind": kinds_of[i], "fields": field_names[i]},
                    )
                )
            vault._data.insert_many(tx.conn, records, rows)
            tx.log(*events)
            return rids

        return vault._transact(work)

    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> Record:
        """Merge ``fields`` into a record (a ``None`` value is stored as null) and
        re-encrypt it under the customer's current key; returns the new record (with
        the fields this role may see)."""
        _check_customer_id(customer_id)
        _check_record_id(record_id)
        check_name("purpose", purpose)
        vault = self._vault

        def work(tx: Tx) -> Record:
            row = self._record_rows(
                tx, [(customer_id, record_id)], purpose, "record.update", "write"
            )[0]
            kind = str(row["kind"])
            role = self._current_role(tx.conn, "record.update")
            subject = _tag(vault._keys.customer_keys([customer_id]).get(customer_id))
            self._deny_fields(role, kind, sorted(fields), "record.update", purpose, subject)
            keys = vault._keys.customer_keys([customer_id])
            old = self._decrypt(keys, customer_id, record_id, row)
            spec = vault.kind(kind)
            merged = {**old, **fields}
            plaintext = encode_fields(spec, merged)
            ck = keys[customer_id]
            env = ck.current
            blob = env.seal(
                plaintext, record_aad_suffix(ck.record_prefix, record_id, kind, env.version)
            )
            now = format_ts(vault._clock())
            version = int(row["version"]) + 1
            tx.conn.execute(
                update(records)
                .where(records.c.id == record_id)
                .values(version=version, dek_version=env.version, ciphertext=blob, updated=now)
            )
            tx.log(
                self._event(
                    "record.update",
                    subject=ck.subject_tag.hex(),
                    record=record_id,
                    purpose=purpose,
                    detail={"kind": kind, "fields": sorted(fields), "version": version},
                )
            )
            visible = role.visible(kind, merged)
            return Record(record_id, customer_id, kind, visible, version, str(row["created"]), now)

        return vault._transact(work)

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        """Delete one record (its ciphertext row). Logged as ``record.delete``."""
        _check_customer_id(customer_id)
        _check_record_id(record_id)
        check_name("purpose", purpose)
        vault = self._vault

        def work(tx: Tx) -> None:
            row = self._record_rows(
                tx, [(customer_id, record_id)], purpose, "record.delete", "delete"
            )[0]
            tx.conn.execute(delete(records).where(records.c.id == record_id))
            tag = vault._keys.customer_keys([customer_id])[customer_id].subject_tag.hex()
            tx.log(
                self._event(
                    "record.delete",
                    subject=tag,
                    record=record_id,
                    purpose=purpose,
                    detail={"kind": str(row["kind"])},
                )
            )

        vault._transact(work)

    # -- records: read ----------------------------------------------------------------

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record:
        """Read one record. See :meth:`get_many`."""
        return self.get_many([(customer_id, record_id)], purpose=purpose)[0]

    def get_many(self, pairs: Sequence[tuple[str, str]], *, purpose: str) -> list[Record]:
        """Read records ``(customer_id, record_id)``, in order, in one transaction with
        one log entry per record. No data is returned unless the entries commit. A role
        with a field allow-list gets only those fields; the entry names them."""
        if not 0 < len(pairs) <= _MAX_BATCH:
            raise SchemaError(f"a batch holds 1 to {_MAX_BATCH} records")
        check_name("purpose", purpose)
        for cid, rid in pairs:
            _check_customer_id(cid)
            _check_record_id(rid)
        return self._vault._transact(
            lambda tx: self._read_records(tx, pairs, purpose, "record.get")
        )

    def list_records(
        self, customer_id: str, *, purpose: str, kind: str | None = None
    ) -> list[Record]:
        """Every record of a customer that may be used for ``purpose`` (optionally of one
        kind), oldest first; one log entry per record returned (one if none)."""
        _check_customer_id(customer_id)
        check_name("purpose", purpose)
        vault = self._vault
        if kind is not None:
            vault.kind(kind)  # SchemaError for an undeclared kind

        def work(tx: Tx) -> list[Record]:
            subject = _tag(vault._keys.customer_keys([customer_id]).get(customer_id))
            if kind is None and not any(purpose in k.purposes for k in vault.kinds().values()):
                raise self._purpose_refusal(purpose, "record.list", subject)
            role = self._gate(
                tx.conn, "read", "record.list", kind=kind, purpose=purpose, subject=subject
            )
            self._customer_states(tx.conn, [customer_id], "record.list", purpose)
            stmt = select(records.c.id, records.c.kind).where(records.c.customer_id == customer_id)
            if kind is not None:
                stmt = stmt.where(records.c.kind == kind)
            rows = tx.conn.execute(stmt.order_by(records.c.created, records.c.id)).all()
            usable = [
                (customer_id, str(r.id))
                for r in rows
                if purpose in vault.kind(r.kind).purposes
                and role.denial("read", now="", kind=r.kind, purpose=purpose) is None
            ]
            if not usable:
                tag = vault._keys.customer_keys([customer_id])[customer_id].subject_tag.hex()
                tx.log(
                    self._event("record.list", subject=tag, purpose=purpose, detail={"count": 0})
                )
                return []
            return self._read_records(tx, usable, purpose, "record.list")

        return vault._transact(work)

    # -- internals --------------------------------------------------------------------

    def _purpose_refusal(self, purpose: str, action: str, subject: str | None) -> Exception:
        from .vault import Refusal

        ev = self._event(
            action,
            outcome="denied",
            subject=subject,
            purpose=purpose,
            detail={"reason_code": "purpose_not_declared"},
        )
        return Refusal(PurposeError(f"purpose {purpose!r} is declared for no kind"), ev)

    def _not_found(self, action: str, what: str, *, purpose: str | None = None) -> Exception:
        from .vault import Refusal

        kind = "customer" if what.startswith(ids.CUSTOMER) else "record"
        ev = self._event(
            action, outcome="error", purpose=purpose, detail={"reason_code": f"{kind}_not_found"}
        )
        return Refusal(NotFoundError(f"no {kind} {what}"), ev)

    def _customer_states(
        self, conn: Connection, cids: Sequence[str], action: str, purpose: str | None
    ) -> dict[str, int]:
        """DEK version of each customer, after checking each exists and is active."""
        from .vault import Refusal

        found = {
            str(r.id): (str(r.state), int(r.dek_version))
            for r in conn.execute(
                select(customers.c.id, customers.c.state, customers.c.dek_version).where(
                    customers.c.id.in_(bindparam("ids", expanding=True))
                ),
                {"ids": list(cids)},
            )
        }
        for cid in cids:
            if cid not in found:
                raise self._not_found(action, cid, purpose=purpose)
            if found[cid][0] != "active":
                self._vault._keys.forget([cid])
                ev = self._event(
                    action,
                    outcome="error",
                    purpose=purpose,
                    detail={"reason_code": "customer_shredded"},
                )
                raise Refusal(ShreddedError(f"customer {cid} was shredded; its data is gone"), ev)
        return {cid: v for cid, (_s, v) in found.items()}

    def _record_rows(
        self,
        tx: Tx,
        pairs: Sequence[tuple[str, str]],
        purpose: str,
        log_action: str,
        action: str = "read",
    ) -> list[RowMapping]:
        """The rows for ``pairs``, after the customer, role and purpose checks."""
        cids = list(dict.fromkeys(c for c, _ in pairs))
        self._current_role(tx.conn, log_action)
        self._customer_states(tx.conn, cids, log_action, purpose)
        rows = {
            str(r.id): r._mapping
            for r in tx.conn.execute(
                select(records).where(records.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": list(dict.fromkeys(r for _, r in pairs))},
            )
        }
        out = []
        checked: set[str] = set()
        for cid, rid in pairs:
            row = rows.get(rid)
            if row is None or row["customer_id"] != cid:
                raise self._not_found(log_action, rid, purpose=purpose)
            kind = str(row["kind"])
            if kind not in checked:
                subject = _tag(self._vault._keys.customer_keys([cid]).get(cid))
                self._gate(tx.conn, action, log_action, kind=kind, purpose=purpose, subject=subject)
                checked.add(kind)
            out.append(row)
        return out

    def _decrypt(
        self, keys: dict[str, CustomerKeys], cid: str, rid: str, row: RowMapping
    ) -> dict[str, Any]:
        env = _envelope(self._vault, keys, cid, int(row["dek_version"]))
        context = record_aad_suffix(keys[cid].record_prefix, rid, str(row["kind"]), env.version)
        fields: dict[str, Any] = json.loads(env.open(bytes(row["ciphertext"]), context))
        return fields

    def _read_records(
        self, tx: Tx, pairs: Sequence[tuple[str, str]], purpose: str, action: str
    ) -> list[Record]:
        rows = self._record_rows(tx, pairs, purpose, action)
        role = self._current_role(tx.conn, action)
        keys = self._vault._keys.customer_keys(list(dict.fromkeys(c for c, _ in pairs)))
        result: list[Record] = []
        events: list[Event] = []
        for (cid, rid), row in zip(pairs, rows, strict=True):
            kind = str(row["kind"])
            fields = role.visible(kind, self._decrypt(keys, cid, rid, row))
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
                self._event(
                    action,
                    subject=keys[cid].subject_tag.hex(),
                    record=rid,
                    purpose=purpose,
                    detail={"kind": kind, "fields": sorted(fields)},
                )
            )
        tx.log(*events)
        return result


def load_role(conn: Connection, name: str) -> Role | None:
    """A built-in role, or a custom one from the data store; None if there is none."""
    builtin = BUILTIN_ROLES.get(name)
    if builtin is not None:
        return builtin
    spec = conn.execute(select(roles.c.spec).where(roles.c.name == name)).scalar()
    return None if spec is None else Role.from_json(json.loads(spec))


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


def _envelope(vault: Vault, keys: dict[str, CustomerKeys], cid: str, version: int) -> Envelope:
    ck = keys.get(cid)
    if ck is None or version not in ck.versions:
        vault._keys.forget([cid])  # another process may have rotated this customer's key
        ck = vault._keys.customer_keys([cid]).get(cid)
        if ck is None or version not in ck.versions:
            raise DecryptionError(f"no key version {version} for customer {cid}")
        keys[cid] = ck
    return ck.versions[version]


def _tag(keys: CustomerKeys | None) -> str | None:
    return None if keys is None else keys.subject_tag.hex()


def _customer(row: RowMapping) -> Customer:
    return Customer(
        id=str(row["id"]),
        ref=row["ref"],
        state=str(row["state"]),
        consent=json.loads(row["consent"]),
        retain_until=row["retain_until"],
        legal_hold=bool(row["legal_hold"]),
        created=str(row["created"]),
        shredded=row["shredded"],
    )


def _expired(now: str) -> Any:
    """Active customers whose retain-until time has passed, oldest first."""
    return (
        select(customers.c.id, customers.c.legal_hold, customers.c.retain_until)
        .where(
            customers.c.state == "active",
            customers.c.retain_until.is_not(None),
            customers.c.retain_until < now,
        )
        .order_by(customers.c.retain_until, customers.c.id)
    )


def _check_customer_id(value: object) -> None:
    if not ids.is_id(value, ids.CUSTOMER):
        raise NotFoundError("not a customer id (expected cus_ and 26 base32 characters)")


def _check_record_id(value: object) -> None:
    if not ids.is_id(value, ids.RECORD):
        raise NotFoundError("not a record id (expected rec_ and 26 base32 characters)")
