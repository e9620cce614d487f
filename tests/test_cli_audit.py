"""``shredvault audit``: verify, export, checkpoint and pubkey, through CliRunner.

Verification and export need no passphrase or keyfile; tampering exits 5 and names
the first bad seq and the reason."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.vault import Vault

Run = Callable[..., Result]


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def run(vault_dir: Path, keyfile: Path) -> Run:
    """Invoke the CLI with the vault and a keyfile in the environment."""
    return runner_with(
        SHREDVAULT_VAULT=str(vault_dir), SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_PASSPHRASE=None
    )


@pytest.fixture
def audit(vault_dir: Path) -> Run:
    """Invoke the CLI as an auditor: the vault's location and no credential at all."""
    return runner_with(
        SHREDVAULT_VAULT=str(vault_dir), SHREDVAULT_KEYFILE=None, SHREDVAULT_PASSPHRASE=None
    )


def runner_with(**env: str | None) -> Run:
    runner = CliRunner()
    base = {"SHREDVAULT_DATA_URL": None, **env}

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), input=input, env=base, catch_exceptions=False)

    return run


@pytest.fixture
def vault(run: Run, vault_dir: Path) -> Path:
    """A keyfile vault with one customer and one record: a log of a dozen entries."""
    assert run("init", str(vault_dir)).exit_code == 0
    assert (
        run("kind", "declare", "profile", "--fields", "name", "--purposes", "service").exit_code
        == 0
    )
    customer = run("customer", "add").stdout.strip()
    put = run("record", "put", customer, "profile", "--purpose", "service", "--field", "name=Li Na")
    assert put.exit_code == 0, put.output
    return vault_dir


def tamper_body(vault_dir: Path, seq: int) -> None:
    """Edit the stored bytes of one log entry, as an attacker with file access would."""
    with sqlite3.connect(vault_dir / "data.db") as conn:
        (body,) = conn.execute("SELECT body FROM sv_log WHERE seq = ?", (seq,)).fetchone()
        edited = bytes(body).replace(b'"actor":"admin"', b'"actor":"mallory"')
        assert edited != bytes(body)
        conn.execute("UPDATE sv_log SET body = ? WHERE seq = ?", (edited, seq))


