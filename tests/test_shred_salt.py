"""The shred entry's customer commitment is salted with a secret that only the receipt
keeps: holding data.db and keys.db after the shred is not enough to test a guessed
(or listed) customer id against the log."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shredvault.vault import LegalHoldError, Vault, verify_receipt
from shredvault.vault.receipt import customer_commitment


def _vault(tmp_path: Path, keyfile: Path) -> tuple[Vault, str]:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    s = v.admin()
    cid = s.add_customer(ref="crm-1")
    s.put(cid, "profile", {"name": "Wang Fang"}, purpose="service")
    return v, cid


def _shred_entries(path: Path) -> list[dict[str, object]]:
    con = sqlite3.connect(path / "data.db")
    try:
        rows = con.execute("SELECT body FROM sv_log WHERE action = 'customer.shred'").fetchall()
    finally:
        con.close()
    return [json.loads(body) for (body,) in rows]


def _vault_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())


def test_shredded_ids_cannot_be_matched_to_the_shred_entry_without_the_receipt(
    tmp_path: Path, keyfile: Path
) -> None:
    v, cid = _vault(tmp_path, keyfile)
    receipt = v.admin().shred(cid, reason="erasure request")
    v.close()
    (entry,) = _shred_entries(tmp_path / "vault")
    tag = bytes.fromhex(str(entry["subject"]))
    commitment = entry["detail"]["customer_commitment"]  # type: ignore[index]
    # An attacker with the stores knows the id (sv_customers keeps it) and the tag (in
    # the entry) but not the salt: no salt they could guess from the stores matches.
    for guess in (b"", tag, cid.encode(), b"\0" * 32):
        assert customer_commitment(v.vault_id, cid, tag, guess) != commitment
    salt = bytes.fromhex(receipt.to_json()["salt"])
    assert customer_commitment(v.vault_id, cid, tag, salt) == commitment
    stored = _vault_bytes(tmp_path / "vault")
    assert salt not in stored and salt.hex().encode() not in stored


def test_a_receipt_with_another_salt_names_no_customer(tmp_path: Path, keyfile: Path) -> None:
    v, cid = _vault(tmp_path, keyfile)
    doc = v.admin().shred(cid, reason="erasure request").to_json()
    public_key = v.public_key
    v.close()
    assert verify_receipt(doc, public_key=public_key).ok
    doc["salt"] = os.urandom(32).hex()
    report = verify_receipt(doc, public_key=public_key)
    assert (report.ok, report.reason) == (False, "wrong customer")


def test_a_crash_after_the_shred_commits_still_yields_the_receipt_at_reopen(
    tmp_path: Path, keyfile: Path
) -> None:
    v, cid = _vault(tmp_path, keyfile)
    other = v.admin().add_customer()
    v.close()
    code = (
        "from shredvault import Vault\n"
        f"v = Vault.open({str(tmp_path / 'vault')!r}, keyfile={str(keyfile)!r})\n"
        f"v.admin().shred({cid!r}, reason='erasure request')\n"
    )
    env = {**os.environ, "SHREDVAULT_CRASH_AT": "shred:after-finish"}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == 97
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as reopened:
        (receipt,) = reopened.recovered_receipts
        assert receipt.customer == cid
        assert verify_receipt(receipt.to_json(), public_key=reopened.public_key).ok
        assert reopened._ctx.keys.store.receipt_salt_customers() == []
        assert reopened.admin().customer(other).state == "active"
        assert len(_shred_entries(tmp_path / "vault")) == 1
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as again:
        assert again.recovered_receipts == []


def test_a_refused_shred_leaves_no_salt_behind(tmp_path: Path, keyfile: Path) -> None:
    v, cid = _vault(tmp_path, keyfile)
    s = v.admin()
    s.hold(cid)
    with pytest.raises(LegalHoldError):
        s.shred(cid, reason="erasure request")
    assert v._ctx.keys.store.receipt_salt_customers() == []
    v.close()


def test_a_receipts_repr_shows_neither_its_salt_nor_its_subject_tag(
    tmp_path: Path, keyfile: Path
) -> None:
    v, cid = _vault(tmp_path, keyfile)
    receipt = v.admin().shred(cid, reason="erasure request")
    v.close()
    shown = repr(receipt) + str(receipt)
    assert cid in shown
    assert receipt.to_json()["salt"] not in shown
    assert receipt.to_json()["subject_tag"] not in shown
