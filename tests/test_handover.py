"""Business handover, library level (issue 9): only consenting customers leave, the
package verifies completely before anything is written, a tampered, foreign, misdirected
or replayed package changes nothing, and the seller's completion shreds exactly the
transferred customers with receipts and a signed summary.

The package is parsed here with an independent reader of the format in
docs/handover.md, so the tamper cases edit real frames."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import func, select, text

from shredvault.keys import FLOOR, KdfParams
from shredvault.vault import (
    AccessDeniedError,
    HandoverConflictError,
    HandoverKey,
    NotFoundError,
    NoTrustedKeyError,
    Role,
    SchemaError,
    ShreddedError,
    UnlockError,
    Vault,
    VerificationError,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
    read_manifest,
    verify_completion,
    verify_receipt,
)
from shredvault.vault.canonical import canonical
from shredvault.vault.log import iter_entries
from shredvault.vault.store import customers, records

VaultFactory = Callable[..., Vault]

PURPOSE = "service"
PASSPHRASE = b"acquirer passphrase"


@dataclass(frozen=True)
class AcquirerKey:
    pub: Path
    key_file: Path
    key: HandoverKey


@pytest.fixture(scope="module")
def acquirer_key(tmp_path_factory: pytest.TempPathFactory) -> AcquirerKey:
    base = tmp_path_factory.mktemp("handover-key")
    pub, key_file, _fp = handover_keygen(base / "acquirer", PASSPHRASE, params=FLOOR)
    return AcquirerKey(pub, key_file, open_handover_key(key_file, PASSPHRASE))


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> AcquirerKey:
    base = tmp_path_factory.mktemp("handover-other")
    pub, key_file, _fp = handover_keygen(base / "other", PASSPHRASE, params=FLOOR)
    return AcquirerKey(pub, key_file, open_handover_key(key_file, PASSPHRASE))


@dataclass
class Seller:
    vault: Vault
    consenting: list[str]
    refusing: str
    silent: str
    shredded: str


def declare(v: Vault) -> None:
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    v.declare_kind("booking", fields=["date", "rooms"], purposes=[PURPOSE])


def make_seller(make_vault: VaultFactory) -> Seller:
    v = make_vault("seller")
    declare(v)
    s = v.admin()
    yes = [
        s.add_customer(consent={"transfer": True}, retain_until="2030-01-01T00:00:00Z"),
        s.add_customer(consent={"transfer": True, "marketing": False}),
    ]
    no = s.add_customer(consent={"transfer": False})
    silent = s.add_customer()
    gone = s.add_customer(consent={"transfer": True})
    s.put_many(
        [
            (yes[0], "profile", {"name": "Amara Okafor", "phone": "+44 20 7946 0000"}),
            (yes[0], "booking", {"date": "2026-12-24", "rooms": 4}),
            (yes[1], "profile", {"name": "Chen Jing"}),
            (no, "profile", {"name": "Refusing Person"}),
            (silent, "profile", {"name": "Silent Person"}),
            (gone, "profile", {"name": "Gone Person"}),
        ],
        purpose=PURPOSE,
    )
    s.shred(gone, reason="customer request")
    return Seller(v, yes, no, silent, gone)


@pytest.fixture
def seller(make_vault: VaultFactory) -> Seller:
    return make_seller(make_vault)


@pytest.fixture
def second_url(backend: str | None, request: pytest.FixtureRequest) -> str | None:
    """A second PostgreSQL schema (one vault per schema), or None on SQLite."""
    if backend is None:
        return None
    make: Callable[[], str] = request.getfixturevalue("pg_schemas")
    return make()


@pytest.fixture
def other_vault(tmp_path: Path, keyfile: Path, second_url: str | None) -> Iterator[Vault]:
    """A second vault on the same backend (its own schema on PostgreSQL)."""
    v = Vault.create(tmp_path / "acquirer", keyfile=keyfile, data_url=second_url)
    yield v
    v.close()


@pytest.fixture
def acquirer(other_vault: Vault) -> Vault:
    declare(other_vault)
    return other_vault


def export(seller: Seller, key: AcquirerKey, out: Path, **kw: Any) -> Path:
    seller.vault.admin().handover_export(read_handover_public_key(key.pub), str(out), **kw)
    return out


# -- an independent reader/writer of the package format (docs/handover.md) ------------------


@dataclass
class Frame:
    type: int
    payload: bytes


def read_frames(path: Path) -> list[Frame]:
    data = path.read_bytes()
    assert data[:8] == b"SVHOPKG1" and data[-8:] == b"SVHOEND1"
    end = len(data) - 16
    frames, at = [], 8
    while at < end:
        kind, length = struct.unpack_from(">BI", data, at)
        frames.append(Frame(kind, data[at + 5 : at + 5 + length]))
        at += 5 + length
    return frames


def write_frames(path: Path, frames: list[Frame]) -> None:
    out = bytearray(b"SVHOPKG1")
    manifest_at = 0
    for f in frames:
        if f.type == 4:
            manifest_at = len(out)
        out += struct.pack(">BI", f.type, len(f.payload)) + f.payload
    out += struct.pack(">Q", manifest_at) + b"SVHOEND1"
    path.write_bytes(bytes(out))


def record_owner(payload: bytes) -> str:
    (n,) = struct.unpack_from(">I", payload, 0)
    return payload[4 : 4 + n].decode()


# -- what "unchanged" means ------------------------------------------------------------------


def snapshot(v: Vault) -> tuple[int, int, int, str]:
    def read(conn: Any) -> tuple[int, int]:
        return (
            conn.execute(select(func.count()).select_from(customers)).scalar_one(),
            conn.execute(select(func.count()).select_from(records)).scalar_one(),
        )

    n_customers, n_records = v._ctx.data.read(read)
    head = v.head
    return n_customers, n_records, head.seq, head.hash


def entries(v: Vault, action: str) -> list[dict[str, Any]]:
    found = [json.loads(e.body) for e in iter_entries(v._ctx.data)]
    return [e for e in found if e["action"] == action]


# -- keys -----------------------------------------------------------------------------------


def test_keygen_writes_a_shareable_public_key_and_an_owner_only_sealed_private_key(
    acquirer_key: AcquirerKey,
) -> None:
    assert stat.S_IMODE(os.stat(acquirer_key.key_file).st_mode) == 0o600
    public = json.loads(acquirer_key.pub.read_text())
    private = json.loads(acquirer_key.key_file.read_text())
    assert public["format"] == "shredvault-handover-public-key"
    assert public["fingerprint"] == acquirer_key.key.fingerprint
    assert private["kdf"]["alg"] == "argon2id" and private["kdf"]["t"] >= 3
    assert private["kdf"]["m"] >= 64 * 1024 and len(bytes.fromhex(private["kdf"]["salt"])) == 16
    assert "redacted" in repr(acquirer_key.key)


def test_keygen_refuses_to_overwrite(acquirer_key: AcquirerKey) -> None:
    with pytest.raises(FileExistsError):
        handover_keygen(acquirer_key.pub.with_suffix(""), PASSPHRASE, params=FLOOR)


def test_wrong_passphrase_is_an_unlock_error(acquirer_key: AcquirerKey) -> None:
    with pytest.raises(UnlockError):
        open_handover_key(acquirer_key.key_file, b"not the passphrase")


def test_a_key_file_weakened_below_the_kdf_floor_is_refused(
    acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    doc = json.loads(acquirer_key.key_file.read_text())
    doc["kdf"]["m"] = 1024
    weak = tmp_path / "weak.key"
    weak.write_text(json.dumps(doc))
    with pytest.raises(UnlockError, match="below the floor"):
        open_handover_key(weak, PASSPHRASE)


def test_keygen_refuses_parameters_below_the_floor(tmp_path: Path) -> None:
    with pytest.raises(UnlockError):
        handover_keygen(tmp_path / "k", PASSPHRASE, params=KdfParams(1, 1024, 1))
    assert list(tmp_path.iterdir()) == []


# -- export ---------------------------------------------------------------------------------


def test_export_takes_only_active_customers_that_consented_to_transfer(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    result = seller.vault.admin().handover_export(
        read_handover_public_key(acquirer_key.pub), str(tmp_path / "p.svho")
    )
    assert (result.customers, result.records) == (2, 3)
    assert (result.excluded_no_consent, result.excluded_shredded) == (2, 1)
    manifest = read_manifest(tmp_path / "p.svho")
    assert manifest["customers"] == 2 and manifest["excluded"] == 3
    assert manifest["recipient_fingerprint"] == acquirer_key.key.fingerprint
    assert manifest["seller_vault"] == seller.vault.vault_id
    assert sorted(manifest["kinds"]) == ["booking", "profile"]
    owners = {record_owner(f.payload) for f in read_frames(tmp_path / "p.svho") if f.type == 2}
    assert owners == set(seller.consenting)
    raw = (tmp_path / "p.svho").read_bytes()
    assert b"Amara" not in raw and b"Refusing" not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "p.svho").st_mode) == 0o600


def test_export_logs_one_handover_entry_per_customer_naming_no_values(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    result = export(seller, acquirer_key, tmp_path / "p.svho")
    handed = entries(seller.vault, "customer.handover")
    tags = seller.vault._ctx.keys.store.subject_tags(seller.consenting)
    assert sorted(e["subject"] for e in handed) == sorted(t.hex() for t in tags.values())
    assert {e["purpose"] for e in handed} == {"business-transfer"}
    assert {e["detail"]["package"] for e in handed} == {read_manifest(result)["package"]}
    (summary,) = entries(seller.vault, "handover.export")
    assert summary["detail"]["customers"] == 2 and summary["detail"]["excluded"] == 3
    text = json.dumps([*handed, summary])
    assert "Amara" not in text and "Chen" not in text
    assert seller.vault.verify_log().ok


def test_export_of_named_customers_counts_the_non_consenting_as_excluded(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    result = seller.vault.admin().handover_export(
        read_handover_public_key(acquirer_key.pub),
        str(tmp_path / "p.svho"),
        customers=[seller.consenting[0], seller.refusing],
    )
    assert (result.customers, result.records, result.excluded) == (1, 2, 1)


def test_export_of_an_unknown_customer_writes_nothing(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError):
        export(seller, acquirer_key, tmp_path / "p.svho", customers=["cus_" + "a" * 26])
    assert list(tmp_path.glob("*p.svho*")) == []


def test_export_refuses_to_overwrite_a_file(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    (tmp_path / "p.svho").write_bytes(b"keep me")
    with pytest.raises(Exception, match="exists"):
        export(seller, acquirer_key, tmp_path / "p.svho")
    assert (tmp_path / "p.svho").read_bytes() == b"keep me"


def test_an_operator_may_not_export_and_the_denial_is_logged(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    token = s.add_principal("clerk", role="operator")
    with pytest.raises(AccessDeniedError):
        seller.vault.login(token).handover_export(
            read_handover_public_key(acquirer_key.pub), str(tmp_path / "p.svho")
        )
    denied = [e for e in entries(seller.vault, "handover.export") if e["outcome"] == "denied"]
    assert len(denied) == 1 and not (tmp_path / "p.svho").exists()
    assert entries(seller.vault, "customer.handover") == []


def test_a_role_granted_export_may_export(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    s.add_role(Role.build("transfer-officer", actions=["export"]))
    token = s.add_principal("officer", role="transfer-officer")
    result = seller.vault.login(token).handover_export(
        read_handover_public_key(acquirer_key.pub), str(tmp_path / "p.svho")
    )
    assert result.customers == 2


# -- import ---------------------------------------------------------------------------------


def test_import_creates_the_customers_with_their_records_consent_and_retention(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    result = acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    assert sorted(result.customers) == sorted(seller.consenting)
    assert result.records == 3 and result.seller_key_trusted is True
    s = acquirer.admin()
    first = s.customer(seller.consenting[0])
    assert first.consent == {"transfer": True}
    assert first.retain_until == "2030-01-01T00:00:00.000000Z"
    names = {r.fields.get("name") for r in s.list_records(seller.consenting[0], purpose=PURPOSE)}
    assert names == {"Amara Okafor", None}
    for absent in (seller.refusing, seller.silent, seller.shredded):
        with pytest.raises(NotFoundError):
            s.customer(absent)
    assert acquirer.verify_log().ok


def test_imported_customers_get_fresh_keys(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    cid = seller.consenting[0]
    assert seller.vault._ctx.keys.fingerprints(cid) != acquirer._ctx.keys.fingerprints(cid)
    # Shredding at the acquirer leaves the seller's copy alone, and the reverse.
    acquirer.admin().shred(cid, reason="test")
    assert seller.vault.admin().list_records(cid, purpose=PURPOSE)


def test_import_logs_the_package_and_each_record_write(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    result = acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    (entry,) = entries(acquirer, "handover.import")
    assert entry["detail"]["package"] == result.package
    assert entry["detail"]["seller_key_trusted"] is True
    puts = [e for e in entries(acquirer, "record.put") if e["detail"].get("package")]
    assert len(puts) == 3


def test_import_twice_is_refused_as_a_replay_and_changes_nothing(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    before = snapshot(acquirer)
    with pytest.raises(VerificationError) as caught:
        acquirer.admin().handover_import(
            str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
        )
    assert caught.value.reason == "replayed"
    assert snapshot(acquirer) == before


def test_replay_is_refused_even_after_the_imported_customers_were_shredded(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    for cid in seller.consenting:
        acquirer.admin().shred(cid, reason="test")
    before = snapshot(acquirer)
    with pytest.raises(VerificationError):
        acquirer.admin().handover_import(
            str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
        )
    assert snapshot(acquirer) == before


def test_a_package_for_another_recipient_is_refused(
    seller: Seller,
    acquirer: Vault,
    acquirer_key: AcquirerKey,
    other_key: AcquirerKey,
    tmp_path: Path,
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    before = snapshot(acquirer)
    with pytest.raises(VerificationError) as caught:
        acquirer.admin().handover_import(
            str(package), other_key.key, seller_public_key=seller.vault.public_key
        )
    assert caught.value.reason == "wrong recipient"
    assert snapshot(acquirer) == before


def test_customer_ids_the_vault_already_holds_are_a_conflict(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    before = snapshot(seller.vault)
    with pytest.raises(HandoverConflictError):
        seller.vault.admin().handover_import(
            str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
        )
    assert snapshot(seller.vault) == before
    assert seller.vault.admin().list_records(seller.consenting[0], purpose=PURPOSE)


def test_undeclared_kinds_are_refused_unless_declared_from_the_manifest(
    seller: Seller, other_vault: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    bare = other_vault
    before = snapshot(bare)
    with pytest.raises(SchemaError, match="not declared"):
        bare.admin().handover_import(
            str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
        )
    assert snapshot(bare) == before
    result = bare.admin().handover_import(
        str(package),
        acquirer_key.key,
        seller_public_key=seller.vault.public_key,
        declare_kinds=True,
    )
    assert result.kinds_declared == ["booking", "profile"]
    assert set(bare.kinds()) == {"booking", "profile"}


# -- tampering ------------------------------------------------------------------------------


@pytest.fixture
def package(seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path) -> Path:
    return export(seller, acquirer_key, tmp_path / "p.svho")


def refused(acquirer: Vault, path: Path, key: HandoverKey, **kw: Any) -> VerificationError:
    """The import of ``path`` fails and writes nothing. Without a seller key the check
    runs with the override, so it is the tampering that must be caught, not the trust."""
    kw.setdefault("accept_unverified_seller", "seller_public_key" not in kw)
    before = snapshot(acquirer)
    with pytest.raises(VerificationError) as caught:
        acquirer.admin().handover_import(str(path), key, **kw)
    assert snapshot(acquirer) == before
    return caught.value


def flipped(path: Path, at: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def frame_offsets(path: Path) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload length) of each frame."""
    data = path.read_bytes()
    at = 8
    while at < len(data) - 16:
        kind, length = struct.unpack_from(">BI", data, at)
        yield kind, at + 5, length
        at += 5 + length


