"""``shredvault customer report``, ``audit query`` and ``audit report``: through CliRunner
and once as the installed console script in a real process.

The vault is made with the library (a keyfile vault with an operator, an auditor and a
``dpo`` principal holding ``export``; alice with two records, dan shredded); the
commands then unlock it from SHREDVAULT_KEYFILE and act as the token given.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.keys import Envelope, KeyStore, SecretBytes, load_keyfile
from shredvault.keys.envelope import dek_aad, kek_aad, signing_seed_aad
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey
from shredvault.vault import Auditor, Role, Vault, ids
from shredvault.vault.checkpoint import checkpoint_from_json
from shredvault.vault.log import Event, append

from logrows import scalar

ALICE = {"name": "Alice Liddell", "phone": "+44 7700 900001"}
ALICE_NOTE = {"name": "Alice L.", "phone": "+44 7700 900002"}
DAN = {"name": "Daniel Gone", "phone": "+49 30 901820"}

Run = Callable[..., Result]


@dataclass
class Setup:
    root: Path
    keyfile: Path
    public_key: bytes
    tokens: dict[str, str]  # olga (operator), ada (auditor), dora (dpo)
    alice: str
    alice_records: list[str]
    dan: str
    dan_receipt: Path


@pytest.fixture
def setup(tmp_path: Path, keyfile: Path) -> Setup:
    root = tmp_path / "vault"
    with Vault.create(root, keyfile=keyfile) as vault:
        admin = vault.admin()
        vault.declare_kind("profile", fields=["name", "phone"], purposes=["service"])
        admin.add_role(Role.build("dpo", actions=["export"]))
        tokens = {
            name: admin.add_principal(name, role=role)
            for name, role in (("olga", "operator"), ("ada", "auditor"), ("dora", "dpo"))
        }
        olga = vault.login(tokens["olga"])
        alice, dan = olga.add_customer(ref="A-1"), olga.add_customer()
        records = olga.put_many(
            [(alice, "profile", ALICE), (alice, "profile", ALICE_NOTE), (dan, "profile", DAN)],
            purpose="service",
        )
        olga.get(alice, records[0], purpose="service")
        receipt = tmp_path / "dan-receipt.json"
        admin.shred(dan, reason="customer request").write(receipt)
        public_key = vault.public_key
    return Setup(root, keyfile, public_key, tokens, alice, records[:2], dan, receipt)


@pytest.fixture
def run(setup: Setup) -> Run:
    """Invoke the CLI on the vault, unlocked with the keyfile; ``token=`` acts as a
    principal (through SHREDVAULT_TOKEN, as the help recommends)."""
    runner = CliRunner()

    def invoke(*args: str, token: str | None = None) -> Result:
        env = {
            "SHREDVAULT_VAULT": str(setup.root),
            "SHREDVAULT_KEYFILE": str(setup.keyfile),
            "SHREDVAULT_PASSPHRASE": None,
            "SHREDVAULT_DATA_URL": None,
            "SHREDVAULT_TOKEN": token,
        }
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- customer report -----------------------------------------------------------------------------


def test_customer_report_prints_json_by_default(run: Run, setup: Setup) -> None:
    report = ok_json(run("customer", "report", setup.alice))
    assert report["type"] == "shredvault-subject-access-report"
    assert [(r["id"], r["fields"]) for r in report["records"]] == list(
        zip(setup.alice_records, [ALICE, ALICE_NOTE], strict=True)
    )
    assert checkpoint_from_json(report["checkpoint"]).verify(setup.public_key)
    assert report["history"][-1]["action"] == "customer.report"


def test_customer_report_as_a_principal_with_export(run: Run, setup: Setup) -> None:
    report = ok_json(run("customer", "report", setup.alice, token=setup.tokens["dora"]))
    own = [h for h in report["history"] if h["action"] == "customer.report"]
    assert [(h["actor"], h["role"], h["purpose"]) for h in own] == [
        ("dora", "dpo", "subject-access")
    ] * 2


def test_customer_report_in_markdown(run: Run, setup: Setup) -> None:
    result = run("customer", "report", setup.alice, "--format", "md")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# What we hold about you — customer {setup.alice}")
    assert f"| phone | {ALICE['phone']} |" in result.stdout
    assert DAN["name"] not in result.stdout


def test_json_flag_beats_format_md(run: Run, setup: Setup) -> None:
    report = ok_json(run("customer", "report", setup.alice, "--format", "md", "--json"))
    assert report["customer"]["id"] == setup.alice


def test_customer_report_out_writes_an_owner_only_file(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    out = tmp_path / "alice.json"
    result = run("customer", "report", setup.alice, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "report written to" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text("utf-8"))["customer"]["id"] == setup.alice


def test_out_refuses_an_existing_path_and_leaves_it_alone(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    out = tmp_path / "taken.md"
    out.write_text("someone else's file\n")
    os.chmod(out, 0o644)
    before = scalar(setup.root / "data.db", "SELECT MAX(seq) FROM sv_log")
    result = run("customer", "report", setup.alice, "--format", "md", "--out", str(out))
    assert result.exit_code == 2  # refused before anything is decrypted or logged
    assert str(out) in result.stderr and "already exists" in result.stderr
    assert scalar(setup.root / "data.db", "SELECT MAX(seq) FROM sv_log") == before
    assert out.read_text() == "someone else's file\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert ALICE["name"] not in result.output


def test_out_dash_means_stdout(
    run: Run, setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    report = ok_json(run("customer", "report", setup.alice, "--out", "-"))
    assert report["customer"]["id"] == setup.alice
    assert not (tmp_path / "-").exists()


def test_customer_report_of_a_shredded_customer_exits_4(run: Run, setup: Setup) -> None:
    result = run("customer", "report", setup.dan)
    assert result.exit_code == 4
    assert "shredded" in result.stderr and result.stdout == ""


def test_customer_report_of_an_unknown_customer_exits_4(run: Run) -> None:
    assert run("customer", "report", ids.new_id(ids.CUSTOMER)).exit_code == 4


@pytest.mark.parametrize("who", ["olga", "ada"])
def test_customer_report_without_export_exits_3(run: Run, setup: Setup, who: str) -> None:
    result = run("customer", "report", setup.alice, token=setup.tokens[who])
    assert result.exit_code == 3
    assert result.stdout == "" and ALICE["name"] not in result.output


def test_an_unknown_token_exits_3_and_is_not_echoed(run: Run, setup: Setup) -> None:
    bogus = "svp_000000000000_definitely-not-a-token"
    result = run("customer", "report", setup.alice, token=bogus)
    assert result.exit_code == 3
    assert bogus not in result.output


def test_customer_report_through_a_receipt(run: Run, setup: Setup) -> None:
    receipt = json.loads(setup.dan_receipt.read_text("utf-8"))
    report = ok_json(
        run("customer", "report", "--receipt", str(setup.dan_receipt), token=setup.tokens["dora"])
    )
    assert report["customer"]["id"] == setup.dan and report["customer"]["state"] == "shredded"
    assert report["records"] == [] and report["receipt"] == receipt
    assert [h["action"] for h in report["history"]] == [
        "customer.add",
        "record.put",
        "customer.shred-intent",
        "customer.shred",
        "customer.report",
    ]
    assert report["history"][-1]["actor"] == "dora"
    assert checkpoint_from_json(report["checkpoint"]).verify(setup.public_key)
    assert DAN["name"] not in json.dumps(report, ensure_ascii=False)


def test_customer_report_through_a_receipt_in_markdown(run: Run, setup: Setup) -> None:
    result = run("customer", "report", "--receipt", str(setup.dan_receipt), "--format", "md")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# What we hold about you — customer {setup.dan}")
    assert "## Your data was erased" in result.stdout


@pytest.mark.parametrize(
    "args",
    [(), ("CUSTOMER", "--receipt", "RECEIPT")],
    ids=["neither", "both"],
)
def test_customer_report_needs_exactly_one_of_customer_and_receipt(
    run: Run, setup: Setup, args: tuple[str, ...]
) -> None:
    given = [{"CUSTOMER": setup.dan, "RECEIPT": str(setup.dan_receipt)}.get(a, a) for a in args]
    result = run("customer", "report", *given)
    assert result.exit_code == 2
    assert "exactly one of CUSTOMER and --receipt" in result.stderr


def test_an_altered_receipt_exits_5_and_prints_nothing(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    receipt = json.loads(setup.dan_receipt.read_text("utf-8"))
    receipt["customer"] = setup.alice
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(receipt))
    result = run("customer", "report", "--receipt", str(altered), token=setup.tokens["dora"])
    assert result.exit_code == 5
    assert result.stdout == "" and "receipt does not verify" in result.stderr


@pytest.mark.parametrize("content", ["not json {", "[1, 2]", "NAN_SEQ"])
def test_an_unreadable_receipt_exits_5(
    run: Run, setup: Setup, tmp_path: Path, content: str
) -> None:
    if content == "NAN_SEQ":  # valid to json.loads, not canonical JSON
        receipt = json.loads(setup.dan_receipt.read_text("utf-8"))
        receipt["entry"]["seq"] = float("nan")
        content = json.dumps(receipt)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = run("customer", "report", "--receipt", str(bad))
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith("error: ") and result.stdout == ""


def test_a_receipt_from_another_vault_exits_5(run: Run, tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "other", keyfile=keyfile) as other:
        admin = other.admin()
        foreign = tmp_path / "foreign.json"
        admin.shred(admin.add_customer(), reason="elsewhere").write(foreign)
    assert run("customer", "report", "--receipt", str(foreign)).exit_code == 5


def test_customer_report_through_a_receipt_without_export_exits_3(run: Run, setup: Setup) -> None:
    result = run(
        "customer", "report", "--receipt", str(setup.dan_receipt), token=setup.tokens["olga"]
    )
    assert result.exit_code == 3 and result.stdout == ""


# -- no secrets in a subject report file -------------------------------------------------------

PASSPHRASE = "lantern orbit 7731 copper"
ROOT_KEY_VERSION = 0  # the root key wraps KEKs and signing seeds as version 0


def renderings(secret: bytes) -> list[str]:
    """The ways key bytes usually leak into text, for the key and its first 8 bytes."""
    out = []
    for part in (secret, secret[:8]):
        out += [
            part.hex(),
            part.hex().upper(),
            repr(part)[2:-1],
            part.decode("latin-1"),
            base64.b64encode(part).decode(),
        ]
    return out


def key_material(setup: Setup, vault_id: str, customers: list[str]) -> list[bytes]:
    """The keyfile's key, every KEK, the signing seed and the customers' DEKs, unwrapped
    by hand from keys.db."""
    root = load_keyfile(setup.keyfile)
    store = KeyStore.open(setup.root / "keys.db")
    try:
        unwrap_root = Envelope(derive_subkey(root, ROOT_WRAP, vault_id), ROOT_KEY_VERSION)
        keks = {
            epoch: unwrap_root.open(wrapped, kek_aad(vault_id, epoch))
            for epoch, wrapped in store.epochs().items()
        }
        generation, wrapped_seed, _public = store.signing_seed()
        seed = unwrap_root.open(wrapped_seed, signing_seed_aad(vault_id, generation))
        deks = [
            Envelope(SecretBytes(keks[row.epoch]), row.epoch).open(
                row.wrapped, dek_aad(vault_id, row.customer_id, row.version, row.epoch)
            )
            for row in store.deks(customers)
        ]
    finally:
        store.close()
    assert deks, "the customer has DEKs to look for"
    return [root.reveal(), *keks.values(), seed, *deks]


def leaks(path: Path, secrets: list[bytes], texts: list[str]) -> list[str]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    found = [s.hex() for s in secrets if s in raw]
    found += [r for s in secrets for r in renderings(s) if r in text]
    return found + [t for t in texts if t in text]


def test_subject_report_files_hold_no_secrets(run: Run, setup: Setup, tmp_path: Path) -> None:
    dora = setup.tokens["dora"]
    files = []
    for name, args in [
        ("alice.json", [setup.alice]),
        ("alice.md", [setup.alice, "--format", "md"]),
        ("dan.json", ["--receipt", str(setup.dan_receipt)]),
        ("dan.md", ["--receipt", str(setup.dan_receipt), "--format", "md"]),
    ]:
        out = tmp_path / name
        result = run("customer", "report", *args, "--out", str(out), token=dora)
        assert result.exit_code == 0, result.output
        files.append(out)
    vault_id = json.loads(files[0].read_text("utf-8"))["vault"]
    secrets = key_material(setup, vault_id, [setup.alice])
    tokens = [*setup.tokens.values(), *(t.split("_", 2)[2] for t in setup.tokens.values())]
    for out in files:
        assert leaks(out, secrets, [*tokens, "token_hash"]) == [], out.name
    # The scan finds what is there: the report does carry alice's phone and the key.
    assert ALICE["phone"] in files[1].read_text("utf-8")
    assert leaks(files[0], [setup.public_key], []) != []


def test_a_passphrase_vaults_subject_report_files_hold_no_passphrase(tmp_path: Path) -> None:
    root = tmp_path / "pvault"
    with Vault.create(root, passphrase=PASSPHRASE.encode()) as vault:
        admin = vault.admin()
        vault.declare_kind("profile", fields=["name", "phone"], purposes=["service"])
        carol = admin.add_customer(ref="C-3")
        admin.put(carol, "profile", ALICE, purpose="service")
    env = {
        "SHREDVAULT_VAULT": str(root),
        "SHREDVAULT_PASSPHRASE": PASSPHRASE,
        "SHREDVAULT_KEYFILE": None,
        "SHREDVAULT_DATA_URL": None,
        "SHREDVAULT_TOKEN": None,
    }
    runner = CliRunner()
    for name, fmt in (("carol.json", "json"), ("carol.md", "md")):
        out = tmp_path / name
        args = ["customer", "report", carol, "--format", fmt, "--out", str(out)]
        result = runner.invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        text = out.read_text("utf-8")
        assert ALICE["name"] in text  # the report itself is there
        secret = PASSPHRASE.encode()
        assert [r for r in renderings(secret) if r in text] == [], name
        assert PASSPHRASE not in result.output


# -- audit query -------------------------------------------------------------------------------


def test_audit_query_json_names_customers_and_records(run: Run, setup: Setup) -> None:
    result = ok_json(run("audit", "query", "--actor", "olga", "--json", token=setup.tokens["ada"]))
    assert result["filters"] == {"actor": "olga"}
    assert result["customers"] == [
        {
            "customer": setup.alice,
            "records": sorted(setup.alice_records),
            "actions": {"customer.add": 1, "record.get": 1, "record.put": 2},
        }
    ]
    assert result["entries_about_shredded_customers"] == 2  # dan's customer.add and put
    text = json.dumps(result, ensure_ascii=False)
    assert setup.dan not in text
    assert [v for v in [*ALICE.values(), *DAN.values()] if v in text] == []


def test_audit_query_text_output(run: Run, setup: Setup) -> None:
    result = run("audit", "query", "--action", "record.get", token=setup.tokens["ada"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["entries", "1"]
    pairs = {line.rsplit(maxsplit=1)[0].strip(): line.split()[-1] for line in lines[:5]}
    assert pairs["customers touched"] == "1"
    assert pairs["entries about shredded customers"] == "0"
    assert any(line.startswith(setup.alice) and "record.get 1" in line for line in lines)


def test_audit_query_empty_window(run: Run) -> None:
    result = ok_json(
        run("audit", "query", "--since", "2000-01-01T00:00:00.000000Z", "--until",
            "2000-01-02T00:00:00.000000Z", "--json")
    )  # fmt: skip
    assert result["entries"] == 0 and result["customers"] == []


def test_audit_query_by_outcome_and_role(run: Run, setup: Setup) -> None:
    assert run("customer", "report", setup.alice, token=setup.tokens["olga"]).exit_code == 3
    result = ok_json(run("audit", "query", "--outcome", "denied", "--role", "operator", "--json"))
    assert result["per_action"] == {"customer.report": 1}


def test_audit_query_rejects_an_unknown_outcome_as_usage(run: Run) -> None:
    assert run("audit", "query", "--outcome", "perhaps").exit_code == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("--since", "yesterday"), ("--until", "2027-13-01T00:00:00Z"), ("--since", "")],
)
def test_audit_query_rejects_a_malformed_time_as_usage(
    run: Run, setup: Setup, option: str, value: str
) -> None:
    before = _log_length(setup)
    result = run("audit", "query", option, value, "--json")
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "RFC 3339" in result.stderr
    assert result.stdout == ""
    assert _log_length(setup) == before  # refused before the vault was opened


def _log_length(setup: Setup) -> int:
    with Auditor.open(setup.root) as auditor:
        return len(list(auditor.entries()))


def test_audit_query_text_lists_the_record_ids_per_customer(run: Run, setup: Setup) -> None:
    result = run("audit", "query", "--actor", "olga", token=setup.tokens["ada"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("records touched, by customer:")
    assert lines[start + 1].strip() == setup.alice
    listed = " ".join(lines[start + 2 :]).split()
    assert sorted(listed) == sorted(setup.alice_records)
    assert setup.dan not in result.stdout


def test_audit_query_text_warns_when_truncated(run: Run, setup: Setup) -> None:
    event = Event("bulk", "operator", "record.get", purpose="service", detail={"kind": "profile"})
    with Vault.open(setup.root, keyfile=setup.keyfile) as vault:

        def work(conn: Any, head: Any) -> None:
            for _ in range(11):
                head, _ = append(conn, vault._ctx.data, head, [event] * 10_000, vault._ctx.clock())

        vault._ctx.data.run(work)
    result = run("audit", "query", "--actor", "bulk", token=setup.tokens["ada"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("WARNING: truncated")
    assert "100,000 entries" in first and "Narrow the window" in first
    assert "WARNING: truncated" in result.stderr
    as_json = ok_json(run("audit", "query", "--actor", "bulk", "--json"))
    assert as_json["truncated"] is True and as_json["entries"] == 100_000
    untruncated = run("audit", "query", "--actor", "olga")
    assert "WARNING" not in untruncated.output


def test_audit_query_as_operator_exits_3(run: Run, setup: Setup) -> None:
    assert run("audit", "query", "--json", token=setup.tokens["olga"]).exit_code == 3


# -- audit report ------------------------------------------------------------------------------


def test_audit_report_json(run: Run, setup: Setup) -> None:
    report = ok_json(run("audit", "report", token=setup.tokens["ada"]))
    assert report["type"] == "shredvault-audit-report"
    assert report["customers"]["shredded"] == 1 and report["shreds"] == 1
    assert [p["name"] for p in report["principals"]] == ["ada", "dora", "olga"]
    assert report["log"]["ok"] is True
    text = json.dumps(report)
    assert [t for t in setup.tokens.values() if t in text] == []


def test_audit_report_markdown_to_an_owner_only_file(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    out = tmp_path / "inspector.md"
    result = run("audit", "report", "--format", "md", "--out", str(out), token=setup.tokens["ada"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    md = out.read_text("utf-8")
    assert md.startswith("# Audit report — vault ")
    assert "- chain: **verifies**" in md
    assert "| olga | operator | active |" in md
    assert (
        run("audit", "report", "--out", str(out)).exit_code == 2
    )  # exists now: refused before any work
    assert out.read_text("utf-8") == md


def test_audit_report_as_operator_exits_3(run: Run, setup: Setup) -> None:
    result = run("audit", "report", "--format", "md", token=setup.tokens["olga"])
    assert result.exit_code == 3 and result.stdout == ""


# -- the console script in a real process -------------------------------------------------------


def shredvault(
    setup: Setup, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("shredvault")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_VAULT=str(setup.root), SHREDVAULT_KEYFILE=str(setup.keyfile))
    if token is not None:
        env["SHREDVAULT_TOKEN"] = token
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_console_script_reports_and_exit_codes(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "subject.md"
    made = shredvault(
        setup, "customer", "report", setup.alice, "--format", "md", "--out", str(out),
        token=setup.tokens["dora"],
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f"| name | {ALICE['name']} |" in out.read_text("utf-8")

    denied = shredvault(setup, "audit", "report", "--json", token=setup.tokens["olga"])
    assert denied.returncode == 3, denied.stderr
    assert setup.tokens["olga"] not in denied.stdout + denied.stderr

    gone = shredvault(setup, "customer", "report", setup.dan, token=setup.tokens["dora"])
    assert gone.returncode == 4 and gone.stdout == ""
