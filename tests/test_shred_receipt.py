"""Erasure receipts (DESIGN §7): verifiable offline with the vault's public key alone,
and every kind of tampering or splicing is refused with the right reason."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import Auditor, Vault, format_public_key, load_receipt, verify_receipt
from shredvault.vault.canonical import canonical
from shredvault.vault.ids import CUSTOMER, new_id

PURPOSE = "service"
REASON = "erasure request (GDPR art. 17)"


@dataclass(frozen=True)
class Issued:
    """A receipt from vault A (read back from its file after A was closed) and one from
    an unrelated vault B, for splicing."""

    path: Path
    receipt: dict[str, Any]
    text: str
    public_key: bytes
    customer: str
    other_receipt: dict[str, Any]
    other_public_key: bytes
    other_customer: str

    def fresh(self) -> dict[str, Any]:
        return copy.deepcopy(self.receipt)


def _shred_in_new_vault(root: Path, name: str) -> tuple[Path, bytes, str, Path]:
    keyfile = root / f"{name}.key"
    generate_keyfile(keyfile)
    with Vault.create(root / name, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        s.put(s.add_customer(), "profile", {"name": "Bystander"}, purpose=PURPOSE)
        cid = s.add_customer(ref="crm-77")
        s.put_many([(cid, "profile", {"name": f"R{i}"}) for i in range(3)], purpose=PURPOSE)
        receipt = s.shred(cid, reason=REASON)
        out = root / f"{name}.receipt.json"
        receipt.write(out)
        return out, v.public_key, cid, root / name


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    root = tmp_path_factory.mktemp("receipts")
    path_a, key_a, cid_a, vault_a = _shred_in_new_vault(root, "a")
    path_b, key_b, cid_b, _ = _shred_in_new_vault(root, "b")
    return Issued(
        vault_a,
        load_receipt(path_a),
        path_a.read_text("utf-8"),
        key_a,
        cid_a,
        load_receipt(path_b),
        key_b,
        cid_b,
    )


# -- a good receipt --------------------------------------------------------------------


def test_receipt_verifies_offline_with_the_vault_public_key(issued: Issued) -> None:
    report = verify_receipt(issued.fresh(), public_key=issued.public_key)
    assert report.ok, report.message
    assert report.reason is None
    assert report.customer == issued.customer
    assert report.vault == issued.receipt["vault"]
    assert (
        report.seq
        == issued.receipt["entry"]["seq"]
        == issued.receipt["checkpoint"]["checkpoint"]["seq"]
    )
    assert report.shredded_at == issued.receipt["entry"]["ts"]
    assert issued.customer in report.message


def test_receipt_names_the_shred_entry_and_the_key_the_vault_publishes(issued: Issued) -> None:
    doc = issued.fresh()
    entry = doc["entry"]
    assert (entry["action"], entry["outcome"]) == ("customer.shred", "ok")
    assert entry["subject"] == doc["subject_tag"]
    assert entry["detail"]["reason"] == REASON
    assert entry["detail"]["records"] == 3
    with Auditor.open(issued.path) as auditor:
        assert doc["public_key"] == format_public_key(auditor.public_key)
        assert auditor.public_key == issued.public_key


def test_receipt_without_a_trusted_key_is_not_verified_unless_self_asserted(
    issued: Issued,
) -> None:
    report = verify_receipt(issued.fresh())
    assert (report.ok, report.reason, report.trust) == (False, "no trusted key", None)
    asserted = verify_receipt(issued.fresh(), trust_embedded_key=True)
    assert asserted.ok and asserted.trust == "self-asserted"
    assert "self-asserted" in asserted.message
    pinned = verify_receipt(issued.fresh(), public_key=issued.public_key)
    assert pinned.ok and pinned.trust == "pinned"


def test_receipt_states_its_scope_including_copies_of_keys_db(issued: Issued) -> None:
    scope = issued.receipt["scope"]
    assert "keys.db" in scope
    assert "backup" in scope and "copy" in scope
    assert "Not covered" in scope
    assert json.dumps(scope) in issued.text  # the receipt file carries it, word for word


# -- tampering -------------------------------------------------------------------------


def _rehash(entry: dict[str, Any]) -> None:
    body = canonical({k: v for k, v in entry.items() if k != "hash"})
    entry["hash"] = hashlib.sha256(b"shredvault/log/v1\n" + body).hexdigest()


def _flip_hex(text: str, at: int = 10) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def _set_ts(doc: dict[str, Any], issued: Issued) -> None:
    doc["entry"]["ts"] = "2000-01-01T00:00:00.000000Z"


def _set_actor(doc: dict[str, Any], issued: Issued) -> None:
    doc["entry"]["actor"] = "someone-else"


def _set_reason(doc: dict[str, Any], issued: Issued) -> None:
    doc["entry"]["detail"]["reason"] = "customer asked nicely"


def _set_records(doc: dict[str, Any], issued: Issued) -> None:
    doc["entry"]["detail"]["records"] = 0


def _set_reason_and_rehash(doc: dict[str, Any], issued: Issued) -> None:
    doc["entry"]["detail"]["reason"] = "customer asked nicely"
    _rehash(doc["entry"])


def _flip_signature(doc: dict[str, Any], issued: Issued) -> None:
    doc["checkpoint"]["signature"] = _flip_hex(doc["checkpoint"]["signature"])


def _move_checkpoint(doc: dict[str, Any], issued: Issued) -> None:
    doc["checkpoint"]["checkpoint"]["seq"] += 1


def _splice_foreign_checkpoint(doc: dict[str, Any], issued: Issued) -> None:
    doc["checkpoint"] = copy.deepcopy(issued.other_receipt["checkpoint"])


def _foreign_receipt(doc: dict[str, Any], issued: Issued) -> None:
    doc.clear()
    doc.update(copy.deepcopy(issued.other_receipt))


def _unknown_customer(doc: dict[str, Any], issued: Issued) -> None:
    doc["customer"] = new_id(CUSTOMER)


def _other_receipts_customer(doc: dict[str, Any], issued: Issued) -> None:
    doc["customer"] = issued.other_customer


def _wrong_tag(doc: dict[str, Any], issued: Issued) -> None:
    doc["subject_tag"] = _flip_hex(doc["subject_tag"], 0)


def _wrong_tag_and_subject(doc: dict[str, Any], issued: Issued) -> None:
    # Consistent with the entry, but the entry was rehashed: the checkpoint disagrees.
    doc["subject_tag"] = _flip_hex(doc["subject_tag"], 0)
    doc["entry"]["subject"] = doc["subject_tag"]
    _rehash(doc["entry"])


def _missing_entry(doc: dict[str, Any], issued: Issued) -> None:
    del doc["entry"]


def _not_a_receipt(doc: dict[str, Any], issued: Issued) -> None:
    doc["type"] = "shredvault-log-export"


TAMPERING: list[tuple[str, Callable[[dict[str, Any], Issued], None], str]] = [
    ("entry-ts-altered", _set_ts, "modified"),
    ("entry-actor-altered", _set_actor, "modified"),
    ("reason-altered", _set_reason, "modified"),
    ("record-count-altered", _set_records, "modified"),
    ("reason-altered-and-rehashed", _set_reason_and_rehash, "modified"),
    ("checkpoint-signature-altered", _flip_signature, "bad signature"),
    ("checkpoint-moved-to-another-seq", _move_checkpoint, "bad signature"),
    ("checkpoint-from-another-vault", _splice_foreign_checkpoint, "foreign vault"),
    ("receipt-of-another-vault", _foreign_receipt, "wrong key"),
    ("unknown-customer-id", _unknown_customer, "wrong customer"),
    ("another-receipts-customer-id", _other_receipts_customer, "wrong customer"),
    ("wrong-subject-tag", _wrong_tag, "wrong customer"),
    ("wrong-subject-tag-and-rehashed-entry", _wrong_tag_and_subject, "modified"),
    ("entry-missing", _missing_entry, "malformed"),
    ("not-a-receipt", _not_a_receipt, "malformed"),
]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [pytest.param(t, r, id=name) for name, t, r in TAMPERING],
)
def test_tampered_receipt_is_refused_with_the_right_reason(
    issued: Issued, tamper: Callable[[dict[str, Any], Issued], None], reason: str
) -> None:
    doc = issued.fresh()
    tamper(doc, issued)
    report = verify_receipt(doc, public_key=issued.public_key)
    assert (report.ok, report.reason) == (False, reason), report.message
    assert report.customer is None and report.seq is None


def test_receipt_checked_with_another_vaults_key_is_the_wrong_key(issued: Issued) -> None:
    report = verify_receipt(issued.fresh(), public_key=issued.other_public_key)
    assert (report.ok, report.reason) == (False, "wrong key")


def test_receipt_naming_the_trusted_key_but_signed_by_another_has_a_bad_signature(
    issued: Issued,
) -> None:
    doc = issued.fresh()
    doc["public_key"] = issued.other_receipt["public_key"]
    report = verify_receipt(doc, public_key=issued.other_public_key)
    assert (report.ok, report.reason) == (False, "bad signature")


def test_receipt_whose_embedded_key_was_swapped_fails_without_a_trusted_key(
    issued: Issued,
) -> None:
    doc = issued.fresh()
    doc["public_key"] = issued.other_receipt["public_key"]
    report = verify_receipt(doc)
    assert (report.ok, report.reason) == (False, "bad signature")


def test_the_untampered_receipt_still_verifies_after_the_tampering_tests(issued: Issued) -> None:
    # Guards the fixture: every tamper above worked on a copy.
    assert verify_receipt(issued.fresh(), public_key=issued.public_key).ok


def test_receipt_with_an_edited_scope_statement_is_refused(issued: Issued) -> None:
    doc = issued.fresh()
    doc["scope"] = "Every copy of this customer's keys, including all backups, was destroyed."
    assert not verify_receipt(doc, public_key=issued.public_key).ok
