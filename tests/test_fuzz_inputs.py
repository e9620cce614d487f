"""Issue 18 item 5: property-based fuzzing of the file parsers and the CLI's arguments
and environment.

Every run ends in a documented exit code, never a traceback (an exception escaping
the CLI fails the test); a command refused as a usage error leaves data.db and
keys.db byte-identical, and one refused after unlocking changes no customer, record,
principal, role or key (only the unlock's own log entries and checkpoint). Each test
runs a small, fast budget in the normal run; the same test with a bigger budget is
marked ``slow``. The corpus in tests/corpus/json holds the named malformed files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shredvault.cli.main import cli
from shredvault.vault import (
    SchemaError,
    Vault,
    VerificationError,
    load_receipt,
    verify_backup,
    verify_certificate,
    verify_export,
    verify_receipt,
)
from shredvault.vault.inputs import parse_json

#: exit codes the README documents
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7}

budget = pytest.mark.parametrize(
    "examples", [25, pytest.param(400, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": False,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def run_cli(args: list[str], *, input: bytes | None = None, **env: str | None) -> Result:
    """The CLI in-process; an exception escaping it is a bug and fails the test."""
    base = {"SHREDVAULT_DATA_URL": None, "SHREDVAULT_TOKEN": None, "SHREDVAULT_PASSPHRASE": None}
    result = CliRunner().invoke(cli, args, input=input, env={**base, **env})
    if not isinstance(result.exception, SystemExit | None):
        raise AssertionError(f"{args[:3]}: unhandled {type(result.exception).__name__}")
    assert result.exit_code in DOCUMENTED, result.exit_code
    assert "Traceback" not in result.output
    return result


# -- malformed JSON, generated --------------------------------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "true", "null", '"\\ud800"']),
    st.text(max_size=8).map(json.dumps),
)


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


malformed_json = st.one_of(
    st.binary(max_size=200),
    st.builds(nested, st.integers(min_value=0, max_value=3000), scalars),
    st.builds(lambda k, a, b: f'{{"{k}": {a}, "{k}": {b}}}', st.text(max_size=5), scalars, scalars),
    st.builds(lambda digits: "9" * digits, st.integers(min_value=15, max_value=6000)),
    st.builds(
        lambda text, cut: text[:cut], st.text(max_size=50).map(json.dumps), st.integers(0, 50)
    ),
)


@budget
def test_the_parser_returns_a_value_or_a_schema_error(examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)
    @given(malformed_json)
    def check(data: str | bytes) -> None:
        try:
            parse_json(data, what="input")
        except SchemaError as error:
            assert "\n" not in str(error)

    check()


# -- the file readers, on real files mutated ------------------------------------------------


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A vault's receipt, export, certificate and backup archive, and its public key."""
    base = tmp_path_factory.mktemp("fuzz")
    key_path = base / "vault.key"
    from shredvault.vault import generate_keyfile

    generate_keyfile(key_path)
    root = base / "vault"
    with Vault.create(root, keyfile=key_path) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        keep, gone = s.add_customer(), s.add_customer()
        for c in (keep, gone):
            s.put(c, "profile", {"name": "Ana"}, purpose="service")
        s.backup(str(base / "backup.tar"))
        receipt = s.shred(gone, reason="erasure request")
        public_key = v.public_key
    (base / "receipt.json").write_text(receipt.dumps())
    (base / "vault.pub").write_text("ed25519:" + public_key.hex() + "\n")
    done = run_cli(
        ["audit", "export", "--out", str(base / "log.jsonl")], SHREDVAULT_VAULT=str(root)
    )
    assert done.exit_code == 0
    decommissioned = base / "gone"
    with Vault.create(decommissioned, keyfile=key_path) as v:
        certificate = v.admin().decommission(reason="closing down")
    (base / "cert.json").write_text(json.dumps(certificate.to_json()))
    return {
        "base": base,
        "root": root,
        "keyfile": key_path,
        "customer": keep,
        "public_key": public_key,
        "receipt": (base / "receipt.json").read_bytes(),
        "export": (base / "log.jsonl").read_bytes(),
        "certificate": (base / "cert.json").read_bytes(),
        "backup": (base / "backup.tar").read_bytes(),
    }


