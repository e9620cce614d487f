"""The worked examples in docs/ (receipt, certificate, handover key files and package,
backup manifest) are recomputed from the code with fixed keys, and each is accepted by
the code's own reader or verifier: the docs cannot drift from what the code makes.

The random parts that cannot be fixed through the code (the SealedBox of the package
key, made with an ephemeral key) are constants here that the code must open. Run this
file as a script to rewrite the example blocks after a deliberate format change:
``.venv/bin/python tests/test_docs_examples.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from shredvault.keys import SecretBytes, Signer, verify_signature
from shredvault.keys.sealed import (
    HANDOVER_PARAMS,
    HandoverKey,
    PackageCipher,
    dump_key_document,
    handover_fingerprint,
    load_handover_key,
    load_handover_public_key,
    private_key_document,
    public_key_document,
)
from shredvault.vault import SchemaError, Vault, verify_certificate, verify_receipt
from shredvault.vault.audit import format_public_key
from shredvault.vault.canonical import canonical
from shredvault.vault.certificate import (
    CERTIFICATE_SCOPE,
    CERTIFICATE_TYPE,
    SIGNING_KEY_NOTE,
    sign_certificate,
)
from shredvault.vault.checkpoint import make_checkpoint
from shredvault.vault.log import Event, encode_body, entry_hash, export_line
from shredvault.vault.package import (
    CUSTOMER,
    KEY,
    MANIFEST,
    MANIFEST_TYPE,
    PURPOSE,
    RECORD,
    SIGNATURE,
    PackageCustomer,
    PackageWriter,
    check_signature,
    open_package,
    parts,
    record_aad,
    stream_customers,
)
from shredvault.vault.receipt import (
    ERASURE_METHOD,
    RECEIPT_TYPE,
    SCOPE,
    SCOPE_V2,
    Receipt,
    customer_commitment,
)
from shredvault.vault.schema import check_name
from shredvault.vault.store import LogHead

DOCS = Path(__file__).resolve().parent.parent / "docs"

# -- the fixed material ---------------------------------------------------------------------

SIGNING_SEED = bytes(range(32))  # the seller's / vault's Ed25519 seed
VAULT = "vlt_exampleexampleexampleexamp"
CUSTOMER_ID = "cus_customercustomercustomercu"
RECORD_ID = "rec_recordrecordrecordrecordre"
PACKAGE_ID = "pkg_packagepackagepackagepacka"
BACKUP_ID = "bak_backupbackupbackupbackupba"
SUBJECT_TAG = bytes.fromhex("3f1c0a9e5b7d4c2e8a6f1b3d5c7e9a0b")
RECEIPT_SALT = bytes(range(0x20, 0x40))
PREV = hashlib.sha256(b"the entry before").hexdigest()
ACQUIRER_PRIVATE = bytes(range(0x40, 0x60))  # X25519
HANDOVER_PASSPHRASE = "Grüße aus Łódź 4471"  # hashed as its UTF-8 bytes
HANDOVER_SALT = bytes(range(0x70, 0x80))
HANDOVER_NONCE = bytes(range(0x80, 0x98))
PACKAGE_KEY = bytes(range(0x60, 0x80))
RECORD_NONCE = bytes(range(0xA0, 0xAC))
RECORD_FIELDS = {"name": "Ada Lovelace", "phone": "+44 20 7946 0000"}
# SealedBox(acquirer public key).encrypt(PACKAGE_KEY), made once (its ephemeral key is
# random); the test checks that the code opens it to PACKAGE_KEY.
SEALED_PACKAGE_KEY = bytes.fromhex(
    "49c72024440f04b9dfb3940bf664296037c3a2e522f7c0029e884ad14a113b1b"
    "6c6b719602cedd802a8b2cddf25e959e7026ff9b519d93aae588bee2c996f5ee"
    "306f6c093c02fa3e22f5bab4870efcb5"
)


def signer() -> Signer:
    return Signer(SecretBytes(SIGNING_SEED))


def _entry(event: Event, seq: int, ts: str, prev: str = PREV) -> tuple[dict[str, Any], str, bytes]:
    body = encode_body(event, seq, ts, prev, event.detail, {})
    digest = entry_hash(body)
    return json.loads(export_line(body, digest)), digest, body


def _fence(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip(chr(10))}\n```"


def _wrap(hex_text: str, width: int = 64) -> str:
    return "\n".join(hex_text[i : i + width] for i in range(0, len(hex_text), width))


# -- receipt ----------------------------------------------------------------------------------


def receipt_document(version: int = 1) -> dict[str, Any]:
    commitment = customer_commitment(VAULT, CUSTOMER_ID, SUBJECT_TAG, RECEIPT_SALT)
    detail: dict[str, Any] = {
        "customer_commitment": commitment,
        "intent_seq": 6,
        "key_fingerprints": [hashlib.sha256(b"wrapped dek").hexdigest()],
        "reason": "customer request",
        "records": 2,
    }
    if version == 2:
        detail["keystore_erasure"] = {"method": ERASURE_METHOD, "scrub_epoch": 3}
    shred = Event(
        "admin",
        "admin",
        "customer.shred",
        subject=SUBJECT_TAG.hex(),
        detail=detail,
    )
    entry, digest, _body = _entry(shred, 7, "2026-11-23T09:00:02.000000Z")
    cp = make_checkpoint(signer(), VAULT, LogHead(7, digest, entry["ts"]))
    return {
        "type": RECEIPT_TYPE,
        "v": version,
        "vault": VAULT,
        "customer": CUSTOMER_ID,
        "subject_tag": SUBJECT_TAG.hex(),
        "salt": RECEIPT_SALT.hex(),
        "entry": entry,
        "checkpoint": cp.to_json(),
        "public_key": format_public_key(signer().public_key),
        "scope": SCOPE_V2 if version == 2 else SCOPE,
    }


def receipt_block() -> str:
    doc = receipt_document()
    preimage = b"shredvault/customer-commitment/v1" + parts(
        VAULT.encode(), CUSTOMER_ID.encode(), SUBJECT_TAG, RECEIPT_SALT
    )
    return "\n\n".join(
        [
            f"Fixed inputs: Ed25519 seed `{SIGNING_SEED.hex()}` (public key "
            f"`{format_public_key(signer().public_key)}`), vault `{VAULT}`, customer "
            f"`{CUSTOMER_ID}`, subject tag `{SUBJECT_TAG.hex()}`, salt `{RECEIPT_SALT.hex()}`.",
            "Commitment pre-image (hex; SHA-256 of it is `detail.customer_commitment`):",
            _fence(_wrap(preimage.hex())),
            "Checkpoint bytes signed (canonical JSON):",
            _fence(canonical(doc["checkpoint"]["checkpoint"]).decode()),
            "The receipt file (`Receipt.dumps`, indented; only the members matter):",
            _fence(Receipt(doc).dumps(), "json"),
        ]
    )


# -- certificate -----------------------------------------------------------------------------


def certificate_document() -> dict[str, Any]:
    epoch = hashlib.sha256(b"wrapped epoch 1").hexdigest()
    final = Event(
        "admin",
        "admin",
        "vault.decommission",
        detail={
            "backups_outstanding": [BACKUP_ID],
            "customers_shredded": 3,
            "customers_shredded_before": 1,
            "intent_seq": 20,
            "kek_epochs_destroyed": [epoch],
            "legal_holds_overridden": 1,
            "reason": "deregistered",
            "records_deleted": 5,
            "stray_deks_destroyed": 0,
        },
    )
    entry, digest, _body = _entry(final, 31, "2026-11-30T17:00:00.000000Z")
    cp = make_checkpoint(signer(), VAULT, LogHead(31, digest, entry["ts"]))
    document = {
        "type": CERTIFICATE_TYPE,
        "v": 1,
        "vault": VAULT,
        "reason": "deregistered",
        "decommissioned_at": entry["ts"],
        "counts": {
            "customers_shredded": 3,
            "customers_shredded_before": 1,
            "records_deleted": 5,
            "legal_holds_overridden": 1,
            "stray_deks_destroyed": 0,
        },
        "log": {"first_seq": 20, "last_seq": 31, "head": digest},
        "final_entry": entry,
        "checkpoint": cp.to_json(),
        "destroyed_keys": {
            "kek_epochs": [{"epoch": 1, "fingerprint": epoch}],
            "signing_key": SIGNING_KEY_NOTE,
        },
        "backups_outstanding": [
            {"id": BACKUP_ID, "seq": 12, "created": "2026-11-25T08:00:00.000000Z", "expires": None}
        ],
        "scope": CERTIFICATE_SCOPE,
    }
    return sign_certificate(document, signer().sign, signer().public_key).document


def certificate_block() -> str:
    doc = certificate_document()
    signed = canonical({k: v for k, v in doc.items() if k != "signature"})
    return "\n\n".join(
        [
            f"Fixed inputs: Ed25519 seed `{SIGNING_SEED.hex()}`, vault `{VAULT}`. The "
            f"signature covers {len(signed)} bytes of canonical JSON (SHA-256 "
            f"`{hashlib.sha256(signed).hexdigest()}`).",
            _fence(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True), "json"),
        ]
    )


# -- handover key files and package ----------------------------------------------------------


def acquirer() -> HandoverKey:
    return HandoverKey(PrivateKey(ACQUIRER_PRIVATE))


def key_files() -> tuple[bytes, bytes]:
    key = acquirer()
    private = private_key_document(
        key, HANDOVER_PASSPHRASE.encode("utf-8"), HANDOVER_PARAMS, HANDOVER_SALT, HANDOVER_NONCE
    )
    return dump_key_document(public_key_document(key.public_key)), dump_key_document(private)


def key_files_block() -> str:
    pub, private = key_files()
    return "\n\n".join(
        [
            f"Fixed inputs: X25519 private key `{ACQUIRER_PRIVATE.hex()}`, passphrase "
            f"`{HANDOVER_PASSPHRASE}` (UTF-8: `{HANDOVER_PASSPHRASE.encode().hex()}`), salt "
            f"`{HANDOVER_SALT.hex()}`, SecretBox nonce `{HANDOVER_NONCE.hex()}`.",
            "`OUT.pub`:",
            _fence(pub.decode(), "json"),
            "`OUT.key`:",
            _fence(private.decode(), "json"),
        ]
    )


def package_frames() -> dict[str, bytes]:
    kind = "profile"
    plaintext = canonical(RECORD_FIELDS)
    context = record_aad(PACKAGE_ID, CUSTOMER_ID, RECORD_ID, kind)
    sealed = RECORD_NONCE + AESGCM(PACKAGE_KEY).encrypt(RECORD_NONCE, plaintext, context)
    record = parts(CUSTOMER_ID.encode(), RECORD_ID.encode(), kind.encode()) + sealed
    customer = canonical(
        {
            "consent": {"transfer": True},
            "customer": CUSTOMER_ID,
            "records": [
                {"id": RECORD_ID, "kind": kind, "sha256": hashlib.sha256(record).hexdigest()}
            ],
            "retain_until": None,
        }
    )
    index = hashlib.sha256(len(customer).to_bytes(4, "big") + customer).hexdigest()
    manifest = canonical(
        {
            "type": MANIFEST_TYPE,
            "v": 1,
            "package": PACKAGE_ID,
            "purpose": PURPOSE,
            "seller_vault": VAULT,
            "seller_public_key": format_public_key(signer().public_key),
            "recipient_fingerprint": acquirer().fingerprint,
            "created": "2026-11-28T10:00:00.000000Z",
            "customers": 1,
            "records": 1,
            "excluded": 1,
            "excluded_no_consent": 1,
            "excluded_shredded": 0,
            "kinds": {kind: {"fields": ["name", "phone"], "purposes": ["service"]}},
            "sealed_key_sha256": hashlib.sha256(SEALED_PACKAGE_KEY).hexdigest(),
            "customer_index_sha256": index,
        }
    )
    out = io.BytesIO()
    writer = PackageWriter(out)
    writer.frame(KEY, SEALED_PACKAGE_KEY)
    writer.frame(RECORD, record)
    writer.frame(CUSTOMER, customer)
    offset = writer.offset
    writer.frame(MANIFEST, manifest)
    writer.frame(SIGNATURE, signer().sign(manifest))
    writer.trailer(offset)
    return {
        "plaintext": plaintext,
        "aad": context,
        "record": record,
        "customer": customer,
        "manifest": manifest,
        "signature": signer().sign(manifest),
        "file": out.getvalue(),
    }


def package_block() -> str:
    f = package_frames()
    data = f["file"]
    return "\n\n".join(
        [
            f"Fixed inputs: the seller's Ed25519 seed `{SIGNING_SEED.hex()}`, the acquirer's "
            f"X25519 key above, package key `{PACKAGE_KEY.hex()}`, record nonce "
            f"`{RECORD_NONCE.hex()}`; the KEY payload is one SealedBox of the package key "
            "(its ephemeral key is random, so any other sealing is as valid).",
            "Record plaintext (canonical JSON of the fields):",
            _fence(f["plaintext"].decode()),
            "Record AAD (hex):",
            _fence(_wrap(f["aad"].hex())),
            "RECORD payload (hex: the three length-prefixed ids, nonce, ciphertext, tag):",
            _fence(_wrap(f["record"].hex())),
            "CUSTOMER payload:",
            _fence(f["customer"].decode()),
            "MANIFEST payload:",
            _fence(f["manifest"].decode()),
            "SIGNATURE payload (hex):",
            _fence(_wrap(f["signature"].hex())),
            f"The whole file ({len(data)} bytes, SHA-256 "
            f"`{hashlib.sha256(data).hexdigest()}`), hex:",
            _fence(_wrap(data.hex())),
        ]
    )


# -- backup manifest -------------------------------------------------------------------------


def backup_manifest() -> bytes:
    def digest(content: bytes) -> dict[str, Any]:
        return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}

    return canonical(
        {
            "v": 1,
            "type": "backup",
            "vault": VAULT,
            "backup": BACKUP_ID,
            "seq": 12,
            "head": hashlib.sha256(b"entry 12").hexdigest(),
            "created": "2026-11-25T08:00:00.000000Z",
            "expires": "2027-02-23T08:00:00.000000Z",
            "members": {"data.db": digest(b"data.db bytes"), "keys.db": digest(b"keys.db bytes")},
        }
    )


def backup_block() -> str:
    body = backup_manifest()
    return "\n\n".join(
        [
            f"Fixed inputs: Ed25519 seed `{SIGNING_SEED.hex()}`, vault `{VAULT}`; the "
            "members' hashes are those of the 13-byte texts `data.db bytes` and "
            "`keys.db bytes` (a real archive holds SQLite files).",
            "`manifest.json` (no newline at the end):",
            _fence(body.decode()),
            "`manifest.sig` (128 hex characters, no newline):",
            _fence(_wrap(signer().sign(body).hex())),
        ]
    )


# -- the blocks in the docs ------------------------------------------------------------------

BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("log-format.md", "receipt"): receipt_block,
    ("log-format.md", "receipt-scope"): lambda: _fence(SCOPE),
    ("log-format.md", "receipt-scope-v2"): lambda: _fence(SCOPE_V2),
    ("decommission.md", "certificate-scope"): lambda: _fence(CERTIFICATE_SCOPE),
    ("decommission.md", "signing-key-note"): lambda: _fence(SIGNING_KEY_NOTE),
    ("decommission.md", "certificate"): certificate_block,
    ("handover.md", "key-files"): key_files_block,
    ("handover.md", "package"): package_block,
    ("backup.md", "manifest"): backup_block,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- example:{name}:begin -->\n)(.*?)(\n<!-- example:{name}:end -->)", re.S
    )


def doc_block(doc: str, name: str) -> str:
    match = _pattern(name).search((DOCS / doc).read_text("utf-8"))
    assert match is not None, f"docs/{doc} lost its example:{name} markers"
    return match.group(2)


def rewrite() -> None:
    for (doc, name), make in BLOCKS.items():
        path = DOCS / doc
        text = path.read_text("utf-8")
        match = _pattern(name).search(text)
        assert match is not None, f"docs/{doc}: example:{name} markers not found"
        new = text[: match.start(2)] + make() + text[match.end(2) :]
        path.write_text(new, "utf-8")


# -- tests -----------------------------------------------------------------------------------


def test_every_example_block_in_the_docs_is_what_the_code_makes() -> None:
    for (doc, name), make in BLOCKS.items():
        assert doc_block(doc, name) == make(), f"docs/{doc} example:{name} drifted"


def test_a_v2_receipt_states_when_the_keys_left_the_keystore_and_its_scrub_epoch() -> None:
    doc = receipt_document(2)
    report = verify_receipt(json.loads(Receipt(doc).dumps()), public_key=signer().public_key)
    assert report.ok, report.message
    assert report.keys_unrecoverable_since == doc["entry"]["ts"]
    assert report.scrub_epoch == 3
    v1 = verify_receipt(receipt_document(1), public_key=signer().public_key)
    assert v1.ok and v1.scrub_epoch is None
    assert v1.keys_unrecoverable_since == receipt_document(1)["entry"]["ts"]


def test_a_v2_receipt_with_the_v1_scope_or_without_its_erasure_member_fails() -> None:
    doc = receipt_document(2)
    doc["scope"] = SCOPE
    assert verify_receipt(doc, public_key=signer().public_key).reason == "modified"
    plain = receipt_document(1)
    plain["v"], plain["scope"] = 2, SCOPE_V2
    assert verify_receipt(plain, public_key=signer().public_key).reason == "modified"


def test_the_receipt_example_verifies_and_fails_under_another_key() -> None:
    doc = receipt_document()
    report = verify_receipt(json.loads(Receipt(doc).dumps()), public_key=signer().public_key)
    assert report.ok, report.message
    other = Signer(SecretBytes(bytes(32))).public_key
    assert verify_receipt(doc, public_key=other).reason == "wrong key"


def test_the_certificate_example_verifies() -> None:
    report = verify_certificate(certificate_document(), public_key=signer().public_key)
    assert report.ok, report.message


def test_the_key_file_examples_open_with_the_code(tmp_path: Path) -> None:
    pub, private = key_files()
    (tmp_path / "ex.pub").write_bytes(pub)
    (tmp_path / "ex.key").write_bytes(private)
    public = load_handover_public_key(tmp_path / "ex.pub")
    key = load_handover_key(tmp_path / "ex.key", HANDOVER_PASSPHRASE.encode("utf-8"))
    assert key.public_key == public == acquirer().public_key
    assert json.loads(pub)["fingerprint"] == handover_fingerprint(public)


def test_the_package_example_opens_verifies_and_decrypts_with_the_code(tmp_path: Path) -> None:
    path = tmp_path / "example.svho"
    path.write_bytes(package_frames()["file"])
    package = open_package(path)
    check_signature(package, signer().public_key)
    assert acquirer().open_package_key(SEALED_PACKAGE_KEY).reveal() == PACKAGE_KEY
    seen: list[PackageCustomer] = []
    stream_customers(package, PackageCipher(SecretBytes(PACKAGE_KEY)), seen.append)
    assert [c.id for c in seen] == [CUSTOMER_ID]
    assert seen[0].records == [(RECORD_ID, "profile", canonical(RECORD_FIELDS))]


def test_the_backup_manifest_example_is_signed_and_has_the_members_real_archives_have(
    tmp_path: Path, keyfile: Path
) -> None:
    body = backup_manifest()
    assert verify_signature(signer().public_key, body, signer().sign(body))
    with Vault.create(tmp_path / "v", keyfile=keyfile) as vault:
        vault.admin().backup(tmp_path / "b.tar")
    with tarfile.open(tmp_path / "b.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        real = json.loads(member.read())
    example = json.loads(body)
    assert set(real) == set(example)
    assert set(real["members"]) == set(example["members"])
    assert all(set(m) == {"sha256", "size"} for m in real["members"].values())


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def test_every_example_document_is_rfc8785_and_has_only_ascii_keys() -> None:
    frames = package_frames()
    documents = [
        receipt_document(),
        certificate_document(),
        json.loads(backup_manifest()),
        json.loads(frames["manifest"]),
        json.loads(frames["customer"]),
        *(json.loads(f) for f in key_files()),
    ]
    for document in documents:
        assert canonical(document) == rfc8785.dumps(document)
        assert all(key.isascii() for key in _keys(document))


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_\-]{0,62}", fullmatch=True),
        st.booleans() | st.text() | st.lists(st.text(max_size=3), max_size=3),
        max_size=8,
    )
)
def test_user_named_keys_sort_the_same_as_rfc8785(names: dict[str, Any]) -> None:
    for name in names:
        check_name("kind", name)  # the rule every user-named key passes
    assert canonical(names) == rfc8785.dumps(names)
    assert canonical({"detail": {"consent": names}}) == rfc8785.dumps(
        {"detail": {"consent": names}}
    )


def test_code_point_and_utf16_order_differ_only_for_keys_the_vault_refuses() -> None:
    # U+E000 sorts before U+1F600 by code point, after it by UTF-16 code unit
    # (0xD83D): the one divergence, on keys that no name check lets through.
    keys = {"\ue000": 1, "\U0001f600": 2}
    assert canonical(keys) != rfc8785.dumps(keys)
    for key in keys:
        with pytest.raises(SchemaError):
            check_name("consent", key)


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