def test_verify_needs_no_credential_and_reports_the_figures(audit: Run, vault: Path) -> None:
    result = audit("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("valid")
    assert "entries checked" in result.stdout and "last signed checkpoint" in result.stdout


def test_verify_json_reports_entries_checkpoint_and_tail(audit: Run, vault: Path) -> None:
    report = json.loads(audit("audit", "verify", "--json").stdout)
    assert report["ok"] is True
    assert report["source"] == "vault" and report["vault"].startswith("vlt_")
    assert report["entries"] == report["last_seq"] >= 5
    assert report["last_checkpoint"] == report["last_seq"]  # closing signs the head
    assert report["unsigned_tail"] == 0
    assert report["bad_seq"] is None


def test_verify_of_a_tampered_entry_exits_5_naming_seq_and_reason(audit: Run, vault: Path) -> None:
    tamper_body(vault, 3)
    result = audit("audit", "verify")
    assert result.exit_code == 5
    assert "INVALID" in result.stdout
    assert "first bad seq 3" in result.stdout and "modified" in result.stdout
    assert result.stderr.startswith("error: ") and "seq 3" in result.stderr


def test_verify_json_of_a_tampered_log_gives_the_first_bad_seq(audit: Run, vault: Path) -> None:
    tamper_body(vault, 4)
    result = audit("audit", "verify", "--json")
    assert result.exit_code == 5
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["bad_seq"] == 4 and report["reason"] == "modified"
    assert report["entries"] == 3


def test_pubkey_prints_the_text_form(audit: Run, vault: Path) -> None:
    result = audit("audit", "pubkey")
    assert result.exit_code == 0
    assert result.stdout.startswith("ed25519:") and len(result.stdout.strip()) == 72
    as_json = json.loads(audit("audit", "pubkey", "--json").stdout)
    assert as_json["public_key"] == result.stdout.strip()


def test_verify_with_the_public_key_of_another_vault_exits_5(
    audit: Run, vault: Path, tmp_path: Path, keyfile: Path
) -> None:
    other = runner_with(SHREDVAULT_VAULT=None, SHREDVAULT_KEYFILE=str(keyfile))
    created = json.loads(other("init", str(tmp_path / "other"), "--json").stdout)
    foreign = tmp_path / "other.pub"
    foreign.write_text(created["public_key"] + "\n")
    result = audit("audit", "verify", "--pubkey", str(foreign), "--json")
    assert result.exit_code == 5
    assert json.loads(result.stdout)["reason"] == "bad signature"


def test_checkpoint_prints_an_anchor_that_verify_accepts(
    run: Run, audit: Run, vault: Path, tmp_path: Path
) -> None:
    made = run("audit", "checkpoint")
    assert made.exit_code == 0, made.output
    checkpoint = json.loads(made.stdout)
    assert checkpoint["checkpoint"]["type"] == "checkpoint" and checkpoint["signature"]
    anchor = tmp_path / "anchor.json"
    anchor.write_text(made.stdout)
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(audit("audit", "pubkey").stdout)
    result = audit("audit", "verify", "--pubkey", str(pubkey), "--anchor", str(anchor), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["anchor_seq"] == checkpoint["checkpoint"]["seq"]


def test_checkpoint_needs_a_credential(audit: Run, vault: Path) -> None:
    assert audit("audit", "checkpoint").exit_code == 2


def test_export_streams_json_lines_to_stdout(audit: Run, vault: Path) -> None:
    result = audit("audit", "export")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["format"] == "shredvault-log-export"
    entries = [line for line in lines if "seq" in line and "hash" in line]
    assert [e["seq"] for e in entries] == list(range(1, lines[0]["head_seq"] + 1))


def test_export_since_starts_at_that_seq(audit: Run, vault: Path) -> None:
    lines = [json.loads(x) for x in audit("audit", "export", "--since", "4").stdout.splitlines()]
    entries = [line for line in lines if "seq" in line and "hash" in line]
    assert entries[0]["seq"] == 4


def test_an_export_verifies_offline_with_pubkey_and_anchor(
    run: Run, audit: Run, vault: Path, tmp_path: Path
) -> None:
    anchor = tmp_path / "anchor.json"
    anchor.write_text(run("audit", "checkpoint").stdout)
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(audit("audit", "pubkey").stdout)
    exported = tmp_path / "log.jsonl"
    result = audit("audit", "export", "--out", str(exported))
    assert result.exit_code == 0, result.output
    assert "exported" in result.stderr
    offline = runner_with(SHREDVAULT_VAULT=None, SHREDVAULT_KEYFILE=None)
    checked = offline(
        "audit", "verify", "--from-export", str(exported), "--pubkey", str(pubkey),
        "--anchor", str(anchor), "--json",
    )  # fmt: skip
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["source"] == "export" and report["ok"] is True
    assert report["notes"] == []


def test_an_export_verified_without_pubkey_is_not_verified(
    audit: Run, vault: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "log.jsonl"
    audit("audit", "export", "--out", str(exported))
    result = audit("audit", "verify", "--from-export", str(exported))
    assert result.exit_code == 7
    assert result.stdout.startswith("NOT VERIFIED") and "valid" not in result.stdout.lower()
    assert "--pubkey" in result.stderr and "no trusted key" in result.stderr
    asserted = audit("audit", "verify", "--from-export", str(exported), "--trust-embedded-key")
    assert asserted.exit_code == 0, asserted.output
    assert asserted.stdout.startswith("self-asserted") and "valid" not in asserted.stdout


def test_a_truncated_export_fails_against_the_anchor(
    run: Run, audit: Run, vault: Path, tmp_path: Path
) -> None:
    anchor = tmp_path / "anchor.json"
    anchor.write_text(run("audit", "checkpoint").stdout)
    exported = tmp_path / "log.jsonl"
    audit("audit", "export", "--out", str(exported))
    lines = exported.read_bytes().splitlines(keepends=True)
    exported.write_bytes(b"".join(lines[:-2]))
    result = audit(
        "audit", "verify", "--from-export", str(exported), "--anchor", str(anchor), "--json"
    )
    assert result.exit_code == 5
    assert json.loads(result.stdout)["reason"] == "truncated"


def test_a_malformed_anchor_exits_5(audit: Run, vault: Path, tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.json"
    anchor.write_text("{not json")
    assert audit("audit", "verify", "--anchor", str(anchor)).exit_code == 5


def test_audit_of_a_directory_without_a_vault_exits_1(tmp_path: Path) -> None:
    result = runner_with(SHREDVAULT_VAULT=str(tmp_path))("audit", "verify")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")


def test_verify_of_a_long_log_shows_progress_on_stderr(
    audit: Run, vault: Path, keyfile: Path
) -> None:
    with Vault.open(vault, keyfile=keyfile) as opened:
        session = opened.admin()
        customer = session.add_customer()
        session.put_many([(customer, "profile", {"name": "x"})] * 10_000, purpose="service")
    result = audit("audit", "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"] > 10_000
    assert "verifying access log" in result.stderr


def test_a_vault_whose_recent_log_was_tampered_refuses_to_open_with_exit_5(
    run: Run, audit: Run, vault: Path
) -> None:
    head = json.loads(audit("audit", "verify", "--json").stdout)["last_seq"]
    tamper_body(vault, head)
    result = run("customer", "list")
    assert result.exit_code == 5
    assert result.stderr.startswith("error: ") and "refuses to serve" in result.stderr


def test_export_refuses_an_existing_out_file_unless_told_to_replace_it(
    audit: Run, vault: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "log.jsonl"
    exported.write_text("someone else's file\n")
    refused = audit("audit", "export", "--out", str(exported))
    assert refused.exit_code == 2 and "already exists" in refused.stderr
    assert exported.read_text() == "someone else's file\n"
    assert audit("audit", "export", "--replace", "--out", str(exported)).exit_code == 0
    assert json.loads(exported.read_text().splitlines()[0])["format"] == "shredvault-log-export"
