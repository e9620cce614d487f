"""Business handover (issue 9): consenting customers' records, re-sealed for an acquirer.

A package is one file (format in docs/handover.md), integers big-endian::

    b"SVHOPKG1" | frame* | u64 offset of the MANIFEST frame | b"SVHOEND1"
    frame = u8 type | u32 length | payload
    KEY(1) (RECORD(2)* CUSTOMER(3))* MANIFEST(4) SIGNATURE(5)

* KEY: a random 32-byte package key, sealed (``SealedBox``) to the acquirer's X25519 key.
* RECORD: customer id, record id and kind (each u32-length-prefixed), then
  ``nonce | AES-256-GCM ciphertext | tag`` of the record's canonical JSON under the package
  key, with AAD binding the package id, customer, record and kind.
* CUSTOMER: canonical JSON of one customer (consent, retention, its records' ids, kinds
  and SHA-256 of each RECORD payload), written after its records.
* MANIFEST: canonical JSON (package, seller vault and Ed25519 key, recipient fingerprint,
  counts, kinds, SHA-256 of the KEY payload and of the customer index, created).
* SIGNATURE: the seller vault's Ed25519 signature of the MANIFEST payload.

The signed manifest fixes the customer index by hash, the index fixes every record
by hash, so one signature covers every byte, while export streams customer by customer
(constant memory). Export writes a temporary file, fsyncs it, commits the
``customer.handover`` entries and only then links the file into place; import verifies
the signature, every hash and every decryption before anything is written, then
writes everything in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, select

from ..keys import (
    DecryptionError,
    InvalidKeyError,
    KdfParams,
    SecretBytes,
    WeakParametersError,
    WrongKeyError,
    aad,
    verify_signature,
)
from ..keys.envelope import record_aad_suffix
from ..keys.sealed import (
    PACKAGE_KEY_SIZE,
    HandoverKey,
    PackageCipher,
    handover_fingerprint,
    load_handover_key,
    load_handover_public_key,
    seal_package_key,
    write_handover_key,
)
from . import ids
from .access import normalize_expiry
from .canonical import canonical
from .clock import format_ts
from .errors import (
    AccessDeniedError,
    HandoverConflictError,
    NotFoundError,
    SchemaError,
    ShreddedError,
    StorageError,
    UnlockError,
    VaultError,
    VerificationError,
)
from .faults import crash_point
from .files import PartialFile, check_absent, translate_write_errors, write_file
from .receipt import Receipt
from .schema import KindSpec, check_name, encode_fields
from .store import customers, handover_imports, kinds, log, records

if TYPE_CHECKING:
    from .session import Session
    from .vault import Tx, Vault

__all__ = [
    "MANIFEST_TYPE",
    "PURPOSE",
    "SUMMARY_TYPE",
    "HandoverCompletion",
    "HandoverExport",
    "HandoverImport",
    "HandoverKey",
    "complete_package",
    "export_package",
    "handover_keygen",
    "import_package",
    "open_handover_key",
    "read_handover_public_key",
    "read_manifest",
    "verify_completion",
]

MAGIC = b"SVHOPKG1"
END = b"SVHOEND1"
MANIFEST_TYPE = "shredvault-handover"
SUMMARY_TYPE = "shredvault-handover-completion"
PURPOSE = "business-transfer"
KEY, RECORD, CUSTOMER, MANIFEST, SIGNATURE = 1, 2, 3, 4, 5
_FRAME = struct.Struct(">BI")
_TRAILER = struct.Struct(">Q8s")
_U32 = struct.Struct(">I")
_RECORD_LABEL = b"shredvault/handover-record/v1"
_MAX_FRAME = 64 * 1024 * 1024
_BATCH = 100  # customers read, decrypted and re-sealed per data-store read


# -- key files (acquirer) ----------------------------------------------------------------------


def handover_keygen(
    out: str | os.PathLike[str], passphrase: bytes, *, params: KdfParams | None = None
) -> tuple[Path, Path, str]:
    """Write a new X25519 key pair: ``OUT.pub`` to share, ``OUT.key`` (0600) sealed under
    Argon2id(passphrase). Returns both paths and the key's fingerprint. Refuses to
    overwrite; raises :class:`UnlockError` for an empty passphrase or weak parameters."""
    try:
        with translate_write_errors():
            return write_handover_key(Path(out), passphrase, params=params)
    except WeakParametersError as error:
        raise UnlockError(str(error)) from None
    except InvalidKeyError as error:
        raise UnlockError(str(error)) from None


def open_handover_key(path: str | os.PathLike[str], passphrase: bytes) -> HandoverKey:
    """Unseal ``OUT.key``; :class:`UnlockError` for a wrong passphrase or a weakened
    header, :class:`~keys.InvalidKeyError` for something that is not a key file."""
    try:
        return load_handover_key(Path(path), passphrase)
    except (WrongKeyError, WeakParametersError) as error:
        raise UnlockError(str(error)) from None


def read_handover_public_key(path: str | os.PathLike[str]) -> bytes:
    """The acquirer's X25519 public key from ``OUT.pub`` (fingerprint checked)."""
    return load_handover_public_key(Path(path))


