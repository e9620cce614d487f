"""Decommission (issue 9): every customer shredded, every row and key destroyed, a
signed certificate of destruction, the signing seed destroyed last; afterwards the vault
refuses every data call while auditing keeps working. Both data stores."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import func, select

from shredvault.keys import Envelope, SecretBytes, dek_aad, kek_aad, signing_seed_aad
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey
from shredvault.vault import (
    AccessDeniedError,
    Auditor,
    Certificate,
    DecommissionHoldError,
    Vault,
    VaultDecommissionedError,
    decommission_state,
    decommissioned_certificate,
    verify_certificate,
)
from shredvault.vault.canonical import canonical
from shredvault.vault.certificate import signed_bytes
from shredvault.vault.ids import CUSTOMER, new_ids
from shredvault.vault.store import customers, log, records

from residue import scan_keystore

PURPOSE = "service"
REASON = "deregistered"

MakeVault = Callable[..., Vault]


@dataclass
class Built:
    vault: Vault
    customers: list[str]  # active ones
    shredded_before: str
    records: int  # record rows in the data store before the decommission


def build(make_vault: MakeVault, *, active: int = 5, **kwargs: Any) -> Built:
    v = make_vault(**kwargs)
    v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
    s = v.admin()
    cids = [s.add_customer(ref=f"crm-{i}") for i in range(active + 1)]
    s.put_many(
        [(c, "profile", {"name": f"N{i}", "phone": "0"}) for i, c in enumerate(cids)]
        + [(cids[0], "profile", {"name": "second"})],
        purpose=PURPOSE,
    )
    gone = cids.pop()
    s.shred(gone, reason="erasure request")  # its one record row goes with it
    return Built(v, cids, gone, active + 1)


def entries(v: Vault | Auditor, action: str | None = None) -> list[dict[str, Any]]:
    data = v._ctx.data
    rows = data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    out = [json.loads(bytes(r.body)) for r in rows]
    return [e for e in out if action is None or e["action"] == action]


def count(v: Vault, table: Any, *where: Any) -> int:
    stmt = select(func.count()).select_from(table).where(*where)
    return int(v._ctx.data.read(lambda c: c.execute(stmt).scalar_one()))


def keystore_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path / "keys.db")
    try:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("kek_epochs", "deks", "subject_tags", "signing", "receipt_salts")
        }
    finally:
        conn.close()


# -- the procedure -------------------------------------------------------------------------


def test_decommission_shreds_every_customer_and_deletes_every_record(
    make_vault: MakeVault,
) -> None:
    b = build(make_vault)
    progress: list[int] = []
    cert = b.vault.admin().decommission(reason=REASON, progress=progress.append)
    assert sum(progress) == len(b.customers)
    assert count(b.vault, customers, customers.c.state != "shredded") == 0
    assert count(b.vault, records) == 0
    assert cert.document["counts"] == {
        "customers_shredded": len(b.customers),
        "customers_shredded_before": 1,
        "records_deleted": b.records,
        "legal_holds_overridden": 0,
        "stray_deks_destroyed": 0,
    }
    assert keystore_rows(b.vault.path) == dict.fromkeys(
        ("kek_epochs", "deks", "subject_tags", "signing", "receipt_salts"), 0
    )
    assert decommission_state(b.vault.path) == "decommissioned"


def test_every_customer_gets_one_shred_entry_and_the_log_ends_in_the_final_entry(
    make_vault: MakeVault,
) -> None:
    b = build(make_vault)
    cert = b.vault.admin().decommission(reason=REASON)
    log_entries = entries(b.vault)
    shreds = [e for e in log_entries if e["action"] == "customer.shred"]
    assert len(shreds) == len(b.customers) + 1
    assert len({e["subject"] for e in shreds}) == len(shreds)
    (final,) = [e for e in log_entries if e["action"] == "vault.decommission"]
    assert final == log_entries[-1] and final["outcome"] == "ok"
    assert final["seq"] == cert.document["log"]["last_seq"]
    (intent,) = [e for e in log_entries if e["action"] == "vault.decommission-intent"]
    assert intent["seq"] == cert.document["log"]["first_seq"]
    cp = cert.document["checkpoint"]["checkpoint"]
    assert (cp["seq"], cp["head"]) == (final["seq"], b.vault.head.hash)


def test_the_certificate_verifies_under_the_vault_key_and_against_an_export(
    make_vault: MakeVault, backend: str | None, tmp_path: Path
) -> None:
    b = build(make_vault)
    public_key = b.vault.public_key
    cert = b.vault.admin().decommission(reason=REASON)
    b.vault.close()
    with Auditor.open(b.vault.path, data_url=backend) as auditor:
        report = auditor.verify()  # keystore anchor and public key, seed gone
        assert report.ok, report.message
        assert report.last_checkpoint == report.last_seq == cert.document["log"]["last_seq"]
        assert report.anchor_seq == report.last_seq  # the rollback anchor stays
        assert auditor.public_key == public_key
        with open(tmp_path / "log.jsonl", "wb") as out:
            auditor.export(out)
    checked = verify_certificate(
        cert.to_json(), public_key=public_key, log_export=tmp_path / "log.jsonl"
    )
    assert checked.ok and checked.log_checked, checked.message
    assert checked.notes == []


def test_keys_of_no_customer_are_destroyed_and_counted(make_vault: MakeVault) -> None:
    b = build(make_vault)
    # Keys left by a crash between the keystore and data transactions of add_customer.
    b.vault._ctx.keys.create_customers(new_ids(CUSTOMER, 2), "2026-01-01T00:00:00.000000Z")
    cert = b.vault.admin().decommission(reason=REASON)
    assert cert.document["counts"]["stray_deks_destroyed"] == 2
    assert cert.document["counts"]["customers_shredded"] == len(b.customers)
    assert keystore_rows(b.vault.path)["deks"] == 0


def test_the_certificate_lists_unexpired_backups_only(tmp_path: Path, keyfile: Path) -> None:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "vault", keyfile=keyfile, clock=lambda: now[0]) as v:
        s = v.admin()
        s.add_customer()
        kept = s.backup(str(tmp_path / "kept.tar"))
        s.backup(str(tmp_path / "short.tar"), expires_days=7)
        now[0] += timedelta(days=8)
        cert = s.decommission(reason=REASON)
    listed = cert.document["backups_outstanding"]
    assert [b["id"] for b in listed] == [kept["backup"]]
    assert listed[0]["expires"] is None
    assert cert.document["final_entry"]["detail"]["backups_outstanding"] == [kept["backup"]]
    assert kept["backup"] in cert.markdown()


def test_the_markdown_rendering_names_the_vault_counts_and_scope(make_vault: MakeVault) -> None:
    b = build(make_vault)
    cert = b.vault.admin().decommission(reason=REASON)
    text = cert.markdown()
    assert text.startswith("# Certificate of destruction")
    assert b.vault.vault_id in text and cert.document["log"]["head"] in text
    assert f"| customers shredded by the decommission | {len(b.customers)} |" in text
    assert cert.document["scope"] in text


def test_write_puts_the_markdown_beside_the_json_and_keeps_an_identical_rerun(
    make_vault: MakeVault, tmp_path: Path
) -> None:
    cert = build(make_vault).vault.admin().decommission(reason=REASON)
    md = cert.write(tmp_path / "cert.json")
    assert md == tmp_path / "cert.md"
    assert json.loads((tmp_path / "cert.json").read_text()) == cert.document
    cert.write(tmp_path / "cert.json")  # same content: accepted
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(FileExistsError):
        cert.write(tmp_path / "other.json")
    assert not (tmp_path / "other.md").exists()


# -- after: refusals, auditing, no signing -------------------------------------------------


def test_a_decommissioned_vault_refuses_every_data_call(make_vault: MakeVault) -> None:
    b = build(make_vault)
    s = b.vault.admin()
    s.decommission(reason=REASON)
    cid = b.customers[0]
    for call in (
        s.list_customers,
        lambda: s.customer(cid),
        lambda: s.add_customer(),
        lambda: s.list_records(cid, purpose=PURPOSE),
        lambda: s.hold(cid),
        s.compact,
        lambda: b.vault.declare_kind("x", fields=["a"], purposes=[PURPOSE]),
        b.vault.admin,
        lambda: b.vault.login("svp_whatever"),
    ):
        with pytest.raises(VaultDecommissionedError):
            call()
    assert entries(b.vault)[-1]["action"] == "vault.decommission"  # nothing logged after


def test_opening_a_decommissioned_vault_is_refused_before_unlocking(
    make_vault: MakeVault, backend: str | None, keyfile: Path, tmp_path: Path
) -> None:
    b = build(make_vault)
    b.vault.admin().decommission(reason=REASON)
    b.vault.close()
    with pytest.raises(VaultDecommissionedError, match="decommissioned"):
        Vault.open(b.vault.path, keyfile=keyfile, data_url=backend)
    other = tmp_path / "other.key"
    other.write_bytes(b"\x01" * 32)
    other.chmod(0o600)
    with pytest.raises(VaultDecommissionedError):  # no key to try: nothing left to unlock
        Vault.open(b.vault.path, keyfile=other, data_url=backend)


def test_closing_after_the_decommission_signs_nothing_more(
    make_vault: MakeVault, backend: str | None
) -> None:
    b = build(make_vault)
    cert = b.vault.admin().decommission(reason=REASON)
    b.vault.close()
    with Auditor.open(b.vault.path, data_url=backend) as auditor:
        latest = auditor.latest_checkpoint()
        assert auditor.head.seq == cert.document["log"]["last_seq"]
    assert latest is not None
    assert latest.to_json() == cert.document["checkpoint"]


def test_the_certificate_is_reissued_without_a_passphrase(make_vault: MakeVault) -> None:
    b = build(make_vault)
    cert = b.vault.admin().decommission(reason=REASON)
    b.vault.close()
    assert decommissioned_certificate(b.vault.path).document == cert.document


# -- refusals that change nothing ----------------------------------------------------------


def test_a_customer_under_legal_hold_refuses_it_and_nothing_is_destroyed(
    make_vault: MakeVault,
) -> None:
    b = build(make_vault)
    s = b.vault.admin()
    s.hold(b.customers[1])
    keys_before = keystore_rows(b.vault.path)
    with pytest.raises(DecommissionHoldError, match="1 customer") as caught:
        s.decommission(reason=REASON)
    assert caught.value.held == 1
    assert keystore_rows(b.vault.path) == keys_before
    assert decommission_state(b.vault.path) == "active"
    assert count(b.vault, records) == b.records
    assert (
        s.get_many(
            [(b.customers[1], r.id) for r in s.list_records(b.customers[1], purpose=PURPOSE)],
            purpose=PURPOSE,
        )[0].fields["name"]
        == "N1"
    )
    denied = entries(b.vault, "vault.decommission")
    assert [(e["outcome"], e["detail"]) for e in denied] == [
        ("denied", {"held": 1, "reason_code": "legal_hold"})
    ]
    assert entries(b.vault, "vault.decommission-intent") == []


def test_override_holds_destroys_held_customers_and_counts_them(make_vault: MakeVault) -> None:
    b = build(make_vault)
    s = b.vault.admin()
    s.hold(b.customers[1])
    s.hold(b.customers[2])
    cert = s.decommission(reason=REASON, override_holds=True)
    assert cert.document["counts"]["legal_holds_overridden"] == 2
    assert count(b.vault, customers, customers.c.state != "shredded") == 0
    assert verify_certificate(cert.to_json(), public_key=b.vault.public_key).ok


def test_a_principal_without_admin_is_refused_and_the_denial_logged(
    make_vault: MakeVault,
) -> None:
    b = build(make_vault)
    token = b.vault.admin().add_principal("ines", role="operator")
    with pytest.raises(AccessDeniedError):
        b.vault.login(token).decommission(reason=REASON)
    (denied,) = entries(b.vault, "vault.decommission")
    assert (denied["actor"], denied["outcome"]) == ("ines", "denied")
    assert decommission_state(b.vault.path) == "active"
    assert count(b.vault, records) == b.records


def test_an_empty_reason_is_refused_before_anything_happens(make_vault: MakeVault) -> None:
    b = build(make_vault)
    with pytest.raises(ValueError):
        b.vault.admin().decommission(reason="  ")
    assert decommission_state(b.vault.path) == "active"


# -- no key bytes left ---------------------------------------------------------------------


def key_material(v: Vault, keyfile: Path) -> dict[str, bytes]:
    """Every epoch, DEK and signing seed, wrapped (from keys.db) and raw (unwrapped with
    the root key's wrap subkey; the root key of a keyfile vault is the keyfile's bytes)."""
    root = Envelope(derive_subkey(SecretBytes(keyfile.read_bytes()), ROOT_WRAP, v.vault_id), 0)
    conn = sqlite3.connect(v.path / "keys.db")
    out: dict[str, bytes] = {}
    try:
        for epoch, wrapped in conn.execute("SELECT epoch, wrapped FROM kek_epochs"):
            out[f"epoch {epoch} wrapped"] = bytes(wrapped)
            out[f"epoch {epoch} raw"] = root.open(bytes(wrapped), kek_aad(v.vault_id, epoch))
        for gen, wrapped in conn.execute("SELECT generation, wrapped FROM signing"):
            out[f"seed {gen} wrapped"] = bytes(wrapped)
            out[f"seed {gen} raw"] = root.open(bytes(wrapped), signing_seed_aad(v.vault_id, gen))
        for cid, version, epoch, wrapped in conn.execute(
            "SELECT customer_id, version, epoch, wrapped FROM deks"
        ):
            out[f"{cid} DEK wrapped"] = bytes(wrapped)
            kek = Envelope(SecretBytes(out[f"epoch {epoch} raw"]), epoch)
            out[f"{cid} DEK raw"] = kek.open(
                bytes(wrapped), dek_aad(v.vault_id, cid, version, epoch)
            )
        for cid, tag in conn.execute("SELECT customer_id, tag FROM subject_tags"):
            out[f"{cid} tag"] = bytes(tag)
    finally:
        conn.close()
    assert all(len(b) >= 16 for b in out.values())
    return out


def test_no_epoch_dek_or_seed_bytes_remain_in_the_keystore_files(
    make_vault: MakeVault, keyfile: Path, tmp_path: Path
) -> None:
    b = build(make_vault, active=40)
    s = b.vault.admin()
    s.rotate_kek()  # two epochs: both must go
    needles = key_material(b.vault, keyfile)
    assert sum(n.startswith("epoch") for n in needles) == 4
    shutil.copytree(b.vault.path, tmp_path / "copy", ignore=shutil.ignore_patterns("*-shm"))
    s.decommission(reason=REASON)
    assert scan_keystore(b.vault.path, needles) == {}
    b.vault.close()
    assert scan_keystore(b.vault.path, needles) == {}
    # Negative control: the same scan finds the wrapped keys in a copy made before.
    found = {n for names in scan_keystore(tmp_path / "copy", needles).values() for n in names}
    assert {n for n in needles if n.endswith(("wrapped", "tag"))} <= found


# -- forged and altered certificates --------------------------------------------------------


def resign(doc: dict[str, Any], key: SigningKey, *, claim_key: bool) -> dict[str, Any]:
    out = dict(doc)
    if claim_key:
        out["public_key"] = "ed25519:" + bytes(key.verify_key).hex()
    out["signature"] = key.sign(signed_bytes(out)).signature.hex()
    return out


def altered(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


@pytest.fixture
def issued(tmp_path: Path, keyfile: Path) -> tuple[Certificate, bytes]:
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        s = v.admin()
        for _ in range(3):
            s.add_customer()
        return s.decommission(reason=REASON), v.public_key


def test_an_altered_count_fails_the_signature(issued: tuple[Certificate, bytes]) -> None:
    cert, key = issued
    doc = altered(cert.to_json(), ("counts", "customers_shredded"), 2)
    assert verify_certificate(doc, public_key=key).reason == "bad signature"


def test_an_altered_count_re_signed_with_another_key_fails(
    issued: tuple[Certificate, bytes],
) -> None:
    cert, key = issued
    forger = SigningKey.generate()
    doc = altered(cert.to_json(), ("counts", "customers_shredded"), 2)
    assert verify_certificate(resign(doc, forger, claim_key=False)).reason == "bad signature"
    claimed = resign(doc, forger, claim_key=True)
    # Its own key: the vault's checkpoint inside no longer verifies under it.
    assert verify_certificate(claimed).reason == "bad signature"
    assert verify_certificate(claimed, public_key=key).reason == "wrong key"


def test_counts_that_disagree_with_the_final_entry_fail_even_if_signed(
    issued: tuple[Certificate, bytes],
) -> None:
    """Internal consistency: the vault's own signature cannot make counts the signed
    log head contradicts pass (checked with a key we control)."""
    cert, _key = issued
    forger = SigningKey.generate()
    doc = altered(cert.to_json(), ("counts", "records_deleted"), 99)
    report = verify_certificate(resign(doc, forger, claim_key=True), trust_embedded_key=True)
    assert not report.ok and report.reason != "no trusted key"


def test_an_altered_scope_or_head_fails(issued: tuple[Certificate, bytes]) -> None:
    cert, key = issued
    for path, value in (
        (("scope",), "Everything is gone."),
        (("log", "head"), "0" * 64),
        (("reason",), "other"),
        (("final_entry", "ts"), "2020-01-01T00:00:00.000000Z"),
    ):
        assert not verify_certificate(altered(cert.to_json(), path, value), public_key=key).ok


def test_another_vaults_key_fails_and_a_malformed_document_says_so(
    issued: tuple[Certificate, bytes],
) -> None:
    cert, _key = issued
    assert verify_certificate(cert.to_json(), public_key=b"\x02" * 32).reason == "wrong key"
    assert verify_certificate({"type": "x"}).reason == "malformed"
    doc = cert.to_json()
    del doc["log"]
    assert verify_certificate(doc).reason == "malformed"
    not_json = altered(cert.to_json(), ("final_entry", "detail", "records_deleted"), float("nan"))
    assert verify_certificate(not_json).reason == "malformed"


def test_a_log_export_that_does_not_end_in_the_certified_head_fails(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        s = v.admin()
        s.add_customer()
        with Auditor.open(v.path) as auditor, open(tmp_path / "early.jsonl", "wb") as out:
            auditor.export(out)  # made before the decommission: ends too early
        cert = s.decommission(reason=REASON)
        key = v.public_key
    report = verify_certificate(cert.to_json(), public_key=key, log_export=tmp_path / "early.jsonl")
    assert (report.ok, report.reason) == (False, "log mismatch")
    with Auditor.open(tmp_path / "vault") as auditor, open(tmp_path / "full.jsonl", "wb") as out:
        auditor.export(out)
    lines = (tmp_path / "full.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:-1]))  # final entry removed
    report = verify_certificate(cert.to_json(), public_key=key, log_export=tmp_path / "cut.jsonl")
    assert not report.ok
    assert verify_certificate(cert.to_json(), public_key=key, log_export=tmp_path / "full.jsonl").ok
    # The same entries relabelled as another vault's, its checkpoints dropped (so nothing
    # in the chain names a vault): the export's vault must be the certificate's.
    header = json.loads(lines[0])
    header["vault"] = "vlt_" + "b" * 26
    kept = [line for line in lines[1:] if not line.startswith(b'{"checkpoint":')]
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_bytes(canonical(header) + b"\n" + b"".join(kept))
    report = verify_certificate(cert.to_json(), public_key=key, log_export=relabelled)
    # Step 8.1 comes first: with its checkpoints dropped nothing in it is signed.
    assert (report.ok, report.reason) == (False, "unsigned"), report.message
    # With them kept, they name the real vault: the header's vault is still checked.
    header_only = tmp_path / "relabelled-signed.jsonl"
    header_only.write_bytes(canonical(header) + b"\n" + b"".join(lines[1:]))
    report = verify_certificate(cert.to_json(), public_key=key, log_export=header_only)
    assert not report.ok and report.reason in {"log mismatch", "foreign vault"}, report.message
