"""A principal's view of the vault: every public method is one short call into an
operation, with this session's context and actor (:mod:`.actor` holds the gate).

Each call is one or more logged transactions: the actor's role is re-read, checked
for the action, kind and purpose, and only then is data touched; a denial rolls the
work back and commits a ``denied`` entry on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, BinaryIO, NoReturn

from .access import Role
from .actor import Actor
from .audit_reports import audit_query, audit_report
from .backup import BackupInfo, backup_list, create_backup, forget_backup
from .certificate import Certificate
from .checkpoint import Checkpoint
from .context import Tx, load_keyfile_key
from .customers import (
    add_customer,
    customer_by_ref,
    declare_unique_refs,
    list_customers,
    set_hold,
    show_customer,
)
from .decommission import decommission
from .handover_complete import HandoverCompletion, complete_package
from .handover_export import HandoverExport, export_package
from .handover_import import HandoverImport, import_package
from .inputs import check_customer_id
from .kinds import alter_kind, declare_kind, list_kinds
from .log import Event
from .model import Customer, ExpiredCustomers, Page, Principal, Record, ShredExpiredResult
from .package import HandoverKey
from .principals import add_principal, add_role, list_principals, list_roles, revoke_principal
from .receipt import Receipt
from .records import PutItem, delete_record, get_many, list_records, put_many, update_record
from .retention import expired_customers, set_retention, shred_expired
from .rotate import (
    KeyPolicy,
    KeyStatus,
    change_passphrase,
    key_status,
    retire_epoch,
    rotate_dek,
    rotate_deks,
    rotate_kek,
)
from .schema import KindSpec
from .shred import compact, shred_one
from .storecheck import StoreCheck, check_store
from .subject_report import customer_report, customer_report_from_receipt

__all__ = ["Session"]


class Session:
    """The vault as seen by one principal (or by the unlocking administrator)."""

    def __init__(self, actor: Actor) -> None:
        self._actor = actor
        self._ctx = actor.ctx
        #: who acts (a principal's name, or ``admin``) and its role's name
        self.actor = actor.name
        self.role = actor.role.name

    def __repr__(self) -> str:
        return f"<Session actor={self.actor!r} role={self.role!r}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("sessions cannot be pickled")

    # -- schema and checkpoints ------------------------------------------------

    def declare_kind(
        self, name: str, *, fields: Iterable[str], purposes: Iterable[str]
    ) -> KindSpec:
        """Declare (or redeclare) a record kind: the fields it may hold and the purposes
        it may be used for; returns it. Needs ``admin``; logged as ``schema.declare``.

        Raises :class:`SchemaError` for a bad name (nothing logged) or
        :class:`AccessDeniedError` (logged as denied); either way nothing changes."""
        return declare_kind(self._ctx, self._actor, name, fields=fields, purposes=purposes)

    def alter_kind(
        self,
        name: str,
        *,
        add_fields: Iterable[str] = (),
        deprecate_fields: Iterable[str] = (),
        add_purposes: Iterable[str] = (),
    ) -> KindSpec:
        """Evolve a declared kind without rewriting its records: add fields (a
        deprecated one becomes writable again), deprecate fields (still read, removed
        by an update setting them to None, never written again), add purposes; returns
        it. Needs ``admin``; logged as ``schema.alter``. :class:`SchemaError` (nothing
        changed or logged) for an undeclared kind, an unknown field or no change."""
        return alter_kind(
            self._ctx,
            self._actor,
            name,
            add_fields=add_fields,
            deprecate_fields=deprecate_fields,
            add_purposes=add_purposes,
        )

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind (names, fields, purposes: schema, no personal data).
        Needs ``list``; logged as one ``schema.list`` entry."""
        return list_kinds(self._ctx, self._actor)

    def check_store(self, *, progress: Callable[[int], None] | None = None) -> StoreCheck:
        """Check every authenticated row of the data store (vault/storecheck.py): the
        rows that fail their authenticator or were rolled back, by table and id.
        Needs ``audit``; logged as one ``store.check`` entry (counts only)."""
        return check_store(self._ctx, self._actor, progress=progress)

    def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint at the log head now and return it (see
        :meth:`Vault.checkpoint`). Needs ``audit``; logged as ``audit.checkpoint``.
        A denial is logged and signs nothing new."""
        actor = self._actor

        def entry(tx: Tx) -> Event:
            actor.gate(tx.conn, "audit", "audit.checkpoint")
            return actor.event("audit.checkpoint")

        return self._ctx.sign_checkpoint(entry)

    # -- customers -------------------------------------------------------------

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: datetime | None = None,
    ) -> str:
        """Create a customer with fresh keys; returns its id. ``ref`` is an application
        reference (not personal data); ``consent`` flags such as ``{"transfer": True}``."""
        return add_customer(
            self._ctx, self._actor, ref=ref, consent=consent, retain_until=retain_until
        )

    def customer(self, customer_id: str) -> Customer:
        """A customer's metadata (also for shredded customers). Logged."""
        return show_customer(self._ctx, self._actor, customer_id)

    def customer_by_ref(self, ref: str) -> Customer:
        """The customer whose application reference is ``ref``; gated and logged like
        :meth:`customer`. :class:`NotFoundError` when none has it,
        :class:`DuplicateRefError` when several do (refs not declared unique)."""
        return customer_by_ref(self._ctx, self._actor, ref)

    def set_unique_refs(self, unique: bool) -> None:
        """Declare customer refs unique in this vault (or stop): while on, adding a
        customer with a ref another customer has is refused (:class:`DuplicateRefError`,
        nothing written), in the database too (a unique index). Turning it on is refused
        while customers share a ref. Needs ``admin``; logged as ``customer.refs``."""
        declare_unique_refs(self._ctx, self._actor, unique)

    def list_customers(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Page[Customer]:
        """Customers' metadata (optionally in one state), logged as one entry: all of
        them, oldest first, or with ``limit``/``after`` one page in id order whose
        ``next`` is the cursor for the following page (None after the last)."""
        return list_customers(self._ctx, self._actor, state=state, limit=limit, after=after)

    def hold(self, customer_id: str) -> None:
        """Put a customer under legal hold: it cannot be shredded until released."""
        set_hold(self._ctx, self._actor, customer_id, True)

    def release(self, customer_id: str) -> None:
        """Release a customer's legal hold."""
        set_hold(self._ctx, self._actor, customer_id, False)

    def set_retention(self, customer_id: str, retain_until: datetime | str | None) -> str | None:
        """Change when a customer's data is due for erasure (``None``: keep until
        shredded on request). Admin only; logged as ``customer.retain`` with the new
        time. Returns it, normalized (RFC 3339 UTC). The next ``shred_expired`` uses it."""
        return set_retention(self._ctx, self._actor, customer_id, retain_until)

    # -- erasure ---------------------------------------------------------------

    def shred(self, customer_id: str, *, reason: str) -> Receipt:
        """Crypto-shred a customer: destroy its keys so every copy of its records is
        unreadable, in time independent of how many records it has. Returns a signed
        erasure receipt. ``reason`` is logged: keep personal data out of it.

        Raises :class:`NotFoundError`, :class:`ShreddedError` (already shredded),
        :class:`LegalHoldError` or :class:`AccessDeniedError`; each is logged and
        changes nothing."""
        return shred_one(self._ctx, self._actor, customer_id, reason=reason)

    def shred_expired(
        self,
        *,
        reason: str = "retention period ended",
        progress: Callable[[int], None] | None = None,
    ) -> ShredExpiredResult:
        """Shred every active customer whose ``retain_until`` has passed, except those
        under legal hold (reported as ``held``)."""
        return shred_expired(self._ctx, self._actor, reason=reason, progress=progress)

    def expired_customers(self) -> ExpiredCustomers:
        """Who :meth:`shred_expired` would shred now, and who a legal hold keeps: a dry
        run that changes nothing. Needs the ``shred`` action; logged as one
        ``customer.list`` entry (counts only)."""
        return expired_customers(self._ctx, self._actor)

    def compact(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Delete ciphertext rows of shredded customers (unreadable junk); returns the
        number removed. Each batch commits on its own: safe to interrupt."""
        return compact(self._ctx, self._actor, progress)

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
        return decommission(
            self._ctx,
            self._actor,
            reason=reason,
            override_holds=override_holds,
            progress=progress,
            on_certificate=on_certificate,
        )

    # -- keys (admin; status also for auditors) --------------------------------

    def rotate_kek(
        self, *, retire: bool = False, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """New KEK epoch; re-wrap every DEK under it in batches (resumable)."""
        return rotate_kek(self._ctx, self._actor, retire=retire, progress=progress)

    def retire_epoch(self, epoch: int) -> None:
        """Delete a KEK epoch that no DEK uses any more."""
        retire_epoch(self._ctx, self._actor, epoch)

    def rotate_dek(self, customer_id: str) -> int:
        """New DEK version for one customer, records re-encrypted, old version deleted."""
        return rotate_dek(self._ctx, self._actor, check_customer_id(customer_id))

    def rotate_deks(
        self,
        *,
        older_than_days: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Rotate the DEK of every active customer (or those older than N days)."""
        return rotate_deks(
            self._ctx, self._actor, older_than_days=older_than_days, progress=progress
        )

    def change_passphrase(
        self, *, passphrase: bytes | None = None, keyfile: str | None = None
    ) -> None:
        """Re-wrap the root-wrapped keys under a new passphrase or keyfile (O(epochs))."""
        change_passphrase(
            self._ctx,
            self._actor,
            passphrase=passphrase,
            keyfile_key=load_keyfile_key(keyfile),
        )

    def key_status(self, policy: KeyPolicy | None = None) -> KeyStatus:
        """Key ages, DEKs per epoch, KDF parameters vs recommendation, violations."""
        return key_status(self._ctx, self._actor, policy)

    # -- reports ---------------------------------------------------------------

    def customer_report(self, customer_id: str) -> dict[str, Any]:
        """Everything held about a customer, decrypted, with its access history and a
        signed checkpoint (the subject access report). Admin or a role with export."""
        return customer_report(self._ctx, self._actor, check_customer_id(customer_id))

    def customer_report_from_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """The subject access report of a shredded customer, through its erasure receipt
        (see :func:`.subject_report.customer_report_from_receipt`). VerificationError if
        the receipt does not verify against this vault. Admin or a role with export."""
        return customer_report_from_receipt(self._ctx, self._actor, receipt)

    def audit_query(
        self, *, limit: int | None = None, after: str | None = None, **filters: str | None
    ) -> dict[str, Any]:
        """Which customers and records were touched (actor, role, action, outcome,
        since, until): the breach-scope question. Ids only, never plaintext. With
        ``limit``, at most that many entries after the cursor ``after``; the result's
        ``next`` continues."""
        return audit_query(self._ctx, self._actor, limit=limit, after=after, **filters)

    def audit_report(self, *, full: bool = False) -> dict[str, Any]:
        """The inspector's one-page report (see :func:`.audit_reports.audit_report`)."""
        return audit_report(self._ctx, self._actor, full=full)

    # -- backups ---------------------------------------------------------------

    def backup(
        self,
        out: str | BinaryIO,
        *,
        expires_days: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Write a signed backup archive (a consistent snapshot of both stores) and
        return its manifest. Logged as ``backup.create``; counts on the key-copy clock."""
        return create_backup(
            self._ctx, self._actor, out, expires_days=expires_days, progress=progress
        )

    def backups(self) -> list[BackupInfo]:
        """Recorded backups with where they were written, their state and how many
        customers were shredded since each."""
        return backup_list(self._ctx, self._actor)

    def forget_backup(self, backup_id: str) -> BackupInfo:
        """Retire a backup whose archive was destroyed: it stops counting on the
        key-copy clock. Admin only; logged as ``backup.forget``."""
        return forget_backup(self._ctx, self._actor, backup_id)

    # -- business handover -----------------------------------------------------

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
        return export_package(
            self._ctx,
            self._actor,
            recipient_public_key,
            out,
            customer_ids=customers,
            progress=progress,
        )

    def handover_import(
        self,
        package: str,
        key: HandoverKey,
        *,
        seller_public_key: bytes | None = None,
        accept_unverified_seller: bool = False,
        declare_kinds: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverImport:
        """Verify a handover package completely, then import its customers and records
        in one transaction (admin). Nothing is written when anything fails. Without
        ``seller_public_key`` it refuses (NoTrustedKeyError) unless
        ``accept_unverified_seller`` is set, which the log entry records."""
        return import_package(
            self._ctx,
            self._actor,
            package,
            key,
            seller_public_key=seller_public_key,
            accept_unverified_seller=accept_unverified_seller,
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
        return complete_package(
            self._ctx, self._actor, package, receipts_dir=receipts_dir, progress=progress
        )

    # -- principals and roles (admin only) -------------------------------------

    def add_principal(self, name: str, *, role: str, expires: datetime | None = None) -> str:
        """Create a principal and return its token: shown once, stored only as SHA-256."""
        return add_principal(self._ctx, self._actor, name, role=role, expires=expires)

    def revoke_principal(self, name: str) -> None:
        """Revoke a principal's token at once (in every process)."""
        revoke_principal(self._ctx, self._actor, name)

    def list_principals(self) -> list[Principal]:
        """Every principal (never a token or its hash)."""
        return list_principals(self._ctx, self._actor)

    def add_role(self, role: Role, *, replace: bool = False) -> None:
        """Add a custom role (built from :meth:`Role.build`).

        A role of that name that exists already raises :class:`SchemaError` and nothing
        changes, unless ``replace``: then the new spec takes its place for its
        principals' very next call, logged as ``role.add`` with ``detail.replaced``."""
        add_role(self._ctx, self._actor, role, replace=replace)

    def list_roles(self) -> list[Role]:
        """Built-in and custom roles."""
        return list_roles(self._ctx, self._actor)

    # -- records ---------------------------------------------------------------

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        """Store one record; returns its id. See :meth:`put_many`."""
        return self.put_many([(customer_id, kind, fields)], purpose=purpose)[0]

    def put_many(self, items: Sequence[PutItem], *, purpose: str) -> list[str]:
        """Store records ``(customer_id, kind, fields)`` in one transaction and one
        ``executemany``; one log entry per record. All or nothing: an undeclared kind or
        field (:class:`SchemaError`), a purpose not declared or not allowed, a field
        outside the role's allow-list (:class:`AccessDeniedError`), or an unknown or
        shredded customer stores none of them."""
        return put_many(self._ctx, self._actor, items, purpose=purpose)

    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> Record:
        """Merge ``fields`` into a record (a ``None`` value is stored as null; for a
        deprecated field, or one dropped from the kind, it removes the field, which is
        otherwise kept as stored) and re-encrypt it under the customer's current key;
        returns the new record (with the fields this role may see)."""
        return update_record(
            self._ctx, self._actor, customer_id, record_id, fields, purpose=purpose
        )

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        """Delete one record (its ciphertext row). Logged as ``record.delete``."""
        delete_record(self._ctx, self._actor, customer_id, record_id, purpose=purpose)

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record:
        """Read one record. See :meth:`get_many`."""
        return self.get_many([(customer_id, record_id)], purpose=purpose)[0]

    def get_many(self, pairs: Sequence[tuple[str, str]], *, purpose: str) -> list[Record]:
        """Read records ``(customer_id, record_id)``, in order, in one transaction with
        one log entry per record. No data is returned unless the entries commit. A role
        with a field allow-list gets only those fields; the entry names them."""
        return get_many(self._ctx, self._actor, pairs, purpose=purpose)

    def list_records(
        self,
        customer_id: str,
        *,
        purpose: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Record]:
        """Every record of a customer that may be used for ``purpose`` (optionally of one
        kind), oldest first; one log entry per record returned (one if none). With
        ``limit``/``after`` one page; its ``next`` is the cursor for the following one."""
        return list_records(
            self._ctx,
            self._actor,
            customer_id,
            purpose=purpose,
            kind=kind,
            limit=limit,
            after=after,
        )