# -- results -------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class HandoverCompletion:
    """The seller's completion: a receipt per customer shredded now, those shredded
    before (skipped), those that failed, and the signed summary document."""

    summary: dict[str, Any]
    receipts: list[Receipt] = field(default_factory=list)
    already_shredded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(self.summary, indent=2, sort_keys=True) + "\n"

    def write(self, path: str | os.PathLike[str], *, replace: bool = False) -> None:
        """Write the signed summary (0600, atomically). Refuses to replace a file unless
        ``replace`` (a rerun replacing the summary of the same package)."""
        write_file(path, self.dumps().encode("utf-8"), overwrite=replace)


# -- the container ---------------------------------------------------------------------------


def _parts(*values: bytes) -> bytes:
    return b"".join(_U32.pack(len(v)) + v for v in values)


def _split_parts(payload: bytes, count: int) -> tuple[list[bytes], bytes]:
    out: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(payload):
            raise _malformed("a record frame is truncated")
        (n,) = _U32.unpack_from(payload, at)
        at += 4
        if at + n > len(payload):
            raise _malformed("a record frame is truncated")
        out.append(payload[at : at + n])
        at += n
    return out, payload[at:]


def _record_aad(package: str, customer: str, record: str, kind: str) -> bytes:
    return aad(_RECORD_LABEL, package.encode(), customer.encode(), record.encode(), kind.encode())


def _malformed(message: str) -> VerificationError:
    return VerificationError(f"handover package: {message}", reason="malformed")


def _modified(message: str) -> VerificationError:
    return VerificationError(f"handover package: {message}", reason="modified")


class _Writer:
    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.offset = 0
        handle.write(MAGIC)
        self.offset += len(MAGIC)

    def frame(self, kind: int, payload: bytes) -> None:
        self._handle.write(_FRAME.pack(kind, len(payload)))
        self._handle.write(payload)
        self.offset += _FRAME.size + len(payload)

    def trailer(self, manifest_offset: int) -> None:
        self._handle.write(_TRAILER.pack(manifest_offset, END))


@dataclass(frozen=True, slots=True)
class _Package:
    """An opened package: its manifest (parsed and raw) and signature."""

    path: Path
    manifest: dict[str, Any]
    body: bytes
    signature: bytes
    manifest_offset: int

    @property
    def id(self) -> str:
        return str(self.manifest["package"])

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def seller_key(self) -> bytes:
        return bytes.fromhex(str(self.manifest["seller_public_key"]).removeprefix("ed25519:"))


def _read_frame(handle: IO[bytes], limit: int = _MAX_FRAME) -> tuple[int, bytes]:
    head = handle.read(_FRAME.size)
    if len(head) != _FRAME.size:
        raise _malformed("a frame is truncated")
    kind, length = _FRAME.unpack(head)
    if length > limit:
        raise _malformed("a frame is larger than allowed")
    payload = handle.read(length)
    if len(payload) != length:
        raise _malformed("a frame is truncated")
    return kind, payload


