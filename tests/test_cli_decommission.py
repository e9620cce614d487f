"""``decommission`` and ``certificate verify`` as real processes (issue 9): a vault with
customers is decommissioned, its certificate verifies offline (0) and fails when
tampered with (5), the keystore holds no key bytes, data commands exit 4, and the
inspector's commands (audit verify, audit export, receipt verify) still work."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from shredvault.keys import (
    Envelope,
    SecretBytes,
    dek_aad,
    generate_keyfile,
    kek_aad,
    signing_seed_aad,
)
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey
from shredvault.vault.certificate import signed_bytes

Proc = subprocess.CompletedProcess[str]
Shell = Callable[..., Proc]
REASON = "deregistered"


def command() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


def make_shell(cwd: Path, **extra: str) -> Shell:
    def shell(*args: str, crash_at: str | None = None, **more: str) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
        env.update(extra, **more)
        if crash_at is not None:
            env["SHREDVAULT_CRASH_AT"] = crash_at
        return subprocess.run(
            [*command(), *args],
            input="",
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
            check=False,
        )

    return shell


@dataclass
class Built:
    sh: Shell
    base: Path
    root: Path
    keyfile: Path
    customers: list[str]
    records: list[str]


def build(base: Path, customers: int = 3) -> Built:
    """A keyfile vault made through the CLI: a kind, customers with a record each."""
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    root = base / "vault"
    sh = make_shell(base, SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    assert sh("init", str(root)).returncode == 0
    declared = sh("kind", "declare", "profile", "--fields", "name", "--purposes", "service")
    assert declared.returncode == 0, declared.stderr
    cids, rids = [], []
    for i in range(customers):
        cid = sh("customer", "add", "--ref", f"crm-{i}").stdout.strip()
        put = sh("record", "put", cid, "profile", "--purpose", "service", "--field", f"name=N{i}")
        assert put.returncode == 0, put.stderr
        cids.append(cid)
        rids.append(put.stdout.strip())
    return Built(sh, base, root, keyfile, cids, rids)


def key_material(root: Path, keyfile: Path) -> dict[str, bytes]:
    """Every epoch, DEK and signing seed in keys.db, wrapped and unwrapped by hand."""
    conn = sqlite3.connect(root / "keys.db")
    out: dict[str, bytes] = {}
    try:
        (vault_id,) = conn.execute("SELECT v FROM meta WHERE k = 'vault_id'").fetchone()
        wrap_key = derive_subkey(SecretBytes(keyfile.read_bytes()), ROOT_WRAP, vault_id)
        rootkey = Envelope(wrap_key, 0)
        keks = {}
        for epoch, wrapped in conn.execute("SELECT epoch, wrapped FROM kek_epochs"):
            keks[epoch] = rootkey.open(bytes(wrapped), kek_aad(vault_id, epoch))
            out[f"epoch {epoch}"], out[f"epoch {epoch} raw"] = bytes(wrapped), keks[epoch]
        for gen, wrapped in conn.execute("SELECT generation, wrapped FROM signing"):
            out[f"seed {gen}"] = bytes(wrapped)
            out[f"seed {gen} raw"] = rootkey.open(bytes(wrapped), signing_seed_aad(vault_id, gen))
        for cid, version, epoch, wrapped in conn.execute(
            "SELECT customer_id, version, epoch, wrapped FROM deks"
        ):
            kek = Envelope(SecretBytes(keks[epoch]), epoch)
            out[f"{cid} DEK"] = bytes(wrapped)
            out[f"{cid} DEK raw"] = kek.open(bytes(wrapped), dek_aad(vault_id, cid, version, epoch))
    finally:
        conn.close()
    return out


def residue(root: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for name in ("keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal"):
        if (root / name).exists():
            data = (root / name).read_bytes()
            hits += [f"{name}: {n}" for n, b in needles.items() if b in data]
    return hits


@dataclass
class Done:
    built: Built
    result: Proc
    cert: Path
    pubkey: Path
    log: Path
    receipt: Path
    needles: dict[str, bytes]

    @property
    def sh(self) -> Shell:
        return self.built.sh

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cert.read_text())
        return doc


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Done:
    """Decommissioned through the CLI, after one customer was shredded with a receipt.
    Tests only read it (or work on copies of its files)."""
    built = build(tmp_path_factory.mktemp("decommission"))
    sh, base = built.sh, built.base
    shred = sh("shred", built.customers[0], "--reason", "erasure request", "--yes",
               "--receipt", "early-receipt.json")  # fmt: skip
    assert shred.returncode == 0, shred.stderr
    pubkey = sh("audit", "pubkey")
    (base / "vault.pub").write_text(pubkey.stdout)
    needles = key_material(built.root, built.keyfile)
    assert len(needles) == 2 + 2 + 2 * (len(built.customers) - 1)
    result = sh("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json")
    exported = sh("audit", "export")
    assert exported.returncode == 0, exported.stderr
    (base / "log.jsonl").write_text(exported.stdout)
    return Done(
        built,
        result,
        base / "cert.json",
        base / "vault.pub",
        base / "log.jsonl",
        base / "early-receipt.json",
        needles,
    )


def test_decommission_exits_0_and_writes_the_certificate_and_its_markdown(done: Done) -> None:
    assert done.result.returncode == 0, done.result.stderr
    assert f"decommissioned {done.document()['vault']}" in done.result.stdout
    assert done.document()["counts"]["customers_shredded"] == 2
    assert done.document()["counts"]["customers_shredded_before"] == 1
    # The customer shredded before took its record row with it: 2 left to delete.
    assert done.document()["counts"]["records_deleted"] == 2
    markdown = (done.built.base / "cert.md").read_text()
    assert markdown.startswith("# Certificate of destruction")
    assert done.document()["log"]["head"] in markdown


@pytest.mark.parametrize(
    "extra",
    [["--pubkey", "vault.pub"], ["--pubkey", "vault.pub", "--log", "log.jsonl"]],
    ids=["pubkey", "pubkey-and-log"],
)
def test_certificate_verify_passes(done: Done, extra: list[str]) -> None:
    checked = done.sh("certificate", "verify", "cert.json", *extra)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("valid: certificate of destruction cert.json")


def test_certificate_verify_without_a_trusted_key_exits_7_or_says_self_asserted(
    done: Done,
) -> None:
    unpinned = done.sh("certificate", "verify", "cert.json")
    assert unpinned.returncode == 7, unpinned.stdout + unpinned.stderr
    assert unpinned.stdout.startswith("NOT VERIFIED") and "--pubkey" in unpinned.stderr
    asserted = done.sh("certificate", "verify", "cert.json", "--trust-embedded-key")
    assert asserted.returncode == 0, asserted.stdout + asserted.stderr
    assert asserted.stdout.startswith("self-asserted: certificate of destruction")
    assert "valid" not in asserted.stdout


def test_certificate_verify_json_says_the_log_was_checked(done: Done) -> None:
    checked = done.sh(
        "certificate", "verify", "cert.json", "--pubkey", "vault.pub", "--log", "log.jsonl",
        "--json",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and report["log_checked"] and report["public_key_source"] == "pubkey"
    assert report["head"] == done.document()["log"]["head"]


def flip_a_byte(doc: dict[str, Any]) -> dict[str, Any]:
    head = doc["log"]["head"]
    doc["log"]["head"] = ("1" if head[0] != "1" else "2") + head[1:]
    return doc


def change_a_count(doc: dict[str, Any]) -> dict[str, Any]:
    doc["counts"]["customers_shredded"] += 1
    return doc


def resign_keeping_key(doc: dict[str, Any]) -> dict[str, Any]:
    doc["counts"]["records_deleted"] = 0
    doc["signature"] = SigningKey.generate().sign(signed_bytes(doc)).signature.hex()
    return doc


def resign_claiming_key(doc: dict[str, Any]) -> dict[str, Any]:
    forger = SigningKey.generate()
    doc["counts"]["records_deleted"] = 0
    doc["public_key"] = "ed25519:" + bytes(forger.verify_key).hex()
    doc["signature"] = forger.sign(signed_bytes(doc)).signature.hex()
    return doc


@pytest.mark.parametrize(
    "tamper", [flip_a_byte, change_a_count, resign_keeping_key, resign_claiming_key]
)
@pytest.mark.parametrize("trust", [[], ["--pubkey", "vault.pub"]], ids=["own-key", "pubkey"])
def test_a_tampered_certificate_exits_5(
    done: Done, tmp_path: Path, tamper: Callable[[dict[str, Any]], dict[str, Any]], trust: list[str]
) -> None:
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(tamper(done.document())))
    args = [a if a != "vault.pub" else str(done.pubkey) for a in trust]
    checked = done.sh("certificate", "verify", str(forged), *args)
    assert checked.returncode == 5, checked.stdout + checked.stderr
    assert checked.stdout.startswith("INVALID")


def test_a_byte_flipped_anywhere_in_the_file_exits_5(done: Done, tmp_path: Path) -> None:
    raw = bytearray(done.cert.read_bytes())
    at = raw.index(b'"reason": "deregistered"') + len('"reason": "d')
    raw[at] ^= 0x01
    forged = tmp_path / "flipped.json"
    forged.write_bytes(bytes(raw))
    assert done.sh("certificate", "verify", str(forged)).returncode == 5


def test_another_vaults_public_key_exits_5(done: Done, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_text("ed25519:" + bytes(SigningKey.generate().verify_key).hex() + "\n")
    checked = done.sh("certificate", "verify", "cert.json", "--pubkey", str(other))
    assert checked.returncode == 5
    assert "wrong key" in checked.stdout


def test_a_log_cut_before_the_certified_head_exits_5(done: Done, tmp_path: Path) -> None:
    lines = done.log.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-1]))
    checked = done.sh("certificate", "verify", "cert.json", "--log", str(cut))
    assert checked.returncode == 5, checked.stdout


def test_the_keystore_holds_no_dek_epoch_or_seed_bytes(done: Done) -> None:
    assert residue(done.built.root, done.needles) == []
    conn = sqlite3.connect(done.built.root / "keys.db")
    try:
        for table in ("kek_epochs", "deks", "subject_tags", "signing"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize(
    "args",
    [
        ["customer", "list"],
        ["record", "get", "{customer}", "{record}", "--purpose", "service"],
        ["customer", "add"],
        ["record", "put", "{customer}", "profile", "--purpose", "service", "--field", "name=X"],
        ["keys", "status"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_data_commands_exit_4_with_a_clear_error(done: Done, args: list[str]) -> None:
    filled = [
        a.format(customer=done.built.customers[1], record=done.built.records[1]) for a in args
    ]
    refused = done.sh(*filled)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "is decommissioned" in refused.stderr
    assert "N1" not in refused.stdout + refused.stderr


def test_audit_verify_and_receipt_verify_still_work(done: Done) -> None:
    verified = done.sh("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"last signed checkpoint  {done.document()['log']['last_seq']}" in verified.stdout
    from_export = done.sh("audit", "verify", "--from-export", "log.jsonl", "--pubkey", "vault.pub")
    assert from_export.returncode == 0, from_export.stdout
    receipt = done.sh("receipt", "verify", str(done.receipt), "--pubkey", "vault.pub")
    assert receipt.returncode == 0, receipt.stdout + receipt.stderr
    pubkey = done.sh("audit", "pubkey")
    assert pubkey.returncode == 0 and pubkey.stdout == done.pubkey.read_text()


def test_decommission_again_re_emits_the_same_certificate(done: Done) -> None:
    again = done.sh("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json",
                    "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["certificate"] == done.document()
    assert "already decommissioned" in again.stderr


# -- refusals --------------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Built:
    return build(tmp_path, customers=2)


def dek_count(root: Path) -> int:
    conn = sqlite3.connect(root / "keys.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM deks").fetchone()[0])
    finally:
        conn.close()


def test_a_legal_hold_refuses_it_and_nothing_is_destroyed(fresh: Built) -> None:
    sh = fresh.sh
    assert sh("customer", "hold", fresh.customers[0]).returncode == 0
    refused = sh("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json")
    assert refused.returncode == 1
    assert "1 customer(s) are under legal hold" in refused.stderr
    assert "--override-holds" in refused.stderr
    assert not (fresh.base / "cert.json").exists()
    assert dek_count(fresh.root) == 2
    read = sh("record", "get", fresh.customers[0], fresh.records[0], "--purpose", "service")
    assert read.returncode == 0 and "N0" in read.stdout
    overridden = sh("decommission", "--reason", REASON, "--yes", "--override-holds", "--json")
    assert overridden.returncode == 0, overridden.stderr
    assert json.loads(overridden.stdout)["legal_holds_overridden"] == 1


def test_without_yes_and_without_a_terminal_nothing_is_destroyed(fresh: Built) -> None:
    refused = fresh.sh("decommission", "--reason", REASON)
    assert refused.returncode == 2
    assert dek_count(fresh.root) == 2
    assert fresh.sh("customer", "list").returncode == 0


def test_a_principal_who_is_not_admin_exits_3(fresh: Built) -> None:
    token = fresh.sh("principal", "add", "ines", "--role", "operator").stdout.strip()
    refused = fresh.sh("decommission", "--reason", REASON, "--yes", SHREDVAULT_TOKEN=token)
    assert refused.returncode == 3, refused.stderr
    assert token not in refused.stdout + refused.stderr
    assert dek_count(fresh.root) == 2


def test_without_certificate_the_certificate_is_stdout(fresh: Built) -> None:
    result = fresh.sh("decommission", "--reason", REASON, "--yes")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["type"] == "shredvault-certificate-of-destruction"
    assert "decommissioned" in result.stderr
    (fresh.base / "c.json").write_text(result.stdout)
    assert fresh.sh("certificate", "verify", "c.json", "--trust-embedded-key").returncode == 0


def test_an_existing_certificate_file_is_refused_before_anything_is_destroyed(
    fresh: Built,
) -> None:
    (fresh.base / "cert.json").write_text("keep me")
    refused = fresh.sh("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json")
    assert refused.returncode == 2
    assert (fresh.base / "cert.json").read_text() == "keep me"
    assert dek_count(fresh.root) == 2


@pytest.mark.parametrize("point", ["decommission:after-final", "decommission:after-seed"])
def test_an_interrupted_decommission_finishes_when_run_again(fresh: Built, point: str) -> None:
    args = ("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json")
    crashed = fresh.sh(*args, crash_at=point)
    assert crashed.returncode == 97, crashed.stderr
    assert fresh.sh("customer", "list").returncode == 4
    finished = fresh.sh(*args)
    assert finished.returncode == 0, finished.stderr
    checked = fresh.sh("certificate", "verify", "cert.json", "--trust-embedded-key")
    assert checked.returncode == 0
    assert fresh.sh("audit", "verify").returncode == 0


@pytest.mark.postgres
def test_a_postgresql_vault_is_decommissioned_and_audited_the_same_way(
    tmp_path: Path, pg_url: str
) -> None:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    sh = make_shell(
        tmp_path,
        SHREDVAULT_KEYFILE=str(keyfile),
        SHREDVAULT_VAULT=str(root),
        SHREDVAULT_DATA_URL=pg_url,
    )
    assert sh("init", str(root)).returncode == 0
    assert (
        sh("kind", "declare", "profile", "--fields", "name", "--purposes", "service").returncode
        == 0
    )
    cid = sh("customer", "add").stdout.strip()
    put = sh("record", "put", cid, "profile", "--purpose", "service", "--field", "name=P")
    assert put.returncode == 0, put.stderr
    rid = put.stdout.strip()
    assert sh("record", "get", cid, rid, "--purpose", "service").returncode == 0
    (tmp_path / "vault.pub").write_text(sh("audit", "pubkey").stdout)
    args = ("decommission", "--reason", REASON, "--yes", "--certificate", "cert.json")
    assert sh(*args, crash_at="decommission:batch-keys").returncode == 97
    assert sh("customer", "list").returncode == 4
    finished = sh(*args)
    assert finished.returncode == 0, finished.stderr
    (tmp_path / "log.jsonl").write_text(sh("audit", "export").stdout)
    checked = sh(
        "certificate", "verify", "cert.json", "--pubkey", "vault.pub", "--log", "log.jsonl"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sh("audit", "verify").returncode == 0
    refused = sh("record", "get", cid, rid, "--purpose", "service")
    assert refused.returncode == 4 and "is decommissioned" in refused.stderr