@pytest.mark.parametrize("frame_type", [1, 2, 3, 4, 5])
def test_a_flipped_byte_in_any_frame_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path, frame_type: int
) -> None:
    _kind, start, length = next(f for f in frame_offsets(package) if f[0] == frame_type)
    bad = flipped(package, start + length - 1, tmp_path / "bad.svho")
    refused(acquirer, bad, acquirer_key.key)


def test_a_flipped_byte_in_the_trailer_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    bad = flipped(package, package.stat().st_size - 12, tmp_path / "bad.svho")
    refused(acquirer, bad, acquirer_key.key)


def test_a_truncated_package_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.svho"
    cut.write_bytes(package.read_bytes()[:-100])
    refused(acquirer, cut, acquirer_key.key)


def test_a_record_swapped_to_another_customer_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    frames = read_frames(package)
    # Move the first customer's first record into the second customer's group.
    first = next(i for i, f in enumerate(frames) if f.type == 2)
    moved = frames.pop(first)
    second_entry = [i for i, f in enumerate(frames) if f.type == 3][1]
    frames.insert(second_entry, moved)
    swapped = tmp_path / "swapped.svho"
    write_frames(swapped, frames)
    error = refused(acquirer, swapped, acquirer_key.key)
    assert error.reason == "modified"