def _open_package(path: Path) -> _Package:
    """Read the trailer, the manifest and its signature (not yet verified)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC or size < len(MAGIC) + _TRAILER.size:
                raise _malformed("not a shredvault handover package (v1)")
            handle.seek(size - _TRAILER.size)
            offset, end = _TRAILER.unpack(handle.read(_TRAILER.size))
            if end != END or not len(MAGIC) <= offset < size - _TRAILER.size:
                raise _malformed("the trailer is damaged (truncated file?)")
            handle.seek(offset)
            kind, body = _read_frame(handle)
            sig_kind, signature = _read_frame(handle, 64)
            if kind != MANIFEST or sig_kind != SIGNATURE or len(signature) != 64:
                raise _malformed("no manifest and signature where the trailer points")
            if handle.tell() != size - _TRAILER.size:
                raise _malformed("bytes between the signature and the trailer")
    except OSError as error:
        raise _malformed(f"cannot read {path}: {error.strerror}") from None
    try:
        manifest = json.loads(body)
    except ValueError:
        raise _malformed("the manifest is not JSON") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("type") != MANIFEST_TYPE
        or manifest.get("v") != 1
        or canonical(manifest) != body
        or not ids.is_id(manifest.get("package"), "pkg_")
        or any(not isinstance(manifest.get(k), t) for k, t in _MANIFEST_FIELDS.items())
    ):
        raise _malformed("not a canonical v1 handover manifest")
    return _Package(path, manifest, body, signature, offset)


_MANIFEST_FIELDS: dict[str, type] = {
    "seller_vault": str,
    "seller_public_key": str,
    "recipient_fingerprint": str,
    "created": str,
    "customers": int,
    "records": int,
    "excluded": int,
    "kinds": dict,
    "sealed_key_sha256": str,
    "customer_index_sha256": str,
}


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a package, as written (its signature is not checked here)."""
    return dict(_open_package(Path(path)).manifest)


def _check_signature(package: _Package, public_key: bytes) -> None:
    if not verify_signature(public_key, package.body, package.signature):
        raise VerificationError(
            "handover package: the manifest signature does not verify against the seller key",
            reason="bad signature",
        )


@dataclass(slots=True, repr=False)
class _Customer:
    entry: dict[str, Any]
    records: list[tuple[str, str, bytes]]  # (record id, kind, plaintext) when decrypting

    def __repr__(self) -> str:  # the records are plaintext: never show them
        return f"<_Customer {self.entry.get('customer')} records={len(self.records)}, redacted>"

    @property
    def id(self) -> str:
        return str(self.entry["customer"])


def _stream(
    package: _Package, cipher: PackageCipher | None, on_customer: Callable[[_Customer], None]
) -> None:
    """Walk every frame before the manifest, checking each against the signed manifest:
    the key frame's hash, each record's hash against its customer's entry (same
    order), the customer index hash, and the counts. With ``cipher``, every record is
    also decrypted (AAD: package, customer, record, kind). Raises VerificationError."""
    manifest = package.manifest
    pkg = package.id
    known_kinds = manifest["kinds"]
    index = hashlib.sha256()
    seen: set[str] = set()
    total_records = 0
    with open(package.path, "rb") as handle:
        handle.seek(len(MAGIC))
        kind, sealed_key = _read_frame(handle, 1024)
        if kind != KEY or hashlib.sha256(sealed_key).hexdigest() != manifest["sealed_key_sha256"]:
            raise _modified("the sealed package key does not match the manifest")
        pending: list[tuple[str, str, str, str]] = []  # (customer, record, kind, sha256)
        plain: list[tuple[str, str, bytes]] = []
        while handle.tell() < package.manifest_offset:
            kind, payload = _read_frame(handle)
            if kind == RECORD:
                (cid_b, rid_b, kind_b), blob = _split_parts(payload, 3)
                cid, rid, knd = cid_b.decode(), rid_b.decode(), kind_b.decode()
                if not ids.is_id(cid, ids.CUSTOMER) or not ids.is_id(rid, ids.RECORD):
                    raise _malformed("a record frame holds a malformed id")
                if knd not in known_kinds:
                    raise _modified(f"a record of kind {knd!r} the manifest does not list")
                pending.append((cid, rid, knd, hashlib.sha256(payload).hexdigest()))
                if cipher is not None:
                    try:
                        text = cipher.open(blob, _record_aad(pkg, cid, rid, knd))
                    except DecryptionError:
                        raise _modified(f"record {rid} fails authentication") from None
                    plain.append((rid, knd, text))
            elif kind == CUSTOMER:
                try:
                    entry = json.loads(payload)
                    if not isinstance(entry, dict) or canonical(entry) != payload:
                        raise ValueError("not canonical")
                    cid = str(entry["customer"])
                    listed = [(cid, r["id"], r["kind"], r["sha256"]) for r in entry["records"]]
                except (ValueError, KeyError, TypeError):
                    raise _malformed("a customer entry is damaged") from None
                if listed != pending:
                    raise _modified(
                        f"the records of customer {cid} do not match its entry "
                        "(altered, swapped, added or removed)"
                    )
                if cid in seen or not ids.is_id(cid, ids.CUSTOMER):
                    raise _modified("a customer appears twice or has a malformed id")
                seen.add(cid)
                index.update(_U32.pack(len(payload)) + payload)
                total_records += len(pending)
                on_customer(_Customer(entry, plain))
                pending, plain = [], []
            else:
                raise _malformed(f"unexpected frame type {kind}")
        if pending or handle.tell() != package.manifest_offset:
            raise _modified("records after the last customer entry")
    if index.hexdigest() != manifest["customer_index_sha256"]:
        raise _modified("the customer index does not match the manifest")
    if len(seen) != manifest["customers"] or total_records != manifest["records"]:
        raise _modified("the customer or record count does not match the manifest")


