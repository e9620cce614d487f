"""The handover package format (docs/handover.md) and the acquirer's key files.

A package is one file, integers big-endian::

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
(constant memory).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..keys import (
    DecryptionError,
    KdfParams,
    aad,
)
from ..keys.sealed import (
    HandoverKey,
    PackageCipher,
    load_handover_key,
    load_handover_public_key,
    write_handover_key,
)
from . import ids
from .canonical import canonical
from .errors import SchemaError, VerificationError, keys_errors
from .inputs import parse_json
from .trust import verify_typed

__all__ = [
    "CUSTOMER",
    "END",
    "KEY",
    "MAGIC",
    "MANIFEST",
    "MANIFEST_TYPE",
    "PURPOSE",
    "RECORD",
    "SIGNATURE",
    "SUMMARY_TYPE",
    "U32",
    "HandoverKey",
    "Package",
    "PackageCustomer",
    "PackageWriter",
    "check_signature",
    "handover_keygen",
    "malformed",
    "modified",
    "open_handover_key",
    "open_package",
    "parts",
    "read_frame",
    "read_handover_public_key",
    "read_manifest",
    "record_aad",
    "split_parts",
    "stream_customers",
    "verify_completion",
]

MAGIC = b"SVHOPKG1"
END = b"SVHOEND1"
MANIFEST_TYPE = "shredvault-handover"
SUMMARY_TYPE = "shredvault-handover-completion"
PURPOSE = "business-transfer"
KEY, RECORD, CUSTOMER, MANIFEST, SIGNATURE = 1, 2, 3, 4, 5
U32 = struct.Struct(">I")
FRAME = struct.Struct(">BI")
TRAILER = struct.Struct(">Q8s")
RECORD_LABEL = b"shredvault/handover-record/v1"
MAX_FRAME = 64 * 1024 * 1024


def handover_keygen(
    out: str | os.PathLike[str], passphrase: bytes, *, params: KdfParams | None = None
) -> tuple[Path, Path, str]:
    """Write a new X25519 key pair: ``OUT.pub`` to share, ``OUT.key`` (0600) sealed under
    Argon2id(passphrase). Returns both paths and the key's fingerprint. Refuses to
    overwrite; raises :class:`UnlockError` for an empty passphrase or weak parameters."""
    with keys_errors():  # also the writer's refusal to overwrite a key file
        return write_handover_key(Path(out), passphrase, params=params)


def open_handover_key(path: str | os.PathLike[str], passphrase: bytes) -> HandoverKey:
    """Unseal ``OUT.key``; :class:`UnlockError` for a wrong passphrase or a weakened
    header, :class:`~keys.InvalidKeyError` for something that is not a key file."""
    with keys_errors(bad_key=None):
        return load_handover_key(Path(path), passphrase)


def read_handover_public_key(path: str | os.PathLike[str]) -> bytes:
    """The acquirer's X25519 public key from ``OUT.pub`` (fingerprint checked)."""
    return load_handover_public_key(Path(path))


def parts(*values: bytes) -> bytes:
    return b"".join(U32.pack(len(v)) + v for v in values)


def split_parts(payload: bytes, count: int) -> tuple[list[bytes], bytes]:
    out: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(payload):
            raise malformed("a record frame is truncated")
        (n,) = U32.unpack_from(payload, at)
        at += 4
        if at + n > len(payload):
            raise malformed("a record frame is truncated")
        out.append(payload[at : at + n])
        at += n
    return out, payload[at:]


def record_aad(package: str, customer: str, record: str, kind: str) -> bytes:
    return aad(RECORD_LABEL, package.encode(), customer.encode(), record.encode(), kind.encode())


def malformed(message: str) -> VerificationError:
    return VerificationError(f"handover package: {message}", reason="malformed")


def modified(message: str) -> VerificationError:
    return VerificationError(f"handover package: {message}", reason="modified")


class PackageWriter:
    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.offset = 0
        handle.write(MAGIC)
        self.offset += len(MAGIC)

    def frame(self, kind: int, payload: bytes) -> None:
        self._handle.write(FRAME.pack(kind, len(payload)))
        self._handle.write(payload)
        self.offset += FRAME.size + len(payload)

    def trailer(self, manifest_offset: int) -> None:
        self._handle.write(TRAILER.pack(manifest_offset, END))


@dataclass(frozen=True, slots=True)
class Package:
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


def read_frame(handle: IO[bytes], limit: int = MAX_FRAME) -> tuple[int, bytes]:
    head = handle.read(FRAME.size)
    if len(head) != FRAME.size:
        raise malformed("a frame is truncated")
    kind, length = FRAME.unpack(head)
    if length > limit:
        raise malformed("a frame is larger than allowed")
    payload = handle.read(length)
    if len(payload) != length:
        raise malformed("a frame is truncated")
    return kind, payload


