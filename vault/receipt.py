"""Erasure receipts (DESIGN §7): offline proof that a customer was crypto-shredded.

A receipt carries the ``customer.shred`` log entry, the signed checkpoint at exactly
that entry, the vault's public key and the customer's (now destroyed) subject tag. The
entry commits to the customer through ``customer_commitment = SHA-256(label ‖ vault ‖
customer ‖ tag)``: with the tag destroyed nobody can test a guessed customer id against
the log, yet whoever holds the receipt can show which customer it names.

Version 2 (keys erased in place, docs/keys.md) also states when the customer's key
material left the keystore's files: the shred entry's ``detail.keystore_erasure``
names the method and the keystore's scrub epoch, and the scope says what each means.
Version 1 receipts (a rebuild of the keystore at every shred) still verify.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .canonical import canonical
from .checkpoint import checkpoint_from_json
from .errors import VerificationError
from .files import write_file
from .inputs import load_json_document
from .log import entry_hash
from .trust import NO_TRUSTED_KEY, PINNED, no_trusted_key_message, trust_of

__all__ = [
    "ERASURE_METHOD",
    "RECEIPT_TYPE",
    "SCOPE",
    "SCOPE_V2",
    "Receipt",
    "ReceiptReport",
    "customer_commitment",
    "load_receipt",
    "verify_receipt",
]

RECEIPT_TYPE = "shredvault-erasure-receipt"
_COMMIT_LABEL = b"shredvault/customer-commitment/v1"

SCOPE = (
    "Every data-encryption key of this customer and its subject tag were deleted from the "
    "vault's keystore (SQLite secure_delete, WAL truncated), so every copy of the "
    "customer's ciphertext, wherever it is, can no longer be decrypted with this vault. "
    "Not covered: a copy of keys.db made before the shred (for example a backup) still "
    "holds the key until that copy is destroyed or expires; restoring a backup replays "
    "this shred before the vault serves. Plaintext the business exported or printed "
    "before the shred is outside the vault. Until `shredvault compact` runs, the "
    "customer's unreadable ciphertext rows still carry its id and the record ids that "
    "older log entries name; compaction removes them."
)


# Version 2 (docs/log-format.md §8): the keys were overwritten in place.
ERASURE_METHOD = "in-place/v1"
SCOPE_V2 = (
    "Every data-encryption key of this customer and its subject tag were overwritten in "
    "place in the vault's keystore, and the keystore's WAL truncated, before the time of "
    "the shred entry: from that time no byte of them is in the keystore's files, so every "
    "copy of the customer's ciphertext, wherever it is, can no longer be decrypted with "
    "this vault. The keystore rows that held them (now filler) go, with any index cell "
    "that may still tie the customer id to where its keys were stored (no key material), "
    "when the keystore scrub epoch named in the entry closes: after at most 1,024 more "
    "erased customers (fewer in a smaller keystore), at the vault's next open, or at the "
    "end of a bulk operation. Not "
    "covered: a copy of keys.db made before the shred (for example a backup) still holds "
    "the key until that copy is destroyed or expires; restoring a backup replays this "
    "shred before the vault serves. Plaintext the business exported or printed before the "
    "shred is outside the vault. The shred deleted the customer's ciphertext rows from the "
    "data store; copies of the data store made before it keep them, unreadable without a "
    "copy of the keys."
)
_SCOPES = {1: SCOPE, 2: SCOPE_V2}


def customer_commitment(vault_id: str, customer_id: str, subject_tag: bytes, salt: bytes) -> str:
    """SHA-256 hex binding a shred entry to one customer. The 256-bit ``salt`` exists
    only in the receipt once the shred is done, so the entry (which also names the
    subject tag) cannot be tested against guessed customer ids."""
    h = hashlib.sha256(_COMMIT_LABEL)
    for part in (vault_id.encode(), customer_id.encode(), subject_tag, salt):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, repr=False)
class Receipt:
    """A receipt as issued: ``to_json`` is the portable document. Its salt and subject
    tag link the customer to its old log entries, so the repr shows neither."""

    document: dict[str, Any]

    def __repr__(self) -> str:
        seq = self.document.get("checkpoint", {}).get("checkpoint", {}).get("seq")
        return f"<Receipt customer={self.document.get('customer')} seq={seq}, salt redacted>"

    @property
    def customer(self) -> str:
        return str(self.document["customer"])

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)

    def dumps(self) -> str:
        return json.dumps(self.document, indent=2, sort_keys=True) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write owner-only (0600) and atomically: a receipt links a customer to its
        history. Never replaces a file: :class:`OutputExistsError` if ``path`` exists
        (or appears while it is written)."""
        write_file(path, self.dumps().encode("utf-8"))


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    ok: bool
    reason: str | None
    message: str
    customer: str | None = None
    vault: str | None = None
    seq: int | None = None
    shredded_at: str | None = None
    #: what the key checked against is (``vault.trust``); None when not verified
    trust: str | None = None
    #: from when no byte of the customer's keys is in the keystore's files: the shred
    #: entry's time (both versions erased them before writing it)
    keys_unrecoverable_since: str | None = None
    #: v2: the keystore scrub epoch whose close removes the rows left in place
    scrub_epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "customer": self.customer,
            "vault": self.vault,
            "seq": self.seq,
            "shredded_at": self.shredded_at,
            "trust": self.trust,
            "keys_unrecoverable_since": self.keys_unrecoverable_since,
            "scrub_epoch": self.scrub_epoch,
        }


