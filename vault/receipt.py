"""Erasure receipts (DESIGN §7): offline proof that a customer was crypto-shredded.

A receipt carries the ``customer.shred`` log entry, the signed checkpoint at exactly
that entry, the vault's public key and the customer's (now destroyed) subject tag. The
entry commits to the customer through ``customer_commitment = SHA-256(label ‖ vault ‖
customer ‖ tag)``: with the tag destroyed nobody can test a guessed customer id against
the log, yet whoever holds the receipt can show which customer it names.
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
    "RECEIPT_TYPE",
    "SCOPE",
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
        if document.get("type") != RECEIPT_TYPE or document.get("v") != 1:
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
    if document.get("scope") != SCOPE:
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
    )