def mutate(data: bytes, how: str, at: int, byte: int) -> bytes:
    at %= max(1, len(data))
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (byte or 1)]) + data[at + 1 :]
    if how == "insert":
        return data[:at] + bytes([byte]) + data[at:]
    if how == "delete":
        return data[:at] + data[at + 1 :]
    return data[:at]  # truncate


mutations = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=255),
)


def checked_quietly(check: Callable[[], object]) -> None:
    """``check`` returns a report or raises VerificationError: nothing else."""
    with contextlib.suppress(VerificationError):
        check()


def test_every_truncation_of_a_receipt_and_an_export_is_refused_cleanly(
    issued: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "cut"
    key = issued["public_key"]
    for name in ("receipt", "export"):
        data: bytes = issued[name]
        for cut in range(len(data.rstrip())):  # a cut final newline changes nothing
            target.write_bytes(data[:cut])
            if name == "receipt":
                try:
                    report = verify_receipt(load_receipt(target), public_key=key)
                except VerificationError:
                    continue
                assert not report.ok, cut
            else:
                try:
                    verified = verify_export(target, public_key=key)
                except VerificationError:
                    continue
                # Only a cut at a line end can leave a shorter valid log: the header
                # names its head, so even that fails as truncated.
                assert not verified.ok, cut


@budget
def test_mutated_files_give_a_report_or_a_verification_error(
    examples: int, issued: dict[str, Any], tmp_path: Path
) -> None:
    key = issued["public_key"]
    target = tmp_path / "mutated"

    @settings(max_examples=examples, **_SETTINGS)
    @given(st.sampled_from(["receipt", "export", "certificate", "backup"]), mutations)
    def check(name: str, mutation: tuple[str, int, int]) -> None:
        target.write_bytes(mutate(issued[name], *mutation))
        if name == "receipt":
            checked_quietly(lambda: verify_receipt(load_receipt(target), public_key=key))
        elif name == "export":
            checked_quietly(lambda: verify_export(target, public_key=key))
        elif name == "certificate":
            from shredvault.vault import load_certificate

            checked_quietly(lambda: verify_certificate(load_certificate(target)))
        else:
            report = verify_backup(target, public_key=key)  # never raises
            assert report.ok or report.reason

    check()


# -- the CLI: verify commands with fuzzed files and flags ----------------------------------


@budget
def test_offline_verify_commands_end_in_a_documented_code(
    examples: int, issued: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "input"
    pub = issued["base"] / "vault.pub"
    commands = {
        "receipt": ["receipt", "verify"],
        "certificate": ["certificate", "verify"],
        "backup": ["backup", "verify"],
        "export": ["audit", "verify", "--from-export"],
    }

    @settings(max_examples=examples, **_SETTINGS)
    @given(
        st.sampled_from(sorted(commands)),
        mutations,
        st.sets(st.sampled_from(["--json", "--trust-embedded-key", "--pubkey"])),
    )
    def check(name: str, mutation: tuple[str, int, int], flags: set[str]) -> None:
        target.write_bytes(mutate(issued[name], *mutation))
        args = [*commands[name], str(target)]
        for flag in sorted(flags):
            args += [flag, str(pub)] if flag == "--pubkey" else [flag]
        result = run_cli(args, SHREDVAULT_VAULT=None, SHREDVAULT_KEYFILE=None)
        assert result.exit_code in {0, 5, 7}
        if "--json" in flags and result.stdout.strip():
            json.loads(result.stdout)  # JSON output stays parseable

    check()


# -- the CLI: vault commands with fuzzed arguments and environment ------------------------


def semantic_state(root: Path) -> dict[str, Any]:
    """Everything a failed command must leave alone (the log and checkpoints aside:
    an unlock writes its own entries)."""
    data = sqlite3.connect(f"file:{root / 'data.db'}?mode=ro", uri=True)
    keys = sqlite3.connect(f"file:{root / 'keys.db'}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in data.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] not in ("sv_log", "sv_log_head", "sv_checkpoints", "sv_meta")
        ]
        state = {t: sorted(map(repr, data.execute(f"SELECT * FROM {t}"))) for t in tables}
        state["deks"] = sorted(map(repr, keys.execute("SELECT * FROM deks")))
        return state
    finally:
        data.close()
        keys.close()


def file_bytes(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10).map(lambda t: t + "\udcff"),
    st.sampled_from(["nan", "inf", "-1", "1e308", "0", "9999-12-31T23:59:59-23:59", "", " "]),
    st.sampled_from(["record.gett", "profil", "2027-02-30", "opal\n", "\x1b[2J", "\x00"]),
)

VAULT_COMMANDS: list[Callable[[str, str, Path], list[str]]] = [
    lambda customer, x, out: ["shred", customer, "--reason", x, "--yes"],
    lambda customer, x, out: ["customer", "add", "--ref", x],
    lambda customer, x, out: ["customer", "add", "--retain-until", x],
    lambda customer, x, out: ["customer", "retain", customer, "--until", x],
    lambda customer, x, out: ["backup", "create", str(out), "--expires", x],
    lambda customer, x, out: ["keys", "rotate-dek", "--older-than", x],
    lambda customer, x, out: ["audit", "query", "--action", x],
    lambda customer, x, out: ["audit", "query", "--since", x],
    lambda customer, x, out: ["role", "add", "fuzz", "--actions", "read", "--kinds", x],
    lambda customer, x, out: ["principal", "add", x, "--role", "operator"],
    lambda customer, x, out: [
        "record",
        "put",
        customer,
        "profile",
        "--purpose",
        x,
        "--field",
        "name=A",
    ],
]


@budget
def test_vault_commands_with_hostile_arguments_change_nothing_when_they_fail(
    examples: int, issued: dict[str, Any], tmp_path: Path
) -> None:
    root, customer = issued["root"], issued["customer"]
    env = {"SHREDVAULT_VAULT": str(root), "SHREDVAULT_KEYFILE": str(issued["keyfile"])}

    @settings(max_examples=examples, **_SETTINGS)
    @given(st.integers(min_value=0, max_value=len(VAULT_COMMANDS) - 1), hostile_text)
    def check(which: int, text: str) -> None:
        out = tmp_path / "fuzz-backup.tar"
        out.unlink(missing_ok=True)
        before = semantic_state(root)  # (read first: it is a reader of the stores too)
        before_bytes = file_bytes(root)
        result = run_cli(VAULT_COMMANDS[which](customer, text, out), **env)
        if result.exit_code == 2:
            assert file_bytes(root) == before_bytes, (which, text, result.output)
        elif result.exit_code != 0:
            assert semantic_state(root) == before
        out.unlink(missing_ok=True)

    check()


@budget
def test_hostile_secrets_in_the_environment_are_never_echoed(
    examples: int, issued: dict[str, Any]
) -> None:
    root = issued["root"]

    @settings(max_examples=examples, **_SETTINGS)
    @given(st.sampled_from(["SHREDVAULT_PASSPHRASE", "SHREDVAULT_TOKEN"]), hostile_text)
    def check(name: str, secret: str) -> None:
        assume("\x00" not in secret)  # no environment can hold a NUL
        env = {"SHREDVAULT_VAULT": str(root), name: secret}
        if name == "SHREDVAULT_TOKEN":
            env["SHREDVAULT_KEYFILE"] = str(issued["keyfile"])
        result = run_cli(["customer", "list"], **env)
        if len(secret.strip()) >= 4:
            assert secret.strip() not in result.output

    check()