def load_receipt(path: str | os.PathLike[str]) -> dict[str, Any]:
    return load_json_document(path, "receipt")


def verify_receipt(
    document: dict[str, Any],
    *,
    public_key: bytes | None = None,
    trust_embedded_key: bool = False,
) -> ReceiptReport:
    """Check a receipt offline (docs/log-format.md §8, in that order). ``public_key``
    is the vault key the verifier trusts: a receipt naming another key fails (``wrong
    key``). Without it the receipt is checked under its own copy of the key and, if
    nothing else is wrong, fails with reason ``"no trusted key"`` (never ok) unless
    ``trust_embedded_key`` is set, when ``trust`` says ``"self-asserted"``."""

    def fail(reason: str, message: str) -> ReceiptReport:
        return ReceiptReport(False, reason, message)

    try:
        version = document.get("v")
        if (
            document.get("type") != RECEIPT_TYPE
            or type(version) is not int
            or version not in _SCOPES
        ):
            return fail("malformed", "not a shredvault erasure receipt")
        vault_id = str(document["vault"])
        customer = str(document["customer"])
        tag = bytes.fromhex(str(document["subject_tag"]))
        salt = bytes.fromhex(str(document["salt"]))
        entry = dict(document["entry"])
        cp = checkpoint_from_json(document["checkpoint"])
        embedded = bytes.fromhex(str(document["public_key"]).removeprefix("ed25519:"))
    except (KeyError, TypeError, ValueError, VerificationError) as error:
        return fail("malformed", f"receipt is malformed: {error}")
    if public_key is not None and public_key != embedded:
        return fail("wrong key", "the receipt names another public key than the trusted one")
    if document.get("scope") != _SCOPES[version]:
        return fail("modified", "the scope statement was altered")
    key = public_key if public_key is not None else embedded
    claimed_hash = entry.pop("hash", None)
    try:
        body = canonical(entry)
    except (TypeError, ValueError) as error:  # NaN, a non-JSON value: not canonical
        return fail("malformed", f"receipt is malformed: {error}")
    digest = entry_hash(body)
    if claimed_hash != digest:
        return fail("modified", "the shred entry does not match its hash (altered)")
    if cp.vault != vault_id:
        return fail("foreign vault", "the checkpoint belongs to another vault")
    if not cp.verify(key):
        return fail("bad signature", "the checkpoint signature does not verify")
    if cp.seq != entry.get("seq") or cp.head != digest:
        return fail("modified", "the signed checkpoint is not at this shred entry")
    if entry.get("action") != "customer.shred" or entry.get("outcome") != "ok":
        return fail("modified", "the entry is not a successful customer.shred")
    if entry.get("subject") != tag.hex():
        return fail("wrong customer", "the entry names another subject tag")
    detail = entry.get("detail") or {}
    if detail.get("customer_commitment") != customer_commitment(vault_id, customer, tag, salt):
        return fail("wrong customer", "the entry does not commit to this customer")
    scrub_epoch = None
    if version == 2:
        scrub_epoch = erasure_epoch(detail)
        if scrub_epoch is None:
            return fail("modified", "the entry does not say how the keys were erased")
    trust = trust_of(public_key, trust_embedded_key=trust_embedded_key)
    if trust is None:
        return fail(NO_TRUSTED_KEY, no_trusted_key_message("receipt"))
    note = "" if trust == PINNED else " (self-asserted: under the receipt's own key)"
    return ReceiptReport(
        True,
        None,
        f"customer {customer} was shredded at seq {cp.seq} on {entry.get('ts')}{note}",
        customer=customer,
        vault=vault_id,
        seq=cp.seq,
        shredded_at=str(entry.get("ts")),
        trust=trust,
        keys_unrecoverable_since=str(entry.get("ts")),
        scrub_epoch=scrub_epoch,
    )


def erasure_epoch(detail: dict[str, Any]) -> int | None:
    """The scrub epoch of a v2 shred entry's ``keystore_erasure``, or None when that
    member is missing or not exactly ``{"method": "in-place/v1", "scrub_epoch": n ≥ 1}``."""
    erasure = detail.get("keystore_erasure")
    if not isinstance(erasure, dict) or set(erasure) != {"method", "scrub_epoch"}:
        return None
    epoch = erasure["scrub_epoch"]
    if erasure["method"] != ERASURE_METHOD or type(epoch) is not int or epoch < 1:
        return None
    return epoch
