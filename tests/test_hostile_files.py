"""Issue 18 items 1 and 5: every file and stdin reader refuses malformed JSON cleanly.

The corpus in tests/corpus/json (deep nesting, huge integers, NaN, Infinity, invalid
UTF-8, duplicate keys, truncation, ...) goes to every reader: the library's loaders,
and the CLI commands that read a receipt, certificate, anchor, log export, backup or
stdin. Each ends with its documented exit code and one line on stderr, never a
traceback, and a command on a vault leaves data.db and keys.db byte-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.vault import (
    SchemaError,
    Vault,
    VerificationError,
    load_certificate,
    load_receipt,
    read_anchor,
)
from shredvault.vault.inputs import parse_json

CORPUS = sorted((Path(__file__).parent / "corpus" / "json").glob("*.json"))
OFFLINE = {"SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": None, "SHREDVAULT_PASSPHRASE": None}


def invoke(args: list[str], *, input: bytes | None = None, **env: str | None) -> Result:
    """The CLI in-process; an exception escaping it is a bug (caught here to show it)."""
    result = CliRunner().invoke(cli, args, input=input, env={**OFFLINE, **env})
    if not isinstance(result.exception, SystemExit | None):
        raise AssertionError(f"{args}: unhandled {result.exception!r}")
    return result


def clean_failure(result: Result, code: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    # one line: "error: ..." or, with --json, a JSON object naming the exit code
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("error:")
        or (line.startswith("{") and json.loads(line).get("exit_code") == code)
    ]
    assert len(lines) == 1, result.stderr


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 12


@pytest.mark.parametrize(
    "path", [p for p in CORPUS if p.stem != "not-an-object"], ids=lambda p: p.stem
)
def test_the_one_parser_refuses_every_corpus_file(path: Path) -> None:
    """(A JSON array is valid JSON: the readers refuse it for not being an object.)"""
    with pytest.raises(SchemaError) as caught:
        parse_json(path.read_bytes(), what="the file")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
@pytest.mark.parametrize("load", [load_receipt, load_certificate, read_anchor])
def test_library_loaders_raise_malformed(path: Path, load: Callable[[Path], object]) -> None:
    with pytest.raises(VerificationError) as caught:
        load(path)
    assert caught.value.reason == "malformed"


OFFLINE_COMMANDS = [
    ["receipt", "verify", "{f}"],
    ["receipt", "verify", "{f}", "--trust-embedded-key", "--json"],
    ["certificate", "verify", "{f}"],
    ["audit", "verify", "--from-export", "{f}", "--trust-embedded-key"],
    ["audit", "verify", "--from-export", "{f}", "--anchor", "{f}"],
    ["backup", "verify", "{f}", "--trust-embedded-key"],
]


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
@pytest.mark.parametrize("command", OFFLINE_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_offline_verify_commands_exit_5_cleanly(path: Path, command: list[str]) -> None:
    result = invoke([a.format(f=path) for a in command])
    clean_failure(result, 5)


@pytest.fixture
def vault(tmp_path: Path, keyfile: Path) -> tuple[Path, str]:
    root = tmp_path / "vault"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        customer = v.admin().add_customer()
    return root, customer


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_record_put_from_stdin_exits_2_and_changes_nothing(
    path: Path, vault: tuple[Path, str], keyfile: Path
) -> None:
    root, customer = vault
    before = snapshot(root)
    result = invoke(
        ["record", "put", customer, "profile", "-", "--purpose", "service"],
        input=path.read_bytes(),
        SHREDVAULT_VAULT=str(root),
        SHREDVAULT_KEYFILE=str(keyfile),
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert snapshot(root) == before


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_a_report_through_a_malformed_receipt_exits_5_and_changes_nothing(
    path: Path, vault: tuple[Path, str], keyfile: Path
) -> None:
    root, _customer = vault
    before = snapshot(root)
    result = invoke(
        ["customer", "report", "--receipt", str(path)],
        SHREDVAULT_VAULT=str(root),
        SHREDVAULT_KEYFILE=str(keyfile),
    )
    clean_failure(result, 5)
    assert snapshot(root) == before


def test_a_deep_receipt_in_a_real_process_ends_in_one_line(tmp_path: Path) -> None:
    deep = next(p for p in CORPUS if p.stem == "deep-array")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    done = subprocess.run(
        [sys.executable, "-m", "shredvault", "receipt", "verify", str(deep)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 5
    assert done.stderr.count("\n") == 1 and "nests deeper" in done.stdout


def test_with_json_an_error_is_one_json_line_on_stderr() -> None:
    deep = next(p for p in CORPUS if p.stem == "deep-array")
    result = invoke(["receipt", "verify", str(deep), "--json"])
    assert result.exit_code == 5
    (line,) = result.stderr.splitlines()
    error = json.loads(line)
    assert error["exit_code"] == 5 and error["type"] == "VerificationError"
    assert json.loads(result.stdout)["reason"] == "malformed"  # the report is unchanged


def test_an_unexpected_exception_is_one_line_and_exit_1_without_its_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The catch-all for bugs: the test suite sets SHREDVAULT_RAISE_UNEXPECTED so that
    reaching it fails a test; unset, a person sees one line, never the exception's
    text (which could hold a value)."""
    import shredvault.cli.receipts as receipts

    def broken(path: object) -> object:
        raise RuntimeError("Ana's phone +44 20 7946 0321")

    monkeypatch.setattr(receipts, "load_receipt", broken)
    monkeypatch.delenv("SHREDVAULT_RAISE_UNEXPECTED")
    receipt = tmp_path / "r.json"
    receipt.write_text("{}")
    result = CliRunner().invoke(cli, ["receipt", "verify", str(receipt)], env=OFFLINE)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: unexpected RuntimeError")
    assert "Ana" not in result.output


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_a_malformed_handover_key_file_is_an_invalid_key(path: Path) -> None:
    """The handover key files are read by the keys package (which cannot use the
    vault's parser): each corpus file is a clean InvalidKeyError, never a crash."""
    from shredvault.keys import InvalidKeyError
    from shredvault.vault import open_handover_key, read_handover_public_key

    with pytest.raises(InvalidKeyError):
        read_handover_public_key(path)
    with pytest.raises(InvalidKeyError):
        open_handover_key(path, b"passphrase")
