"""Issue 18 item 4: no "valid" without a trusted key.

A log export forged under a fresh key but claiming the real vault id is the finding:
it passed `audit verify --from-export` with exit 0. Offline checks now need a trust
root (the vault's key, or an anchor the file's key signed); without one they exit 7,
and with --trust-embedded-key they say "self-asserted", never "valid". The CLI runs
here are real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from shredvault.cli.exit_codes import NOT_TRUSTED, VERIFICATION_FAILED, exit_code_for
from shredvault.vault import Auditor, NoTrustedKeyError, Vault, VerificationError, verify_export
from shredvault.vault.canonical import canonical


def shredvault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a clean environment (no vault, no secret)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    return subprocess.run(
        [sys.executable, "-m", "shredvault", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def files(tmp_path: Path, keyfile: Path) -> Path:
    """A vault's export (log.jsonl), public key (vault.pub) and an anchor (anchor.json)
    in ``tmp_path``."""
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        c = s.add_customer()
        s.put(c, "profile", {"name": "Ana"}, purpose="service")
        (tmp_path / "anchor.json").write_text(json.dumps(v.checkpoint().to_json()))
        s.put(c, "profile", {"name": "Bo"}, purpose="service")
        (tmp_path / "vault.pub").write_text("ed25519:" + v.public_key.hex() + "\n")
    with Auditor.open(tmp_path / "vault") as auditor, (tmp_path / "log.jsonl").open("wb") as out:
        auditor.export(out)
    return tmp_path


def forge(export: Path, out: Path) -> Path:
    """Re-sign every checkpoint of ``export`` under a fresh key and name that key in the
    header, keeping the real vault id: the forgery of the finding."""
    forger = SigningKey.generate()
    lines = export.read_bytes().splitlines()
    header = json.loads(lines[0])
    header["public_key"] = "ed25519:" + bytes(forger.verify_key).hex()
    rewritten = [canonical(header)]
    for line in lines[1:]:
        if line.startswith(b'{"checkpoint":'):
            doc: dict[str, Any] = json.loads(line)
            signed = canonical(doc["checkpoint"])
            doc["signature"] = forger.sign(signed).signature.hex()
            line = canonical(doc)
        rewritten.append(line)
    out.write_bytes(b"".join(line + b"\n" for line in rewritten))
    return out


def test_no_trusted_key_maps_to_its_own_exit_code() -> None:
    error = NoTrustedKeyError("not verified: no trusted key")
    assert isinstance(error, VerificationError) and error.reason == "no trusted key"
    assert exit_code_for(error) == NOT_TRUSTED == 7
    assert exit_code_for(VerificationError("bad")) == VERIFICATION_FAILED == 5


def test_a_forged_export_claiming_the_real_vault_is_never_valid(files: Path) -> None:
    forged = forge(files / "log.jsonl", files / "forged.jsonl")
    assert json.loads(forged.read_text().splitlines()[0])["vault"].startswith("vlt_")
    unpinned = shredvault("audit", "verify", "--from-export", "forged.jsonl", cwd=files)
    assert unpinned.returncode == 7, unpinned.stderr
    assert unpinned.stdout.startswith("NOT VERIFIED") and "valid:" not in unpinned.stdout
    assert "no trusted key" in unpinned.stderr and "--pubkey" in unpinned.stderr
    assert "Traceback" not in unpinned.stderr
    pinned = shredvault(
        "audit", "verify", "--from-export", "forged.jsonl", "--pubkey", "vault.pub", cwd=files
    )
    assert pinned.returncode == 5 and "wrong key" in pinned.stdout  # it names another key
    anchored = shredvault(
        "audit", "verify", "--from-export", "forged.jsonl", "--anchor", "anchor.json", cwd=files
    )
    assert anchored.returncode == 5 and "bad signature" in anchored.stdout
    asserted = shredvault(
        "audit", "verify", "--from-export", "forged.jsonl", "--trust-embedded-key", cwd=files
    )
    assert asserted.returncode == 0, asserted.stderr
    assert asserted.stdout.startswith("self-asserted:") and "valid" not in asserted.stdout


def test_the_real_export_verifies_under_the_pinned_key_or_the_anchor_alone(files: Path) -> None:
    pinned = shredvault(
        "audit", "verify", "--from-export", "log.jsonl", "--pubkey", "vault.pub", "--json",
        cwd=files,
    )  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout)["trust"] == "pinned"
    anchored = shredvault(
        "audit", "verify", "--from-export", "log.jsonl", "--anchor", "anchor.json", "--json",
        cwd=files,
    )  # fmt: skip
    assert anchored.returncode == 0, anchored.stderr
    report = json.loads(anchored.stdout)
    anchor = json.loads((files / "anchor.json").read_text())
    assert (report["ok"], report["trust"]) == (True, "anchored")
    assert report["anchor_seq"] == anchor["checkpoint"]["seq"]


def test_json_output_without_a_trusted_key_says_so_and_exits_7(files: Path) -> None:
    done = shredvault("audit", "verify", "--from-export", "log.jsonl", "--json", cwd=files)
    assert done.returncode == 7
    report = json.loads(done.stdout)
    assert (report["ok"], report["reason"], report["trust"]) == (False, "no trusted key", None)


def test_an_export_no_checkpoint_covers_is_unsigned(files: Path) -> None:
    lines = (files / "log.jsonl").read_bytes().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if not line.startswith(b'{"checkpoint":')]
    bare = files / "bare.jsonl"
    bare.write_bytes(b"".join(line + b"\n" for line in kept))
    report = verify_export(bare, public_key=bytes.fromhex((files / "vault.pub").read_text()[8:]))
    assert (report.ok, report.reason) == (False, "unsigned")


def test_a_signature_is_checked_together_with_the_signed_objects_type(
    tmp_path: Path, keyfile: Path
) -> None:
    """Issue 18 item 6: one vault key signs checkpoints, manifests, certificates and
    completion summaries; a checkpoint must not pass for a completion summary (it
    did), nor a summary for a checkpoint."""
    from shredvault.vault import verify_completion
    from shredvault.vault.checkpoint import parse_checkpoint
    from shredvault.vault.trust import verify_typed

    with Vault.create(tmp_path / "v", keyfile=keyfile) as v:
        cp = v.checkpoint()
        key = v.public_key
    checkpoint_body = json.loads(cp.body)
    as_summary = {"summary": checkpoint_body, "signature": cp.signature.hex()}
    assert canonical(checkpoint_body) == cp.body  # the signature covers exactly these bytes
    assert not verify_completion(as_summary, key)
    assert cp.verify(key)
    assert verify_typed(key, cp.body, cp.signature, "checkpoint")
    for other in ("backup", "shredvault-handover", "shredvault-handover-completion"):
        assert not verify_typed(key, cp.body, cp.signature, other)
    # A body that is not a JSON object, or a bad signature, never verifies.
    assert not verify_typed(key, b"[]", cp.signature, "checkpoint")
    forged = bytes([cp.signature[0] ^ 1]) + cp.signature[1:]
    assert not parse_checkpoint(cp.body, forged).verify(key)
