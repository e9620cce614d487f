"""Handover export (seller): consenting customers' records, re-sealed for an acquirer.

Export writes a temporary file, fsyncs it, commits the ``customer.handover`` entries
and only then links the file into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select

from ..keys import (
    DecryptionError,
    SecretBytes,
)
from ..keys.sealed import (
    PACKAGE_KEY_SIZE,
    PackageCipher,
    handover_fingerprint,
    seal_package_key,
)
from . import ids
from .actor import Actor
from .canonical import canonical
from .context import Refusal, Tx, VaultContext
from .errors import (
    AccessDeniedError,
    NotFoundError,
    NoticeWindowError,
    SchemaError,
    ShreddedError,
    StorageError,
    TamperError,
)
from .faults import crash_point
from .files import PartialFile, check_absent
from .inputs import check_customer_id
from .package import (
    CUSTOMER,
    KEY,
    MANIFEST,
    MANIFEST_TYPE,
    PURPOSE,
    RECORD,
    SIGNATURE,
    U32,
    PackageWriter,
    parts,
    record_aad,
)
from .routine import consent_in_force, notice_refusals
from .sealing import envelope, open_record, record_version
from .store import customers, records

__all__ = ["HandoverExport", "export_package"]

_BATCH = 100  # customers read, decrypted and re-sealed per data-store read


@dataclass(frozen=True, slots=True)
class HandoverExport:
    """What an export wrote: ids and counts only."""

    package: str
    path: str
    customers: int
    records: int
    excluded_no_consent: int
    excluded_shredded: int
    recipient_fingerprint: str
    manifest_sha256: str
    created: str

    @property
    def excluded(self) -> int:
        return self.excluded_no_consent + self.excluded_shredded

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "path": self.path,
            "customers": self.customers,
            "records": self.records,
            "excluded": self.excluded,
            "excluded_no_consent": self.excluded_no_consent,
            "excluded_shredded": self.excluded_shredded,
            "recipient_fingerprint": self.recipient_fingerprint,
            "manifest_sha256": self.manifest_sha256,
            "created": self.created,
        }


def export_package(
    ctx: VaultContext,
    actor: Actor,
    recipient_public_key: bytes,
    out: str | os.PathLike[str],
    *,
    customer_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    require_notice_window: bool = False,
) -> HandoverExport:
    """Write a package for the acquirer holding ``recipient_public_key``: every active
    customer (of ``customer_ids``, or all) whose consent has ``transfer: True``.

    Raises AccessDeniedError (logged), NotFoundError (an unknown id in
    ``customer_ids``), StorageError (``out`` exists). On any failure, including a
    failed log write, no file is left at ``out`` and no handover entry is committed."""
    if not isinstance(recipient_public_key, bytes) or len(recipient_public_key) != 32:
        raise SchemaError("the acquirer's public key must be 32 bytes (X25519)")
    target = Path(out)
    check_absent(target)
    if not target.parent.is_dir():
        raise StorageError(f"{target.parent} is not a directory")
    actor.authorize("export", "handover.export")
    chosen, no_consent, shredded = _select(ctx, customer_ids)
    if require_notice_window:
        _require_notice_window(ctx, actor, chosen)
    kinds_used = _kinds_of(ctx, chosen)
    _gate_kinds(ctx, actor, kinds_used)

    package_id = ids.new_id("pkg_")
    created = ctx.now()
    fingerprint = handover_fingerprint(recipient_public_key)
    package_key = SecretBytes(os.urandom(PACKAGE_KEY_SIZE))
    sealed_key = seal_package_key(recipient_public_key, package_key)
    cipher = PackageCipher(package_key)
    package_key.wipe()
    partial = PartialFile(target)  # removes one an export that crashed left
    counts: dict[str, int] = {}
    try:
        with partial.writing() as handle:  # fsynced when the block ends
            writer = PackageWriter(handle)
            writer.frame(KEY, sealed_key)
            index = hashlib.sha256()
            for start in range(0, len(chosen), _BATCH):
                batch = chosen[start : start + _BATCH]
                sealed = _sealed_customers(ctx, batch, package_id, cipher, writer, kinds_used)
                for cid, payload, n in sealed:
                    index.update(U32.pack(len(payload)) + payload)
                    counts[cid] = n
                    if progress is not None:
                        progress(n)
                ctx.keys.forget(batch)  # keep memory flat: the cache would hold them all
                crash_point("handover:export-batch")
            specs = ctx.kinds()
            manifest = {
                "type": MANIFEST_TYPE,
                "v": 1,
                "package": package_id,
                "purpose": PURPOSE,
                "seller_vault": ctx.vault_id,
                "seller_public_key": "ed25519:" + ctx.public_key.hex(),
                "recipient_fingerprint": fingerprint,
                "created": created,
                "customers": len(counts),
                "records": sum(counts.values()),
                "excluded": len(no_consent) + len(shredded),
                "excluded_no_consent": len(no_consent),
                "excluded_shredded": len(shredded),
                "kinds": {k: specs[k].to_json() for k in sorted(kinds_used)},
                "sealed_key_sha256": hashlib.sha256(sealed_key).hexdigest(),
                "customer_index_sha256": index.hexdigest(),
            }
            body = canonical(manifest)
            manifest_offset = writer.offset
            writer.frame(MANIFEST, body)
            writer.frame(SIGNATURE, ctx.keys.signer.sign(body))
            writer.trailer(manifest_offset)
        crash_point("handover:before-log")
        manifest_sha256 = hashlib.sha256(body).hexdigest()
        _log_export(ctx, actor, package_id, counts, manifest, manifest_sha256)
    except BaseException:
        partial.discard()
        raise
    crash_point("handover:after-log")
    partial.publish()
    return HandoverExport(
        package_id,
        str(target),
        len(counts),
        sum(counts.values()),
        len(no_consent),
        len(shredded),
        fingerprint,
        manifest_sha256,
        created,
    )


def _select(
    ctx: VaultContext, customer_ids: Sequence[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """(exported, excluded for lack of consent, excluded as not active), in a stable order."""
    stmt = select(customers)
    if customer_ids is not None:
        wanted = list(dict.fromkeys(customer_ids))
        for cid in wanted:
            check_customer_id(cid)
        rows = ctx.read_in(stmt, customers.c.id, wanted)
        found = {str(r.id) for r in rows}
        missing = [c for c in wanted if c not in found]
        if missing:
            raise NotFoundError(f"no customer {missing[0]}")
        order = {cid: i for i, cid in enumerate(wanted)}
        rows.sort(key=lambda r: order[str(r.id)])
    else:
        rows = ctx.data.read(
            lambda conn: list(conn.execute(stmt.order_by(customers.c.created, customers.c.id)))
        )
    # consent and state as the vault wrote them
    ctx.require_rows("sv_customers", [r._mapping for r in rows])
    chosen, no_consent, gone = [], [], []
    for row in rows:
        if row.state != "active":
            gone.append(str(row.id))
        elif json.loads(row.consent).get("transfer") is True:
            chosen.append(str(row.id))
        else:
            no_consent.append(str(row.id))
    return chosen, no_consent, gone


def _require_notice_window(ctx: VaultContext, actor: Actor, chosen: Sequence[str]) -> None:
    """Refuse the export (logged, :class:`NoticeWindowError` naming every customer and
    why) unless each chosen customer had a transfer notice delivered whose objection
    window has passed, and did not object (docs/requests.md)."""

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "export", "handover.export", purpose=PURPOSE)
        try:
            refused = notice_refusals(tx.conn, ctx.keys.row_auth, chosen, ctx.now())
        except TamperError as error:
            raise actor.tamper_refusal(error, "handover.export") from None
        if refused:
            counts: dict[str, int] = {}
            for why in refused.values():
                counts[why] = counts.get(why, 0) + 1
            ev = actor.event(
                "handover.export",
                outcome="error",
                detail={"reason_code": "notice_window", "customers": dict(sorted(counts.items()))},
            )
            shown = ", ".join(f"{c} ({w})" for c, w in list(refused.items())[:20])
            more = f" and {len(refused) - 20} more" if len(refused) > 20 else ""
            raise Refusal(
                NoticeWindowError(
                    f"{len(refused)} customer(s) may not be handed over yet: {shown}{more}; "
                    "nothing was written",
                    customers=refused,
                ),
                ev,
            )

    ctx.transact(work)


def _kinds_of(ctx: VaultContext, chosen: Sequence[str]) -> set[str]:
    stmt = select(records.c.kind).distinct()
    return {str(r.kind) for r in ctx.read_in(stmt, records.c.customer_id, chosen)}


def _gate_kinds(
    ctx: VaultContext, actor: Actor, kinds_used: set[str], tx: Tx | None = None
) -> None:
    """The role must be allowed to export for the handover's purpose and every kind,
    whole (no field allow-list). Checked before anything is read and again in the
    transaction that logs the export (``tx``), so a role narrowed meanwhile exports
    nothing."""

    def work(tx: Tx) -> None:
        actor.gate(tx.conn, "export", "handover.export", purpose=PURPOSE)
        for kind in sorted(kinds_used):
            role = actor.gate(tx.conn, "export", "handover.export", kind=kind)
            if role.fields_for(kind) is not None:
                ev = actor.event(
                    "handover.export",
                    outcome="denied",
                    detail={"kind": kind, "reason_code": "field_not_allowed"},
                )
                raise Refusal(
                    AccessDeniedError(
                        f"role {actor.role.name!r} sees only some fields of {kind}; a handover "
                        "carries whole records"
                    ),
                    ev,
                )

    if tx is None:
        ctx.transact(work)
    else:
        work(tx)


def _sealed_customers(
    ctx: VaultContext,
    batch: list[str],
    package_id: str,
    cipher: PackageCipher,
    writer: PackageWriter,
    kinds: set[str],
) -> Iterator[tuple[str, bytes, int]]:
    """Decrypt a batch of customers' records, re-seal each under the package key and
    write its frames; yields (customer, its entry's payload, record count). A record of
    a kind outside ``kinds`` (the kinds gated, added since) stops the export."""
    keys = ctx.keys.customer_keys(batch)
    meta = {
        str(r.id): r
        for r in ctx.data.read(
            lambda conn: conn.execute(
                select(customers).where(customers.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": batch},
            ).all()
        )
    }
    rows = ctx.data.read(
        lambda conn: conn.execute(
            select(records)
            .where(records.c.customer_id.in_(bindparam("ids", expanding=True)))
            .order_by(records.c.customer_id, records.c.created, records.c.id),
            {"ids": batch},
        ).all()
    )
    ctx.require_rows("sv_customers", [r._mapping for r in meta.values()])
    ctx.require_rows("sv_records", [r._mapping for r in rows])
    given = ctx.data.read(
        lambda conn: consent_in_force(conn, ctx.keys.row_auth, [r._mapping for r in meta.values()])
    )
    by_customer: dict[str, list[Any]] = {cid: [] for cid in batch}
    for row in rows:
        by_customer[str(row.customer_id)].append(row)
    for cid in batch:
        info = meta.get(cid)
        if cid not in keys or info is None or info.state != "active":
            raise ShreddedError(f"customer {cid} was shredded during the export; run it again")
        listed = []
        for row in by_customer[cid]:
            rid, kind = str(row.id), str(row.kind)
            if kind not in kinds:
                raise StorageError(
                    f"a record of kind {kind} was added during the export; run it again"
                )
            try:  # reloads the customer's keys if another process rotated them
                env = envelope(ctx.keys, keys, cid, int(row.dek_version))
            except DecryptionError:
                raise StorageError(
                    f"no key version {row.dek_version} for customer {cid} (rotated during "
                    "the export?); run the export again"
                ) from None
            blob = bytes(row.ciphertext)
            plaintext = open_record(env, keys[cid], rid, kind, record_version(row._mapping), blob)
            blob = cipher.seal(plaintext, record_aad(package_id, cid, rid, kind))
            payload = parts(cid.encode(), rid.encode(), kind.encode()) + blob
            writer.frame(RECORD, payload)
            listed.append({"id": rid, "kind": kind, "sha256": hashlib.sha256(payload).hexdigest()})
        entry = canonical(
            {
                "customer": cid,
                "consent": json.loads(info.consent),
                "consent_given": given[cid],
                "retain_until": info.retain_until,
                "records": listed,
            }
        )
        writer.frame(CUSTOMER, entry)
        yield cid, entry, len(listed)


def _log_export(
    ctx: VaultContext,
    actor: Actor,
    package_id: str,
    counts: dict[str, int],
    manifest: dict[str, Any],
    manifest_sha256: str,
) -> None:
    """One ``customer.handover`` entry per exported customer and a ``handover.export``
    summary, in one transaction with a signed checkpoint; refuses if any exported
    customer was shredded meanwhile (nothing committed)."""
    cids = list(counts)
    tags = ctx.keys.store.subject_tags(cids)
    kinds_used = sorted(manifest["kinds"])

    def work(tx: Tx) -> None:
        _gate_kinds(ctx, actor, set(kinds_used), tx)
        for start in range(0, len(cids), 500):
            part = cids[start : start + 500]
            active = set(
                tx.conn.execute(
                    select(customers.c.id).where(
                        customers.c.id.in_(bindparam("ids", expanding=True)),
                        customers.c.state == "active",
                    ),
                    {"ids": part},
                ).scalars()
            )
            lost = [c for c in part if c not in active or c not in tags]
            if lost:
                raise ShreddedError(f"customer {lost[0]} was shredded during the export")
        tx.log(
            *(
                actor.event(
                    "customer.handover",
                    subject=tags[cid].hex(),
                    purpose=PURPOSE,
                    detail={"package": package_id, "records": counts[cid]},
                )
                for cid in cids
            ),
            actor.event(
                "handover.export",
                purpose=PURPOSE,
                detail={
                    "package": package_id,
                    "customers": len(cids),
                    "records": manifest["records"],
                    "excluded": manifest["excluded"],
                    "kinds": kinds_used,
                    "recipient_fingerprint": manifest["recipient_fingerprint"],
                    "manifest_sha256": manifest_sha256,
                },
            ),
        )
        tx.checkpoint = True

    ctx.transact(work)