def test_records_exchanged_between_customers_are_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    frames = read_frames(package)
    recs = [i for i, f in enumerate(frames) if f.type == 2]
    a, b = recs[0], recs[-1]
    frames[a], frames[b] = frames[b], frames[a]
    swapped = tmp_path / "exchanged.svho"
    write_frames(swapped, frames)
    refused(acquirer, swapped, acquirer_key.key)


def resign(package: Path, out: Path, edit: dict[str, Any], signer: SigningKey) -> Path:
    frames = read_frames(package)
    idx = next(i for i, f in enumerate(frames) if f.type == 4)
    manifest = json.loads(frames[idx].payload)
    manifest.update(edit)
    body = canonical(manifest)
    frames[idx] = Frame(4, body)
    frames[idx + 1] = Frame(5, bytes(signer.sign(body).signature))
    write_frames(out, frames)
    return out


def test_a_manifest_re_signed_by_another_key_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    forged = resign(package, tmp_path / "forged.svho", {"excluded": 0}, SigningKey.generate())
    assert refused(acquirer, forged, acquirer_key.key).reason == "bad signature"


def test_a_forger_naming_its_own_key_is_caught_by_the_trusted_seller_key(
    seller: Seller, package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    forger = SigningKey.generate()
    edit = {"seller_public_key": "ed25519:" + bytes(forger.verify_key).hex()}
    forged = resign(package, tmp_path / "forged.svho", edit, forger)
    error = refused(acquirer, forged, acquirer_key.key, seller_public_key=seller.vault.public_key)
    assert error.reason == "wrong key"
    # Naming the trusted key while signed by another: the signature fails.
    named = resign(package, tmp_path / "named.svho", {"excluded": 0}, forger)
    error = refused(acquirer, named, acquirer_key.key, seller_public_key=seller.vault.public_key)
    assert error.reason == "bad signature"


# -- complete (seller) ------------------------------------------------------------------------


def test_complete_shreds_each_transferred_customer_with_a_receipt_and_a_signed_summary(
    seller: Seller, package: Path, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    done = s.handover_complete(str(package), receipts_dir=str(tmp_path / "receipts"))
    assert sorted(r.customer for r in done.receipts) == sorted(seller.consenting)
    for cid in seller.consenting:
        with pytest.raises(ShreddedError):
            s.list_records(cid, purpose=PURPOSE)
        document = json.loads((tmp_path / "receipts" / f"{cid}.json").read_text())
        assert verify_receipt(document, public_key=seller.vault.public_key).ok
        assert document["entry"]["detail"]["reason"] == "business-transfer"
    assert s.list_records(seller.refusing, purpose=PURPOSE)  # not transferred: kept
    summary = done.summary["summary"]
    assert summary["counts"] == {
        "customers": 2,
        "shredded": 2,
        "already_shredded": 0,
        "failed": 0,
    }
    hashes = {c["customer"]: c["receipt_sha256"] for c in summary["customers"]}
    for cid in seller.consenting:
        data = (tmp_path / "receipts" / f"{cid}.json").read_bytes()
        assert hashes[cid] == hashlib.sha256(data).hexdigest()
    assert verify_completion(done.summary, seller.vault.public_key)
    assert not verify_completion(done.summary, bytes(SigningKey.generate().verify_key))


def test_complete_resumes_skipping_customers_already_shredded(
    seller: Seller, package: Path, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    s.shred(seller.consenting[0], reason="business-transfer").write(
        receipts / f"{seller.consenting[0]}.json"
    )
    kept = (receipts / f"{seller.consenting[0]}.json").read_bytes()
    done = s.handover_complete(str(package), receipts_dir=str(receipts))
    assert done.already_shredded == [seller.consenting[0]]
    assert [r.customer for r in done.receipts] == [seller.consenting[1]]
    assert (receipts / f"{seller.consenting[0]}.json").read_bytes() == kept
    again = s.handover_complete(str(package), receipts_dir=str(receipts))
    assert again.receipts == [] and len(again.already_shredded) == 2


def test_complete_refuses_a_package_another_vault_exported(
    seller: Seller, package: Path, acquirer: Vault
) -> None:
    before = snapshot(acquirer)
    with pytest.raises(VerificationError) as caught:
        acquirer.admin().handover_complete(str(package))
    assert caught.value.reason == "foreign vault"
    assert snapshot(acquirer) == before


def test_complete_refuses_an_altered_package_and_shreds_nothing(
    seller: Seller, package: Path, tmp_path: Path
) -> None:
    _kind, start, _length = next(f for f in frame_offsets(package) if f[0] == 3)
    bad = flipped(package, start + 5, tmp_path / "bad.svho")
    with pytest.raises(VerificationError):
        seller.vault.admin().handover_complete(str(bad))
    assert seller.vault.admin().list_records(seller.consenting[0], purpose=PURPOSE)


def test_complete_lists_a_held_customer_as_failed_and_shreds_the_others(
    seller: Seller, package: Path, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    held, other = seller.consenting
    s.hold(held)
    done = s.handover_complete(str(package), receipts_dir=str(tmp_path / "receipts"))
    assert list(done.failed) == [held]
    assert [r.customer for r in done.receipts] == [other]
    assert s.list_records(held, purpose=PURPOSE)  # held: not shredded
    assert done.summary["summary"]["counts"]["failed"] == 1


def test_a_role_that_sees_only_some_fields_may_not_export(
    seller: Seller, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    s.add_role(
        Role.build(
            "partial", actions=["export"], kinds=["profile", "booking"], fields=["profile.name"]
        )
    )
    token = s.add_principal("partial-officer", role="partial")
    with pytest.raises(AccessDeniedError):
        seller.vault.login(token).handover_export(
            read_handover_public_key(acquirer_key.pub), str(tmp_path / "p.svho")
        )
    assert not (tmp_path / "p.svho").exists()
    assert entries(seller.vault, "customer.handover") == []


def forge(package: Path, out: Path, edit_entry: Any) -> tuple[Path, SigningKey]:
    """Edit the first customer entry, fix the index hash and re-sign with a new key that
    the manifest then names: well-formed, but self-asserted by someone else."""
    frames = read_frames(package)
    first = next(i for i, f in enumerate(frames) if f.type == 3)
    entry = json.loads(frames[first].payload)
    edit_entry(entry)
    frames[first] = Frame(3, canonical(entry))
    index = hashlib.sha256()
    for f in frames:
        if f.type == 3:
            index.update(struct.pack(">I", len(f.payload)) + f.payload)
    forger = SigningKey.generate()
    edit = {
        "customer_index_sha256": index.hexdigest(),
        "seller_public_key": "ed25519:" + bytes(forger.verify_key).hex(),
    }
    return _resign_frames(frames, out, edit, forger), forger


def _resign_frames(
    frames: list[Frame], out: Path, edit: dict[str, Any], signer: SigningKey
) -> Path:
    idx = next(i for i, f in enumerate(frames) if f.type == 4)
    manifest = json.loads(frames[idx].payload)
    manifest.update(edit)
    body = canonical(manifest)
    frames[idx] = Frame(4, body)
    frames[idx + 1] = Frame(5, bytes(signer.sign(body).signature))
    write_frames(out, frames)
    return out


def test_a_forged_package_is_refused_without_the_seller_key_unless_overridden(
    seller: Seller, package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    def extend(entry: dict[str, Any]) -> None:
        entry["retain_until"] = "2099-01-01T00:00:00Z"

    forged, _forger = forge(package, tmp_path / "forged.svho", extend)
    error = refused(acquirer, forged, acquirer_key.key, seller_public_key=seller.vault.public_key)
    assert error.reason == "wrong key"
    # Without the trusted key the import is refused (nothing written), and only an
    # explicit override accepts the forger's own key: reported and logged.
    error = refused(acquirer, forged, acquirer_key.key, accept_unverified_seller=False)
    assert error.reason == "no trusted key" and isinstance(error, NoTrustedKeyError)
    result = acquirer.admin().handover_import(
        str(forged), acquirer_key.key, accept_unverified_seller=True
    )
    assert result.seller_key_trusted is False
    (entry,) = entries(acquirer, "handover.import")
    assert entry["detail"]["seller_key_trusted"] is False
    assert entry["detail"]["seller_key_override"] is True
    assert result.seller_public_key != "ed25519:" + seller.vault.public_key.hex()


def test_a_signed_package_with_a_malformed_consent_map_is_refused(
    package: Path, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    def spoil(entry: dict[str, Any]) -> None:
        entry["consent"] = {"transfer": "yes please"}

    forged, _forger = forge(package, tmp_path / "forged.svho", spoil)
    assert refused(acquirer, forged, acquirer_key.key).reason == "malformed"


def test_a_data_store_from_before_the_imports_table_gets_it_at_its_first_import(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    with acquirer._ctx.data.engine.begin() as conn:
        conn.execute(text("DROP TABLE sv_handover_imports"))
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    with pytest.raises(VerificationError):
        acquirer.admin().handover_import(
            str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
        )


def test_an_import_that_fails_inside_its_transaction_leaves_no_keys_behind(
    seller: Seller, acquirer: Vault, acquirer_key: AcquirerKey, tmp_path: Path
) -> None:
    package = export(seller, acquirer_key, tmp_path / "p.svho")
    before = snapshot(acquirer)

    def interrupt(_count: int) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C after the first customer was written

    with pytest.raises(KeyboardInterrupt):
        acquirer.admin().handover_import(
            str(package),
            acquirer_key.key,
            seller_public_key=seller.vault.public_key,
            progress=interrupt,
        )
    assert snapshot(acquirer) == before
    assert acquirer._ctx.keys.store.subject_tags(seller.consenting) == {}
    result = acquirer.admin().handover_import(
        str(package), acquirer_key.key, seller_public_key=seller.vault.public_key
    )
    assert result.records == 3


def test_export_reads_records_re_keyed_by_another_process_since_it_cached_the_keys(
    seller: Seller, acquirer_key: AcquirerKey, keyfile: Path, backend: str | None, tmp_path: Path
) -> None:
    s = seller.vault.admin()
    s.list_records(seller.consenting[0], purpose=PURPOSE)  # caches DEK version 1
    other = Vault.open(seller.vault.path, keyfile=keyfile, data_url=backend)
    try:
        assert other.admin().rotate_dek(seller.consenting[0]) == 2
    finally:
        other.close()
    result = export(seller, acquirer_key, tmp_path / "p.svho")
    assert read_manifest(result)["records"] == 3


def test_a_customer_shredded_during_the_export_fails_it_leaving_no_package_or_entries(
    seller: Seller, acquirer_key: AcquirerKey, keyfile: Path, backend: str | None, tmp_path: Path
) -> None:
    other = Vault.open(seller.vault.path, keyfile=keyfile, data_url=backend)

    def shred_elsewhere(_count: int) -> None:
        if other.admin().customer(seller.consenting[1]).state == "active":
            other.admin().shred(seller.consenting[1], reason="customer request")

    try:
        with pytest.raises(ShreddedError):
            export(seller, acquirer_key, tmp_path / "p.svho", progress=shred_elsewhere)
    finally:
        other.close()
    assert list(tmp_path.glob("*p.svho*")) == []
    assert entries(seller.vault, "customer.handover") == []
