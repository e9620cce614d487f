"""Acting on the vault as a principal: customers and records, every access logged."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, RowMapping, bindparam, delete, insert, select, update

from keys import DecryptionError, Envelope, record_aad
from keys.envelope import record_aad_suffix

from . import ids
from .clock import format_ts
from .errors import (
    AccessDeniedError,
    LegalHoldError,
    NotFoundError,
    PurposeError,
    SchemaError,
    ShreddedError,
)
from .log import Event
from .model import Customer, Record, ShredExpiredResult
from .receipt import Receipt
from .schema import check_name, encode_fields
from .shred import check_reason, compact, shred_customer
from .store import customers, records

if TYPE_CHECKING:
    from keys import CustomerKeys

    from .vault import Tx, Vault

__all__ = ["Session"]

_MAX_BATCH = 10_000
_MAX_REF = 200

PutItem = tuple[str, str, Mapping[str, Any]]


class Session:
    """The vault as seen by one principal. Every call is one logged transaction."""

    def __init__(self, vault: Vault, *, actor: str, role: str) -> None:
        self._vault = vault
        self.actor = actor
        self.role = role

    def __repr__(self) -> str:
        return f"<Session actor={self.actor!r} role={self.role!r}>"

    def _event(self, action: str, **kw: Any) -> Event:
        return Event(self.actor, self.role, action, **kw)

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
        until = format_ts(retain_until) if retain_until is not None else None
        vault = self._vault
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

    def _set_hold(self, customer_id: str, held: bool) -> None:
        _check_customer_id(customer_id)
        action = "customer.hold" if held else "customer.release"
        self._require_admin(action)
        vault = self._vault

        def work(tx: Tx) -> None:
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

        Raises :class:`NotFoundError`, :class:`ShreddedError` (already shredded) or
        :class:`LegalHoldError`; each is logged and changes nothing."""
        _check_customer_id(customer_id)
        check_reason(reason)
        self._require_admin("customer.shred")
        return shred_customer(self._vault, self.actor, self.role, customer_id, reason)

    def shred_expired(
        self,
        *,
        reason: str = "retention period ended",
        progress: Callable[[int], None] | None = None,
    ) -> ShredExpiredResult:
        """Shred every active customer whose ``retain_until`` has passed, except those
        under legal hold (reported as ``held``)."""
        check_reason(reason)
        self._require_admin("customer.shred")
        vault = self._vault
        now = format_ts(vault._clock())
        due = select(customers.c.id, customers.c.legal_hold).where(
            customers.c.state == "active",
            customers.c.retain_until.is_not(None),
            customers.c.retain_until < now,
        )
        rows = vault._data.read(lambda conn: conn.execute(due).all())
        receipts: list[Receipt] = []
        held: list[str] = []
        for row in rows:
            if row.legal_hold:
                held.append(str(row.id))
                continue
            try:
                receipts.append(shred_customer(vault, self.actor, self.role, str(row.id), reason))
            except (ShreddedError, LegalHoldError):
                held.append(str(row.id))  # changed by another process meanwhile
            if progress is not None:
                progress(1)
        return ShredExpiredResult(receipts, held)

    def compact(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Delete ciphertext rows of shredded customers (unreadable junk); returns the
        number removed. Each batch commits on its own: safe to interrupt."""
        self._require_admin("vault.compact")
        return compact(self._vault, self.actor, self.role, progress)

    def _require_admin(self, action: str) -> None:
        from .vault import Refusal

        if self.role != "admin":
            ev = self._event(action, outcome="denied", detail={"reason_code": "role"})
            try:
                raise Refusal(AccessDeniedError(f"role {self.role!r} may not {action}"), ev)
            except Refusal as refusal:
                self._vault._log_refusal(refusal)

    # -- records: write --------------------------------------------------------------

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        """Store one record; returns its id. See :meth:`put_many`."""
        return self.put_many([(customer_id, kind, fields)], purpose=purpose)[0]

    def put_many(self, items: Sequence[PutItem], *, purpose: str) -> list[str]:
        """Store records ``(customer_id, kind, fields)`` in one transaction and one
        ``executemany``; one log entry per record. All or nothing: any undeclared kind,
        field or purpose (:class:`SchemaError`/:class:`PurposeError`), unknown or
        shredded customer stores none of them."""
        if not 0 < len(items) <= _MAX_BATCH:
            raise SchemaError(f"a batch holds 1 to {_MAX_BATCH} records")
        check_name("purpose", purpose)
        vault = self._vault
        plaintexts: list[bytes] = []
        kinds_of: list[str] = []
        field_names: list[list[str]] = []
        by_customer: dict[str, list[int]] = defaultdict(list)
        checked: set[str] = set()
        for i, item in enumerate(items):
            customer_id, kind, fields = item
            _check_customer_id(customer_id)
            spec = vault.kind(kind)
            if kind not in checked:
                self._check_purpose(spec.name, purpose, "record.put")
                checked.add(kind)
            plaintexts.append(encode_fields(spec, fields))
            kinds_of.append(kind)
            field_names.append(sorted(fields))
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
        re-encrypt it under the customer's current key; returns the new record."""
        _check_customer_id(customer_id)
        _check_record_id(record_id)
        check_name("purpose", purpose)
        vault = self._vault

        def work(tx: Tx) -> Record:
            old = self._read_records(tx, [(customer_id, record_id)], purpose, "record.update")[0]
            spec = vault.kind(old.kind)
            merged = {**old.fields, **fields}
            plaintext = encode_fields(spec, merged)
            ck = vault._keys.customer_keys([customer_id])[customer_id]
            env = ck.current
            blob = env.seal(
                plaintext, record_aad(vault.vault_id, customer_id, record_id, old.kind, env.version)
            )
            now = format_ts(vault._clock())
            tx.conn.execute(
                update(records)
                .where(records.c.id == record_id)
                .values(
                    version=old.version + 1, dek_version=env.version, ciphertext=blob, updated=now
                )
            )
            tx.events.clear()  # replace the read entry with the update entry
            tx.log(
                self._event(
                    "record.update",
                    subject=ck.subject_tag.hex(),
                    record=record_id,
                    purpose=purpose,
                    detail={"kind": old.kind, "fields": sorted(fields), "version": old.version + 1},
                )
            )
            return Record(
                record_id, customer_id, old.kind, merged, old.version + 1, old.created, now
            )

        return vault._transact(work)

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        """Delete one record (its ciphertext row). Logged as ``record.delete``."""
        _check_customer_id(customer_id)
        _check_record_id(record_id)
        check_name("purpose", purpose)
        vault = self._vault

        def work(tx: Tx) -> None:
            row = self._record_rows(tx, [(customer_id, record_id)], purpose, "record.delete")[0]
            tx.conn.execute(delete(records).where(records.c.id == record_id))
            tag = vault._keys.customer_keys([customer_id])[customer_id].subject_tag.hex()
            tx.log(
                self._event(
                    "record.delete",
                    subject=tag,
                    record=record_id,
                    purpose=purpose,
                    detail={"kind": row["kind"]},
                )
            )

        vault._transact(work)

    # -- records: read ----------------------------------------------------------------

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record:
        """Read one record. See :meth:`get_many`."""
        return self.get_many([(customer_id, record_id)], purpose=purpose)[0]

    def get_many(self, pairs: Sequence[tuple[str, str]], *, purpose: str) -> list[Record]:
        """Read records ``(customer_id, record_id)``, in order, in one transaction with
        one log entry per record. No data is returned unless the entries commit."""
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
            self._check_purpose(vault.kind(kind).name, purpose, "record.list")

        def work(tx: Tx) -> list[Record]:
            self._customer_states(tx.conn, [customer_id], "record.list", purpose)
            stmt = select(records.c.id, records.c.kind).where(records.c.customer_id == customer_id)
            if kind is not None:
                stmt = stmt.where(records.c.kind == kind)
            rows = tx.conn.execute(stmt.order_by(records.c.created, records.c.id)).all()
            usable = [
                (customer_id, str(r.id)) for r in rows if purpose in vault.kind(r.kind).purposes
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

    def _check_purpose(self, kind: str, purpose: str, action: str) -> None:
        from .vault import Refusal

        try:
            self._vault.kind(kind).check_purpose(purpose)
        except PurposeError as error:
            denied = self._event(
                action,
                outcome="denied",
                purpose=purpose,
                detail={"kind": kind, "reason": "purpose_not_declared"},
            )
            raise Refusal(error, denied) from None

    def _not_found(self, action: str, what: str, *, purpose: str | None = None) -> Exception:
        from .vault import Refusal

        kind = "customer" if what.startswith(ids.CUSTOMER) else "record"
        ev = self._event(
            action, outcome="error", purpose=purpose, detail={"reason": f"{kind}_not_found"}
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
                    action, outcome="error", purpose=purpose, detail={"reason": "customer_shredded"}
                )
                raise Refusal(ShreddedError(f"customer {cid} was shredded; its data is gone"), ev)
        return {cid: v for cid, (_s, v) in found.items()}

    def _record_rows(
        self, tx: Tx, pairs: Sequence[tuple[str, str]], purpose: str, action: str
    ) -> list[RowMapping]:
        cids = list(dict.fromkeys(c for c, _ in pairs))
        self._customer_states(tx.conn, cids, action, purpose)
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
                raise self._not_found(action, rid, purpose=purpose)
            if row["kind"] not in checked:
                self._check_purpose(str(row["kind"]), purpose, action)
                checked.add(row["kind"])
            out.append(row)
        return out

    def _read_records(
        self, tx: Tx, pairs: Sequence[tuple[str, str]], purpose: str, action: str
    ) -> list[Record]:
        vault = self._vault
        rows = self._record_rows(tx, pairs, purpose, action)
        keys = vault._keys.customer_keys(list(dict.fromkeys(c for c, _ in pairs)))
        result: list[Record] = []
        events: list[Event] = []
        for (cid, rid), row in zip(pairs, rows, strict=True):
            env = _envelope(vault, keys, cid, int(row["dek_version"]))
            kind = str(row["kind"])
            context = record_aad_suffix(keys[cid].record_prefix, rid, kind, env.version)
            plaintext = env.open(bytes(row["ciphertext"]), context)
            fields = json.loads(plaintext)
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


def _check_customer_id(value: object) -> None:
    if not ids.is_id(value, ids.CUSTOMER):
        raise NotFoundError("not a customer id (expected cus_ and 26 base32 characters)")


def _check_record_id(value: object) -> None:
    if not ids.is_id(value, ids.RECORD):
        raise NotFoundError("not a record id (expected rec_ and 26 base32 characters)")