# -- export (seller) -------------------------------------------------------------------------


def export_package(
    session: Session,
    recipient_public_key: bytes,
    out: str | os.PathLike[str],
    *,
    customer_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> HandoverExport:
    """Write a package for the acquirer holding ``recipient_public_key``: every active
    customer (of ``customer_ids``, or all) whose consent has ``transfer: True``.

    Raises AccessDeniedError (logged), NotFoundError (an unknown id in
    ``customer_ids``), StorageError (``out`` exists). On any failure, including a
    failed log write, no file is left at ``out`` and no handover entry is committed."""
    vault = session._vault
    if not isinstance(recipient_public_key, bytes) or len(recipient_public_key) != 32:
        raise SchemaError("the acquirer's public key must be 32 bytes (X25519)")
    target = Path(out)
    check_absent(target)
    if not target.parent.is_dir():
        raise StorageError(f"{target.parent} is not a directory")
    session._authorize("export", "handover.export")
    chosen, no_consent, shredded = _select(vault, customer_ids)
    kinds_used = _kinds_of(vault, chosen)
    _gate_kinds(session, kinds_used)

    package_id = ids.new_id("pkg_")
    created = format_ts(vault._clock())
    fingerprint = handover_fingerprint(recipient_public_key)
    package_key = SecretBytes(os.urandom(PACKAGE_KEY_SIZE))
    sealed_key = seal_package_key(recipient_public_key, package_key)
    cipher = PackageCipher(package_key)
    package_key.wipe()
    partial = PartialFile(target)  # removes one an export that crashed left
    counts: dict[str, int] = {}
    try:
        with partial.writing() as handle:  # fsynced when the block ends
            writer = _Writer(handle)
            writer.frame(KEY, sealed_key)
            index = hashlib.sha256()
            for start in range(0, len(chosen), _BATCH):
                batch = chosen[start : start + _BATCH]
                for cid, payload, n in _sealed_customers(vault, batch, package_id, cipher, writer):
                    index.update(_U32.pack(len(payload)) + payload)
                    counts[cid] = n
                    if progress is not None:
                        progress(n)
                vault._keys.forget(batch)  # keep memory flat: the cache would hold them all
                crash_point("handover:export-batch")
            specs = vault.kinds()
            manifest = {
                "type": MANIFEST_TYPE,
                "v": 1,
                "package": package_id,
                "purpose": PURPOSE,
                "seller_vault": vault.vault_id,
                "seller_public_key": "ed25519:" + vault.public_key.hex(),
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
            writer.frame(SIGNATURE, vault._keys.signer.sign(body))
            writer.trailer(manifest_offset)
        crash_point("handover:before-log")
        manifest_sha256 = hashlib.sha256(body).hexdigest()
        _log_export(session, package_id, counts, manifest, manifest_sha256)
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
    vault: Vault, customer_ids: Sequence[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """(exported, excluded for lack of consent, excluded as not active), in a stable order."""
    stmt = select(customers.c.id, customers.c.state, customers.c.consent)
    if customer_ids is not None:
        wanted = list(dict.fromkeys(customer_ids))
        for cid in wanted:
            if not ids.is_id(cid, ids.CUSTOMER):
                raise NotFoundError("not a customer id (expected cus_ and 26 base32 characters)")
        rows = _rows_in(vault, stmt, customers.c.id, wanted)
        found = {str(r.id) for r in rows}
        missing = [c for c in wanted if c not in found]
        if missing:
            raise NotFoundError(f"no customer {missing[0]}")
        order = {cid: i for i, cid in enumerate(wanted)}
        rows.sort(key=lambda r: order[str(r.id)])
    else:
        rows = vault._data.read(
            lambda conn: list(conn.execute(stmt.order_by(customers.c.created, customers.c.id)))
        )
    chosen, no_consent, gone = [], [], []
    for row in rows:
        if row.state != "active":
            gone.append(str(row.id))
        elif json.loads(row.consent).get("transfer") is True:
            chosen.append(str(row.id))
        else:
            no_consent.append(str(row.id))
    return chosen, no_consent, gone


def _kinds_of(vault: Vault, chosen: Sequence[str]) -> set[str]:
    stmt = select(records.c.kind).distinct()
    return {str(r.kind) for r in _rows_in(vault, stmt, records.c.customer_id, chosen)}


def _rows_in(vault: Vault, stmt: Any, column: Any, values: Sequence[str]) -> list[Any]:
    """Rows of ``stmt`` where ``column`` is one of ``values`` (read in chunks of 500)."""
    out: list[Any] = []
    for start in range(0, len(values), 500):
        part = list(values[start : start + 500])

        def read(conn: Connection, part: list[str] = part) -> list[Any]:
            where = stmt.where(column.in_(bindparam("ids", expanding=True)))
            return list(conn.execute(where, {"ids": part}))

        out += vault._data.read(read)
    return out


def _gate_kinds(session: Session, kinds_used: set[str]) -> None:
    """The role must be allowed to export every kind, whole (no field allow-list)."""
    from .vault import Refusal

    def work(tx: Tx) -> None:
        for kind in sorted(kinds_used):
            role = session._gate(tx.conn, "export", "handover.export", kind=kind)
            if role.fields_for(kind) is not None:
                ev = session._event(
                    "handover.export",
                    outcome="denied",
                    detail={"kind": kind, "reason_code": "field_not_allowed"},
                )
                raise Refusal(
                    AccessDeniedError(
                        f"role {session.role!r} sees only some fields of {kind}; a handover "
                        "carries whole records"
                    ),
                    ev,
                )

    session._vault._transact(work)


def _sealed_customers(
    vault: Vault, batch: list[str], package_id: str, cipher: PackageCipher, writer: _Writer
) -> Iterator[tuple[str, bytes, int]]:
    """Decrypt a batch of customers' records, re-seal each under the package key and
    write its frames; yields (customer, its entry's payload, record count)."""
    keys = vault._keys.customer_keys(batch)
    meta = {
        str(r.id): r
        for r in vault._data.read(
            lambda conn: conn.execute(
                select(
                    customers.c.id, customers.c.consent, customers.c.retain_until, customers.c.state
                ).where(customers.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": batch},
            ).all()
        )
    }
    rows = vault._data.read(
        lambda conn: conn.execute(
            select(
                records.c.id,
                records.c.customer_id,
                records.c.kind,
                records.c.dek_version,
                records.c.ciphertext,
            )
            .where(records.c.customer_id.in_(bindparam("ids", expanding=True)))
            .order_by(records.c.customer_id, records.c.created, records.c.id),
            {"ids": batch},
        ).all()
    )
    from .session import _envelope

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
            try:  # reloads the customer's keys if another process rotated them
                env = _envelope(vault, keys, cid, int(row.dek_version))
            except DecryptionError:
                raise StorageError(
                    f"no key version {row.dek_version} for customer {cid} (rotated during "
                    "the export?); run the export again"
                ) from None
            context = record_aad_suffix(keys[cid].record_prefix, rid, kind, env.version)
            plaintext = env.open(bytes(row.ciphertext), context)
            blob = cipher.seal(plaintext, _record_aad(package_id, cid, rid, kind))
            payload = _parts(cid.encode(), rid.encode(), kind.encode()) + blob
            writer.frame(RECORD, payload)
            listed.append({"id": rid, "kind": kind, "sha256": hashlib.sha256(payload).hexdigest()})
        entry = canonical(
            {
                "customer": cid,
                "consent": json.loads(info.consent),
                "retain_until": info.retain_until,
                "records": listed,
            }
        )
        writer.frame(CUSTOMER, entry)
        yield cid, entry, len(listed)


def _log_export(
    session: Session,
    package_id: str,
    counts: dict[str, int],
    manifest: dict[str, Any],
    manifest_sha256: str,
) -> None:
    """One ``customer.handover`` entry per exported customer and a ``handover.export``
    summary, in one transaction with a signed checkpoint; refuses if any exported
    customer was shredded meanwhile (nothing committed)."""
    vault = session._vault
    cids = list(counts)
    tags = vault._keys.store.subject_tags(cids)
    kinds_used = sorted(manifest["kinds"])

    def work(tx: Tx) -> None:
        session._gate(tx.conn, "export", "handover.export")
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
                session._event(
                    "customer.handover",
                    subject=tags[cid].hex(),
                    purpose=PURPOSE,
                    detail={"package": package_id, "records": counts[cid]},
                )
                for cid in cids
            ),
            session._event(
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

    vault._transact(work)


# -- import (acquirer) -----------------------------------------------------------------------


def import_package(
    session: Session,
    package_path: str | os.PathLike[str],
    key: HandoverKey,
    *,
    seller_public_key: bytes | None = None,
    declare_kinds: bool = False,
    progress: Callable[[int], None] | None = None,
) -> HandoverImport:
    """Verify a package completely, then create its customers (fresh DEKs, their consent
    and retention) and records in this vault, in one transaction.

    Raises VerificationError (bad signature, altered or truncated package, another
    recipient, a package already imported), HandoverConflictError (a customer id this
    vault holds), SchemaError (a kind not declared here, unless ``declare_kinds``; a
    field the declared kind lacks), AccessDeniedError (not admin). In every case
    nothing is written (a denial is logged)."""
    vault = session._vault
    package = _open_package(Path(package_path))
    manifest = package.manifest
    trusted = seller_public_key is not None
    _check_signature(
        package, seller_public_key if seller_public_key is not None else _seller(package)
    )
    if manifest.get("recipient_fingerprint") != key.fingerprint:
        raise VerificationError(
            "handover package: it is sealed for another recipient key", reason="wrong recipient"
        )
    with open(package.path, "rb") as handle:
        handle.seek(len(MAGIC))
        _kind, sealed_key = _read_frame(handle, 1024)
    try:
        package_key = key.open_package_key(sealed_key)
    except DecryptionError:
        raise VerificationError(
            "handover package: the package key does not open with this key",
            reason="wrong recipient",
        ) from None
    cipher = PackageCipher(package_key)
    package_key.wipe()
    session._authorize("admin", "handover.import")
    if _already_imported(vault, package.id):
        raise _replayed(package.id)

    # Pass 1: verify every hash and decrypt every record; write nothing.
    specs = _kind_specs(manifest)
    cids: list[str] = []
    used: dict[str, set[str]] = {}

    def check(customer: _Customer) -> None:
        cids.append(customer.id)
        _customer_metadata(customer.entry)
        for _rid, kind, text in customer.records:
            used.setdefault(kind, set()).update(_fields(text))

    _stream(package, cipher, check)
    declared = vault.kinds()
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
    _check_no_collision(vault, cids)

    # Pass 2: one transaction; the stream is verified again as it is written (the file
    # could change between passes), and any mismatch rolls everything back.
    created = format_ts(vault._clock())
    # Keys an import of this package made before crashing are reused: no customer row
    # exists for them (checked above), so nothing was ever encrypted under them.
    tags = vault._keys.store.subject_tags(cids)
    fresh = [c for c in cids if c not in tags]
    if fresh:
        tags.update(vault._keys.create_customers(fresh, created))

    def work(tx: Tx) -> int:
        # May run more than once (PostgreSQL retries a serialization failure): keep
        # every counter inside.
        session._gate(tx.conn, "admin", "handover.import")
        vault._data.ensure_additive_tables(tx.conn)
        seen = tx.conn.execute(
            select(handover_imports.c.package).where(handover_imports.c.package == package.id)
        ).first()
        if seen is not None:
            raise _replayed(package.id)
        _check_no_collision_in(tx, cids)
        for kind in missing:
            spec = specs[kind]
            tx.conn.execute(
                insert(kinds).values(name=kind, spec=json.dumps(spec.to_json(), sort_keys=True))
            )
            tx.log(session._event("schema.declare", detail={"kind": kind, **spec.to_json()}))
        keys = vault._keys.customer_keys(cids)
        written: list[int] = []

        def write(customer: _Customer) -> None:
            cid = customer.id
            ck = keys[cid]
            env = ck.current
            entry = customer.entry
            consent, retain_until = _customer_metadata(entry)
            tx.conn.execute(
                insert(customers).values(
                    id=cid,
                    ref=None,
                    state="active",
                    dek_version=env.version,
                    retain_until=retain_until,
                    legal_hold=False,
                    consent=json.dumps(consent, sort_keys=True),
                    created=created,
                    shredded=None,
                )
            )
            subject = tags[cid].hex()
            tx.log(
                session._event(
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
            plaintexts, contexts = [], []
            for rid, kind, text in customer.records:
                spec = declared.get(kind) or specs[kind]
                fields = _fields(text)
                plaintexts.append(encode_fields(spec, fields))
                contexts.append(record_aad_suffix(ck.record_prefix, rid, kind, env.version))
                events.append(
                    session._event(
                        "record.put",
                        subject=subject,
                        record=rid,
                        purpose=PURPOSE,
                        detail={"kind": kind, "fields": sorted(fields), "package": package.id},
                    )
                )
            blobs = env.seal_many(plaintexts, contexts) if plaintexts else []
            for (rid, kind, _text), blob in zip(customer.records, blobs, strict=True):
                rows.append((rid, cid, kind, 1, env.version, blob, created, created))
            vault._data.insert_many(tx.conn, records, rows)
            tx.log(*events)
            written.append(len(rows))
            if progress is not None:
                progress(len(rows))
            if len(written) == 1:
                crash_point("handover:import-customer")

        _stream(package, cipher, write)
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
            session._event(
                "handover.import",
                purpose=PURPOSE,
                detail={
                    "package": package.id,
                    "seller_vault": str(manifest["seller_vault"]),
                    "seller_public_key": str(manifest["seller_public_key"]),
                    "seller_key_trusted": trusted,
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
        imported = vault._transact(work)
    except BaseException:
        if not _maybe_imported(vault, package.id):
            for cid in fresh:  # nothing committed: the keys this call made must go
                vault._keys.destroy_customer(cid)
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
        raise _malformed(f"customer {entry.get('customer')} has a malformed consent map")
    try:
        for name in consent:
            check_name("consent", name)
        retain_until = normalize_expiry(entry.get("retain_until"))
    except SchemaError:
        raise _malformed(
            f"customer {entry.get('customer')} has a malformed consent or retention date"
        ) from None
    return dict(consent), retain_until


def _fields(text: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise _malformed("a record's plaintext is not a JSON object")
    return fields


def _seller(package: _Package) -> bytes:
    try:
        return package.seller_key
    except (KeyError, ValueError):
        raise _malformed("the manifest names no valid seller key") from None


def _kind_specs(manifest: dict[str, Any]) -> dict[str, KindSpec]:
    try:
        return {
            str(name): KindSpec.build(str(name), spec["fields"], spec["purposes"])
            for name, spec in dict(manifest["kinds"]).items()
        }
    except (KeyError, TypeError, ValueError, SchemaError):
        raise _malformed("the manifest's kinds are damaged") from None


def _replayed(package_id: str) -> VerificationError:
    return VerificationError(
        f"handover package {package_id} was already imported into this vault; refusing a replay",
        reason="replayed",
    )


def _already_imported(vault: Vault, package_id: str) -> bool:
    def read(conn: Any) -> bool:
        if not vault._data.engine.dialect.has_table(conn, handover_imports.name):
            return False
        row = conn.execute(
            select(handover_imports.c.package).where(handover_imports.c.package == package_id)
        ).first()
        return row is not None

    return vault._data.read(read)


def _maybe_imported(vault: Vault, package_id: str) -> bool:
    """Whether the package may have been imported (True when that cannot be read: then
    its keys are kept, since destroying them could orphan committed customers)."""
    try:
        return _already_imported(vault, package_id)
    except VaultError:
        return True


def _check_no_collision(vault: Vault, cids: list[str]) -> None:
    clash = _rows_in(vault, select(customers.c.id), customers.c.id, cids)
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


# -- complete (seller) ------------------------------------------------------------------------


def complete_package(
    session: Session,
    package_path: str | os.PathLike[str],
    *,
    receipts_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> HandoverCompletion:
    """Shred every customer a package this vault exported transferred (reason
    ``business-transfer``), one receipt each (written to ``receipts_dir`` as
    ``CUSTOMER.json`` when given), and return a summary signed by the vault.

    Resumable: customers already shredded are skipped (a receipt already in
    ``receipts_dir`` is kept and its hash listed). Raises VerificationError for a
    package this vault did not export (another vault, bad signature, no
    ``handover.export`` entry) or that was altered; nothing is shredded then."""
    vault = session._vault
    package = _open_package(Path(package_path))
    manifest = package.manifest
    if manifest.get("seller_vault") != vault.vault_id:
        raise VerificationError(
            "handover package: another vault exported it", reason="foreign vault"
        )
    _check_signature(package, vault.public_key)
    session._authorize("admin", "handover.complete")
    if not _export_logged(vault, package):
        raise VerificationError(
            f"handover package {package.id}: this vault's log holds no handover.export of it",
            reason="not exported",
        )
    cids: list[str] = []
    _stream(package, None, lambda customer: cids.append(customer.id))
    where = Path(receipts_dir) if receipts_dir is not None else None
    states = _states(vault, cids)
    if where is not None:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        clobber = [c for c in cids if states.get(c) == "active" and (where / f"{c}.json").exists()]
        if clobber:
            raise StorageError(
                f"{where / (clobber[0] + '.json')} exists but that customer is not shredded yet; "
                "move the file away first"
            )
    receipts: list[Receipt] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    listed: list[dict[str, Any]] = []
    # One keystore scrub for the whole package, not one per customer.
    with vault._keys.scrub_once() as scrubbed:
        for cid in cids:
            item: dict[str, Any] = {"customer": cid}
            if states.get(cid) == "shredded":
                skipped.append(cid)
                item["state"] = "already-shredded"
                old = where / f"{cid}.json" if where is not None else None
                item["receipt_sha256"] = (
                    hashlib.sha256(old.read_bytes()).hexdigest()
                    if old is not None and old.is_file()
                    else None
                )
            else:
                try:
                    receipt = session.shred(cid, reason=PURPOSE)
                except ShreddedError:  # shredded by another process meanwhile
                    skipped.append(cid)
                    item.update(state="already-shredded", receipt_sha256=None)
                except VaultError as error:
                    failed[cid] = str(error)
                    item.update(state="failed", error=type(error).__name__)
                else:
                    receipts.append(receipt)
                    text = receipt.dumps().encode("utf-8")
                    if where is not None:
                        write_file(where / f"{cid}.json", text)
                    item.update(
                        state="shredded",
                        receipt_sha256=hashlib.sha256(text).hexdigest(),
                        seq=receipt.document["entry"]["seq"],
                    )
            listed.append(item)
            if progress is not None:
                progress(1)
    if not scrubbed.done:
        failed["keystore"] = (
            "keys deleted, but the keystore could not be rebuilt yet (another process "
            "holds it open); the next open of the vault finishes it"
        )
    now = format_ts(vault._clock())
    counts = {
        "customers": len(cids),
        "shredded": len(receipts),
        "already_shredded": len(skipped),
        "failed": len(failed),
    }

    def work(tx: Tx) -> int:
        session._gate(tx.conn, "admin", "handover.complete")
        tx.log(
            session._event(
                "handover.complete",
                purpose=PURPOSE,
                detail={"package": package.id, **counts},
            )
        )
        tx.checkpoint = True
        return tx.head.seq + len(tx.events)

    seq = vault._transact(work)
    body = {
        "type": SUMMARY_TYPE,
        "v": 1,
        "package": package.id,
        "manifest_sha256": package.manifest_sha256,
        "vault": vault.vault_id,
        "public_key": "ed25519:" + vault.public_key.hex(),
        "created": now,
        "seq": seq,
        "counts": counts,
        "customers": listed,
    }
    signature = vault._keys.signer.sign(canonical(body))
    summary = {"summary": body, "signature": signature.hex()}
    return HandoverCompletion(summary, receipts, skipped, failed)


def verify_completion(document: dict[str, Any], public_key: bytes) -> bool:
    """True iff a completion summary is signed by ``public_key``."""
    try:
        body = canonical(document["summary"])
        signature = bytes.fromhex(str(document["signature"]))
    except (KeyError, TypeError, ValueError):
        return False
    return verify_signature(public_key, body, signature)


def _export_logged(vault: Vault, package: _Package) -> bool:
    bodies = vault._data.read(
        lambda conn: (
            conn.execute(
                select(log.c.body).where(log.c.action == "handover.export", log.c.outcome == "ok")
            )
            .scalars()
            .all()
        )
    )
    for body in bodies:
        detail = json.loads(body).get("detail") or {}
        if (
            detail.get("package") == package.id
            and detail.get("manifest_sha256") == package.manifest_sha256
        ):
            return True
    return False


def _states(vault: Vault, cids: list[str]) -> dict[str, str]:
    stmt = select(customers.c.id, customers.c.state)
    return {str(r.id): str(r.state) for r in _rows_in(vault, stmt, customers.c.id, cids)}
