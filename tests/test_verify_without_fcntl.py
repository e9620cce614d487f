"""Where ``fcntl`` does not exist (Windows), ``import shredvault`` works and an inspector
can run the offline verifiers (issue 15): checked in child processes in which
``import fcntl`` fails, on files a real vault made in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shredvault import Auditor, Vault, format_public_key
from shredvault.keys import generate_keyfile

PURPOSE = "service"

# Run first in every child: from here on `import fcntl` raises ImportError, as on Windows.
_NO_FCNTL = "import sys; sys.modules['fcntl'] = None\n"
_CLI = _NO_FCNTL + "import runpy; runpy.run_module('shredvault', run_name='__main__')\n"


@dataclass(frozen=True)
class Inspection:
    """What an inspector is handed: no vault, no keystore, no passphrase."""

    folder: Path
    export: Path
    pubkey: Path
    receipt: Path
    certificate: Path
    vault: Path
    keyfile: Path


@pytest.fixture(scope="module")
def inspection(tmp_path_factory: pytest.TempPathFactory) -> Inspection:
    folder = tmp_path_factory.mktemp("inspection")
    keyfile = folder / "vault.key"
    generate_keyfile(keyfile)
    with Vault.create(folder / "vault", keyfile=keyfile) as vault:
        vault.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        admin = vault.admin()
        gone, kept = admin.add_customer(), admin.add_customer()
        admin.put_many([(c, "profile", {"name": "N"}) for c in (gone, kept)], purpose=PURPOSE)
        admin.shred(gone, reason="erasure request").write(folder / "receipt.json")
        (folder / "vault.pub").write_text(format_public_key(vault.public_key) + "\n")
        admin.decommission(reason="closing the service").write(folder / "cert.json")
    with Auditor.open(folder / "vault") as auditor, open(folder / "log.jsonl", "wb") as out:
        auditor.export(out)
    return Inspection(
        folder,
        export=folder / "log.jsonl",
        pubkey=folder / "vault.pub",
        receipt=folder / "receipt.json",
        certificate=folder / "cert.json",
        vault=folder / "vault",
        keyfile=keyfile,
    )


def run_without_fcntl(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_child_really_has_no_fcntl(tmp_path: Path) -> None:
    probe = run_without_fcntl(_NO_FCNTL + "import fcntl", cwd=tmp_path)
    assert probe.returncode == 1
    assert "import of fcntl halted" in probe.stderr


def test_import_shredvault_and_its_verifiers_work_without_fcntl(tmp_path: Path) -> None:
    code = _NO_FCNTL + (
        "import shredvault\n"
        "from shredvault import Vault, verify_export, verify_receipt, verify_certificate\n"
        "import shredvault.cli.main, shredvault.keys, shredvault.vault.locks\n"
        "assert sys.modules['fcntl'] is None\n"
        "print(Vault.__module__, verify_export.__module__)\n"
    )
    result = run_without_fcntl(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["shredvault.vault.vault", "shredvault.vault.audit"]


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "verify", "--from-export", "log.jsonl", "--pubkey", "vault.pub", "--json"],
        ["receipt", "verify", "receipt.json", "--pubkey", "vault.pub", "--json"],
        [
            "certificate", "verify", "cert.json", "--pubkey", "vault.pub", "--log", "log.jsonl",
            "--json",
        ],
    ],
    ids=["audit-verify-export", "receipt-verify", "certificate-verify"],
)  # fmt: skip
def test_offline_verify_commands_exit_0_without_fcntl(
    inspection: Inspection, args: list[str]
) -> None:
    result = run_without_fcntl(_CLI, *args, cwd=inspection.folder)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_a_tampered_receipt_still_exits_5_without_fcntl(
    inspection: Inspection, tmp_path: Path
) -> None:
    document = json.loads(inspection.receipt.read_text())
    customer = document["customer"]
    document["customer"] = customer[:-1] + ("B" if customer.endswith("A") else "A")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    args = ["receipt", "verify", str(forged), "--pubkey", str(inspection.pubkey)]
    result = run_without_fcntl(_CLI, *args, cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    assert result.stdout.startswith("INVALID: erasure receipt")


def test_opening_a_vault_without_fcntl_says_why_it_cannot(
    inspection: Inspection, tmp_path: Path
) -> None:
    """Opening rolls interrupted shreds forward under the shred lock, so it needs one:
    a clear StorageError (exit 1 in the CLI), not an ImportError at import time."""
    code = _NO_FCNTL + (
        "from shredvault import StorageError, Vault\n"
        "try:\n"
        "    Vault.open(sys.argv[1], keyfile=sys.argv[2])\n"
        "except StorageError as error:\n"
        "    print(error)\n"
    )
    fresh = tmp_path / "vault"
    Vault.create(fresh, keyfile=inspection.keyfile).close()
    result = run_without_fcntl(code, str(fresh), str(inspection.keyfile), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no file locks (neither fcntl nor msvcrt)" in result.stdout
