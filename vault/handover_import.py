"""Handover import (acquirer): verify a package completely, then write it in one
transaction; nothing is written when anything fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, select

from ..keys import (
    DecryptionError,
)
from ..keys.sealed import (
    HandoverKey,
    PackageCipher,
)
from .access import normalize_expiry
from .actor import Actor
from .blindindex import IndexItem, index_records
from .context import Tx, VaultContext
from .errors import (
    HandoverConflictError,
    NoTrustedKeyError,
    SchemaError,
    VaultError,
    VerificationError,
)
from .faults import crash_point
from .inputs import parse_json
from .package import (
    MAGIC,
    PURPOSE,
    Package,
    PackageCustomer,
    check_signature,
    malformed,
    open_package,
    read_frame,
    stream_customers,
)
from .rowauth import insert_rows, record_auth
from .schema import KindSpec, check_name, encode_fields
from .sealing import seal_records
from .store import customers, handover_imports, records
from .trust import no_trusted_key_message

__all__ = ["HandoverImport", "import_package"]


@dataclass(frozen=True, slots=True)
class HandoverImport:
    """What an import wrote. ``seller_key_trusted`` is False when the signature was
    checked only against the key the package itself names (self-asserted)."""

    package: str
    seller_vault: str
    seller_public_key: str
    seller_key_trusted: bool
    customers: list[str]
    records: int
    kinds_declared: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "seller_vault": self.seller_vault,
            "seller_public_key": self.seller_public_key,
            "seller_key_trusted": self.seller_key_trusted,
            "customers": list(self.customers),
            "records": self.records,
            "kinds_declared": list(self.kinds_declared),
        }


def import_package(
    ctx: VaultContext,
    actor: Actor,
    package_path: str | os.PathLike[str],
    key: HandoverKey,
    *,
    seller_public_key: bytes | None = None,
    accept_unverified_seller: bool = False,
    declare_kinds: bool = False,
    progress: Callable[[int], None] | None = None,
) -> HandoverImport:
    """Verify a package completely, then create its customers (fresh DEKs, their consent
    and retention) and records in this vault, in one transaction.

    Raises VerificationError (bad signature, altered or truncated package, another
    recipient, a package already imported), HandoverConflictError (a customer id this
    vault holds), SchemaError (a kind not declared here, unless ``declare_kinds``; a
    field the declared kind lacks), AccessDeniedError (not admin). In every case
    nothing is written (a denial is logged).

    ``seller_public_key`` is the seller vault's key, got by a second channel. Without
    it the package's own key proves nothing about who made it, so the import raises
    NoTrustedKeyError unless ``accept_unverified_seller`` is set; the import's log
    entry then records ``seller_key_trusted: false`` and the override."""
    package = open_package(Path(package_path))
    manifest = package.manifest
    trusted = seller_public_key is not None
    if trusted and seller_public_key != _seller(package):
        raise VerificationError(
            "handover package: the manifest names another seller key than the trusted one",
            reason="wrong key",
        )
    check_signature(
        package, seller_public_key if seller_public_key is not None else _seller(package)
    )
    if not trusted and not accept_unverified_seller:
        raise NoTrustedKeyError(
            "handover package: "
            + no_trusted_key_message("package")
            + " as seller_public_key / --seller-pubkey (or accept the package's own key "
            "explicitly, accept_unverified_seller / --accept-unverified-seller, which the "
            "log records); nothing was imported"
        )
    if manifest.get("recipient_fingerprint") != key.fingerprint:
        raise VerificationError(
            "handover package: it is sealed for another recipient key", reason="wrong recipient"
        )
    with open(package.path, "rb") as handle:
        handle.seek(len(MAGIC))
        _kind, sealed_key = read_frame(handle, 1024)
    try:
        package_key = key.open_package_key(sealed_key)
    except DecryptionError:
        raise VerificationError(
            "handover package: the package key does not open with this key",
            reason="wrong recipient",
        ) from None
    cipher = PackageCipher(package_key)
    package_key.wipe()
    actor.authorize("admin", "handover.import")
    if _already_imported(ctx, package.id):
        raise _replayed(package.id)

    # Pass 1: verify every hash and decrypt every record; write nothing.
    specs = _kind_specs(manifest)
    cids: list[str] = []
    used: dict[str, set[str]] = {}

    def check(customer: PackageCustomer) -> None:
        cids.append(customer.id)
        _customer_metadata(customer.entry)
        for _rid, kind, text in customer.records:
            used.setdefault(kind, set()).update(_fields(text))

    stream_customers(package, cipher, check)
    declared = ctx.kinds()
    missing = sorted(k for k in specs if k not in declared)
    if missing and not declare_kinds:
        raise SchemaError(
            f"kind(s) {', '.join(missing)} are not declared in this vault: declare them "
            "(`kind declare`) or import with declare_kinds (--declare-kinds)"
        )
    for kind, names in used.items():
        have = declared[kind].fields if kind in declared else specs[kind].fields
        extra = sorted(names - have)
        if extra:
            raise SchemaError(
                f"records of kind {kind!r} hold field(s) {', '.join(extra)} this vault does "
                "not declare for it"
            )
    _check_no_collision(ctx, cids)

    # Pass 2: one transaction; the stream is verified again as it is written (the file
    # could change between passes), and any mismatch rolls everything back.
    created = ctx.now()
    # Keys an import of this package made before crashing are reused: no customer row
    # exists for them (checked above), so nothing was ever encrypted under them.
    tags = ctx.keys.store.subject_tags(cids)
    fresh = [c for c in cids if c not in tags]
    if fresh:
        tags.update(ctx.keys.create_customers(fresh, created))

    def work(tx: Tx) -> int:
        # May run more than once (PostgreSQL retries a serialization failure): keep
        # every counter inside.
        actor.gate(tx.conn, "admin", "handover.import")
        ctx.data.ensure_additive_tables(tx.conn)
        seen = tx.conn.execute(
            select(handover_imports.c.package).where(handover_imports.c.package == package.id)
        ).first()
        if seen is not None:
            raise _replayed(package.id)
        _check_no_collision_in(tx, cids)
        for kind in missing:
            spec = specs[kind]
            row = {"name": kind, "spec": json.dumps(spec.to_json(), sort_keys=True)}
            insert_rows(tx.conn, ctx.keys.row_auth, "sv_kinds", [row], tx.next_seq())
            tx.log(actor.event("schema.declare", detail={"kind": kind, **spec.to_json()}))
        keys = ctx.keys.customer_keys(cids)
        written: list[int] = []

        def write(customer: PackageCustomer) -> None:
            cid = customer.id
            ck = keys[cid]
            env = ck.current
            entry = customer.entry
            consent, retain_until = _customer_metadata(entry)
            row = {
                "id": cid,
                "ref": None,
                "state": "active",
                "dek_version": env.version,
                "retain_until": retain_until,
                "legal_hold": False,
                "consent": json.dumps(consent, sort_keys=True),
                "created": created,
                "shredded": None,
                "shred_intent_seq": None,
            }
            insert_rows(tx.conn, ctx.keys.row_auth, "sv_customers", [row], tx.next_seq())
            subject = tags[cid].hex()
            tx.log(
                actor.event(
                    "customer.import",
                    subject=subject,
                    purpose=PURPOSE,
                    detail={
                        "package": package.id,
                        "consent": consent,
                        "retain_until": retain_until,
                    },
                )
            )
            rows = []
            events = []
            sealing: list[tuple[str, str, int, bytes]] = []
            searchable: list[IndexItem] = []
            for rid, kind, text in customer.records:
                spec = declared.get(kind) or specs[kind]
                fields = _fields(text)
                sealing.append((rid, kind, 1, encode_fields(spec, fields)))
                searchable.append((rid, cid, kind, fields))
                events.append(
                    actor.event(
                        "record.put",
                        subject=subject,
                        record=rid,
                        purpose=PURPOSE,
                        detail={"kind": kind, "fields": sorted(fields), "package": package.id},
                    )
                )
            blobs = seal_records(ck, sealing) if sealing else []
            first = tx.next_seq()
            auth = ctx.keys.row_auth
            for i, ((rid, kind, _text), blob) in enumerate(
                zip(customer.records, blobs, strict=True)
            ):
                dv, seq = env.version, first + i
                tag = record_auth(auth, rid, cid, kind, 1, dv, seq)
                rows.append((rid, cid, kind, 1, dv, blob, created, created, 2, seq, tag))
            ctx.data.insert_many(tx.conn, records, rows)
            index_records(
                tx.conn, ctx.keys.blind_index, lambda k: declared.get(k) or specs[k], searchable
            )
            tx.log(*events)
            written.append(len(rows))
            if progress is not None:
                progress(len(rows))
            if len(written) == 1:
                crash_point("handover:import-customer")

        stream_customers(package, cipher, write)
        tx.conn.execute(
            insert(handover_imports).values(
                package=package.id,
                seller_vault=str(manifest["seller_vault"]),
                manifest_sha256=package.manifest_sha256,
                customers=len(cids),
                records=sum(written),
                imported=created,
            )
        )
        tx.log(
            actor.event(
                "handover.import",
                purpose=PURPOSE,
                detail={
                    "package": package.id,
                    "seller_vault": str(manifest["seller_vault"]),
                    "seller_public_key": str(manifest["seller_public_key"]),
                    "seller_key_trusted": trusted,
                    "seller_key_override": accept_unverified_seller and not trusted,
                    "manifest_sha256": package.manifest_sha256,
                    "customers": len(cids),
                    "records": sum(written),
                    "kinds_declared": missing,
                },
            )
        )
        tx.checkpoint = True
        return sum(written)

    try:
        imported = ctx.transact(work)
    except BaseException:
        if not _maybe_imported(ctx, package.id):
            for cid in fresh:  # nothing committed: the keys this call made must go
                ctx.keys.destroy_customer(cid)
        raise
    return HandoverImport(
        package.id,
        str(manifest["seller_vault"]),
        str(manifest["seller_public_key"]),
        trusted,
        cids,
        imported,
        missing,
    )


def _customer_metadata(entry: dict[str, Any]) -> tuple[dict[str, bool], str | None]:
    """A customer entry's consent map and retention date, checked as ``add_customer``
    checks them (a signed package may still come from a careless or hostile seller)."""
    consent = entry.get("consent")
    if not isinstance(consent, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in consent.items()
    ):
        raise malformed(f"customer {entry.get('customer')} has a malformed consent map")
    try:
        for name in consent:
            check_name("consent", name)
        retain_until = normalize_expiry(entry.get("retain_until"))
    except SchemaError:
        raise malformed(
            f"customer {entry.get('customer')} has a malformed consent or retention date"
        ) from None
    return dict(consent), retain_until


def _fields(text: bytes) -> dict[str, Any]:
    try:
        fields = parse_json(text, what="a record's plaintext")
    except SchemaError:
        fields = None
    if not isinstance(fields, dict):
        raise malformed("a record's plaintext is not a JSON object")
    return fields


def _seller(package: Package) -> bytes:
    try:
        return package.seller_key
    except (KeyError, ValueError):
        raise malformed("the manifest names no valid seller key") from None


def _kind_specs(manifest: dict[str, Any]) -> dict[str, KindSpec]:
    try:
        return {
            str(name): KindSpec.build(str(name), spec["fields"], spec["purposes"])
            for name, spec in dict(manifest["kinds"]).items()
        }
    except (KeyError, TypeError, ValueError, SchemaError):
        raise malformed("the manifest's kinds are damaged") from None


def _replayed(package_id: str) -> VerificationError:
    return VerificationError(
        f"handover package {package_id} was already imported into this vault; refusing a replay",
        reason="replayed",
    )


def _already_imported(ctx: VaultContext, package_id: str) -> bool:
    def read(conn: Any) -> bool:
        if not ctx.data.engine.dialect.has_table(conn, handover_imports.name):
            return False
        row = conn.execute(
            select(handover_imports.c.package).where(handover_imports.c.package == package_id)
        ).first()
        return row is not None

    return ctx.data.read(read)


def _maybe_imported(ctx: VaultContext, package_id: str) -> bool:
    """Whether the package may have been imported (True when that cannot be read: then
    its keys are kept, since destroying them could orphan committed customers)."""
    try:
        return _already_imported(ctx, package_id)
    except VaultError:
        return True


def _check_no_collision(ctx: VaultContext, cids: list[str]) -> None:
    clash = ctx.read_in(select(customers.c.id), customers.c.id, cids)
    if clash:
        raise HandoverConflictError(
            f"{len(clash)} customer(s) of the package already exist in this vault "
            f"(first: {clash[0].id}); nothing was imported"
        )


def _check_no_collision_in(tx: Tx, cids: list[str]) -> None:
    for start in range(0, len(cids), 500):
        clash = tx.conn.execute(
            select(customers.c.id).where(customers.c.id.in_(bindparam("ids", expanding=True))),
            {"ids": cids[start : start + 500]},
        ).first()
        if clash is not None:
            raise HandoverConflictError(
                f"customer {clash.id} of the package already exists in this vault; "
                "nothing was imported"
            )