def open_package(path: Path) -> Package:
    """Read the trailer, the manifest and its signature (not yet verified)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC or size < len(MAGIC) + TRAILER.size:
                raise malformed("not a shredvault handover package (v1)")
            handle.seek(size - TRAILER.size)
            offset, end = TRAILER.unpack(handle.read(TRAILER.size))
            if end != END or not len(MAGIC) <= offset < size - TRAILER.size:
                raise malformed("the trailer is damaged (truncated file?)")
            handle.seek(offset)
            kind, body = read_frame(handle)
            sig_kind, signature = read_frame(handle, 64)
            if kind != MANIFEST or sig_kind != SIGNATURE or len(signature) != 64:
                raise malformed("no manifest and signature where the trailer points")
            if handle.tell() != size - TRAILER.size:
                raise malformed("bytes between the signature and the trailer")
    except OSError as error:
        raise malformed(f"cannot read {path}: {error.strerror}") from None
    try:
        manifest = parse_json(body, what="the manifest")
    except SchemaError as error:
        raise malformed(str(error)) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("type") != MANIFEST_TYPE
        or manifest.get("v") != 1
        or canonical(manifest) != body
        or not ids.is_id(manifest.get("package"), "pkg_")
        or any(not isinstance(manifest.get(k), t) for k, t in _MANIFEST_FIELDS.items())
    ):
        raise malformed("not a canonical v1 handover manifest")
    return Package(path, manifest, body, signature, offset)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a package, as written (its signature is not checked here)."""
    return dict(open_package(Path(path)).manifest)


def check_signature(package: Package, public_key: bytes) -> None:
    if not verify_typed(public_key, package.body, package.signature, MANIFEST_TYPE):
        raise VerificationError(
            "handover package: the manifest signature does not verify against the seller key",
            reason="bad signature",
        )


@dataclass(slots=True, repr=False)
class PackageCustomer:
    entry: dict[str, Any]
    records: list[tuple[str, str, bytes]]  # (record id, kind, plaintext) when decrypting

    def __repr__(self) -> str:  # the records are plaintext: never show them
        return (
            f"<PackageCustomer {self.entry.get('customer')} records={len(self.records)}, redacted>"
        )

    @property
    def id(self) -> str:
        return str(self.entry["customer"])


def stream_customers(
    package: Package, cipher: PackageCipher | None, on_customer: Callable[[PackageCustomer], None]
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
        kind, sealed_key = read_frame(handle, 1024)
        if kind != KEY or hashlib.sha256(sealed_key).hexdigest() != manifest["sealed_key_sha256"]:
            raise modified("the sealed package key does not match the manifest")
        pending: list[tuple[str, str, str, str]] = []  # (customer, record, kind, sha256)
        plain: list[tuple[str, str, bytes]] = []
        while handle.tell() < package.manifest_offset:
            kind, payload = read_frame(handle)
            if kind == RECORD:
                (cid_b, rid_b, kind_b), blob = split_parts(payload, 3)
                cid, rid, knd = cid_b.decode(), rid_b.decode(), kind_b.decode()
                if not ids.is_id(cid, ids.CUSTOMER) or not ids.is_id(rid, ids.RECORD):
                    raise malformed("a record frame holds a malformed id")
                if knd not in known_kinds:
                    raise modified(f"a record of kind {knd!r} the manifest does not list")
                pending.append((cid, rid, knd, hashlib.sha256(payload).hexdigest()))
                if cipher is not None:
                    try:
                        text = cipher.open(blob, record_aad(pkg, cid, rid, knd))
                    except DecryptionError:
                        raise modified(f"record {rid} fails authentication") from None
                    plain.append((rid, knd, text))
            elif kind == CUSTOMER:
                try:
                    entry = parse_json(payload, what="a customer entry", fail=ValueError)
                    if not isinstance(entry, dict) or canonical(entry) != payload:
                        raise ValueError("not canonical")
                    cid = str(entry["customer"])
                    listed = [(cid, r["id"], r["kind"], r["sha256"]) for r in entry["records"]]
                except (ValueError, KeyError, TypeError):
                    raise malformed("a customer entry is damaged") from None
                if listed != pending:
                    raise modified(
                        f"the records of customer {cid} do not match its entry "
                        "(altered, swapped, added or removed)"
                    )
                if cid in seen or not ids.is_id(cid, ids.CUSTOMER):
                    raise modified("a customer appears twice or has a malformed id")
                seen.add(cid)
                index.update(U32.pack(len(payload)) + payload)
                total_records += len(pending)
                on_customer(PackageCustomer(entry, plain))
                pending, plain = [], []
            else:
                raise malformed(f"unexpected frame type {kind}")
        if pending or handle.tell() != package.manifest_offset:
            raise modified("records after the last customer entry")
    if index.hexdigest() != manifest["customer_index_sha256"]:
        raise modified("the customer index does not match the manifest")
    if len(seen) != manifest["customers"] or total_records != manifest["records"]:
        raise modified("the customer or record count does not match the manifest")


def verify_completion(document: dict[str, Any], public_key: bytes) -> bool:
    """True iff a completion summary is signed by ``public_key`` (and is one: a
    checkpoint or another signed object of the vault's is not)."""
    try:
        body = canonical(document["summary"])
        signature = bytes.fromhex(str(document["signature"]))
    except (KeyError, TypeError, ValueError):
        return False
    return verify_typed(public_key, body, signature, SUMMARY_TYPE)


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
