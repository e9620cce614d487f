"""``shred``, ``compact``, ``customer hold|release`` and ``receipt verify``: a shred asks
first, issues a receipt that verifies offline (0) and fails when altered (5), leaves the
customer unreadable (4), and never touches a customer under legal hold."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.keys import generate_keyfile

from clirun import Run, make_run

NAME = "Ruth Okafor"
REASON = "erasure request #1182"


@dataclass(frozen=True)
class Setup:
    """A keyfile vault with a profile kind, one customer and one record."""

    root: Path
    keyfile: Path
    customer: str
    record: str


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("shred")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    root = base / "vault"
    run = make_run(root, keyfile)
    assert run("init", str(root)).exit_code == 0
    assert (
        run("kind", "declare", "profile", "--fields", "name", "--purposes", "service").exit_code
        == 0
    )
    customer = run("customer", "add", "--ref", "crm-9").stdout.strip()
    put = run(
        "record", "put", customer, "profile", "--purpose", "service", "--field", f"name={NAME}"
    )
    assert put.exit_code == 0, put.output
    return Setup(root, keyfile, customer, put.stdout.strip())


@pytest.fixture
def setup(template: Setup, tmp_path: Path) -> Setup:
    """A private copy of the template vault (same keyfile)."""
    root = tmp_path / "vault"
    shutil.copytree(template.root, root)
    return Setup(root, template.keyfile, template.customer, template.record)


@pytest.fixture
def run(setup: Setup) -> Run:
    return make_run(setup.root, setup.keyfile)


def read(run: Run, setup: Setup) -> Result:
    return run("record", "get", setup.customer, setup.record, "--purpose", "service")


def shred_to(run: Run, setup: Setup, receipt: Path) -> Result:
    result = run("shred", setup.customer, "--reason", REASON, "--yes", "--receipt", str(receipt))
    assert result.exit_code == 0, result.output
    return result


# -- shred one customer -----------------------------------------------------------------


def test_shred_with_yes_writes_a_receipt_that_verifies(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.json"
    result = shred_to(run, setup, receipt)
    assert f"shredded {setup.customer}" in result.stdout
    assert stat.S_IMODE(receipt.stat().st_mode) == 0o600
    assert json.loads(receipt.read_text())["customer"] == setup.customer
    offline = {"SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": None}
    unpinned = run("receipt", "verify", str(receipt), **offline)
    assert unpinned.exit_code == 7, unpinned.output  # no trusted key: never "valid"
    assert unpinned.stdout.startswith("NOT VERIFIED") and "--pubkey" in unpinned.stderr
    asserted = run("receipt", "verify", str(receipt), "--trust-embedded-key", **offline)
    assert asserted.exit_code == 0, asserted.output
    assert asserted.stdout.startswith("self-asserted") and "valid" not in asserted.stdout
    assert "--pubkey" in asserted.stderr  # says the key came from the receipt itself
    pub = tmp_path / "vault.pub"
    pub.write_text(run("audit", "pubkey").stdout)
    verified = run("receipt", "verify", str(receipt), "--pubkey", str(pub), **offline)
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("valid") and setup.customer in verified.stdout


def test_reading_a_shredded_customer_exits_4(run: Run, setup: Setup, tmp_path: Path) -> None:
    shred_to(run, setup, tmp_path / "r.json")
    result = read(run, setup)
    assert result.exit_code == 4
    assert "shredded" in result.stderr
    assert NAME not in result.output


def test_shredding_twice_exits_4(run: Run, setup: Setup, tmp_path: Path) -> None:
    shred_to(run, setup, tmp_path / "r.json")
    again = run("shred", setup.customer, "--reason", REASON, "--yes")
    assert again.exit_code == 4


def test_without_yes_and_without_a_terminal_nothing_is_shredded(run: Run, setup: Setup) -> None:
    result = run("shred", setup.customer, "--reason", REASON)
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert read(run, setup).exit_code == 0


@pytest.mark.parametrize(("answer", "code", "readable"), [("n", 1, 0), ("y", 0, 4)])
def test_on_a_terminal_shred_asks_first(
    run: Run, setup: Setup, monkeypatch: pytest.MonkeyPatch, answer: str, code: int, readable: int
) -> None:
    monkeypatch.setattr("shredvault.cli.confirm.stdin_is_terminal", lambda: True)
    result = run("shred", setup.customer, "--reason", REASON, input=f"{answer}\n")
    assert result.exit_code == code
    assert f"Shred customer {setup.customer}?" in result.stderr
    assert read(run, setup).exit_code == readable


def test_without_receipt_the_receipt_is_stdout_and_the_summary_stderr(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    result = run("shred", setup.customer, "--reason", REASON, "--yes")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["type"] == "shredvault-erasure-receipt"
    assert f"shredded {setup.customer}" in result.stderr
    saved = tmp_path / "from-stdout.json"
    saved.write_text(result.stdout)
    assert run("receipt", "verify", str(saved), "--trust-embedded-key").exit_code == 0


def test_receipt_dash_means_stdout_and_writes_no_file(
    run: Run, setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("shred", setup.customer, "--reason", REASON, "--yes", "--receipt", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["customer"] == setup.customer
    assert not (tmp_path / "-").exists()


def test_shred_json_reports_the_entry_and_carries_the_receipt(run: Run, setup: Setup) -> None:
    result = run("shred", setup.customer, "--reason", REASON, "--yes", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["customer"] == setup.customer and summary["records"] == 1
    assert summary["keys_destroyed"] == 1 and summary["receipt_file"] is None
    assert summary["receipt"]["entry"]["seq"] == summary["seq"]


def test_an_existing_receipt_file_is_refused_before_anything_is_shredded(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    existing = tmp_path / "r.json"
    existing.write_text("keep me")
    result = run("shred", setup.customer, "--reason", REASON, "--yes", "--receipt", str(existing))
    assert result.exit_code == 2
    assert existing.read_text() == "keep me"
    assert read(run, setup).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--reason", REASON, "--yes"],  # neither CUSTOMER nor --expired
        ["CUSTOMER", "--expired", "--yes"],  # both
        ["CUSTOMER", "--yes"],  # no reason
        ["CUSTOMER", "--reason", REASON, "--yes", "--receipt-dir", "d"],
    ],
    ids=["neither", "both", "no-reason", "receipt-dir-for-one"],
)
def test_malformed_shred_commands_are_usage_errors(run: Run, setup: Setup, args: list[str]) -> None:
    args = [setup.customer if a == "CUSTOMER" else a for a in args]
    assert run("shred", *args).exit_code == 2
    assert read(run, setup).exit_code == 0


# -- legal hold -------------------------------------------------------------------------


def test_a_customer_under_legal_hold_is_not_shredded(run: Run, setup: Setup) -> None:
    assert run("customer", "hold", setup.customer).exit_code == 0
    assert json.loads(run("customer", "show", setup.customer, "--json").stdout)["legal_hold"]
    result = run("shred", setup.customer, "--reason", REASON, "--yes")
    assert result.exit_code == 1
    assert "legal hold" in result.stderr and result.stdout == ""
    assert read(run, setup).exit_code == 0


def test_after_release_the_customer_can_be_shredded(run: Run, setup: Setup) -> None:
    assert run("customer", "hold", setup.customer).exit_code == 0
    assert run("customer", "release", setup.customer).exit_code == 0
    assert run("shred", setup.customer, "--reason", REASON, "--yes").exit_code == 0


def test_hold_and_release_json_state_the_legal_hold(run: Run, setup: Setup) -> None:
    held = run("customer", "hold", setup.customer, "--json")
    assert held.exit_code == 0, held.output
    assert json.loads(held.stdout) == {"customer": setup.customer, "legal_hold": True}
    assert json.loads(run("customer", "show", setup.customer, "--json").stdout)["legal_hold"]
    released = run("customer", "release", setup.customer, "--json")
    assert released.exit_code == 0, released.output
    assert json.loads(released.stdout) == {"customer": setup.customer, "legal_hold": False}
    shown = json.loads(run("customer", "show", setup.customer, "--json").stdout)
    assert shown["legal_hold"] is False


def test_retain_changes_the_retention_date_that_shred_expired_follows(
    run: Run, setup: Setup
) -> None:
    later = run("customer", "add", "--retain-until", "2999-01-01").stdout.strip()
    changed = run("customer", "retain", later, "--until", "2000-06-01", "--json")
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout) == {
        "customer": later,
        "retain_until": "2000-06-01T00:00:00.000000Z",
    }
    preview = json.loads(run("shred", "--expired", "--dry-run", "--json").stdout)
    assert list(preview["due"]) == [later]
    forever = run("customer", "retain", later, "--forever")
    assert forever.exit_code == 0 and "shredded on request" in forever.stdout
    assert json.loads(run("shred", "--expired", "--dry-run", "--json").stdout)["due"] == {}
    assert run("customer", "retain", later).exit_code == 2  # neither option
    assert run("customer", "retain", "cus_" + "a" * 26, "--forever").exit_code == 4


def test_hold_of_an_unknown_customer_exits_4(run: Run, setup: Setup) -> None:
    assert run("customer", "hold", "cus_" + "a" * 26).exit_code == 4


# -- shred --expired --------------------------------------------------------------------


def test_shred_expired_shreds_past_retention_keeps_held_and_writes_receipts(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    past = run("customer", "add", "--retain-until", "2000-01-01").stdout.strip()
    held = run("customer", "add", "--retain-until", "2000-01-01").stdout.strip()
    future = run("customer", "add", "--retain-until", "2999-01-01").stdout.strip()
    assert run("customer", "hold", held).exit_code == 0
    receipts = tmp_path / "receipts"
    result = run("shred", "--expired", "--yes", "--receipt-dir", str(receipts))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in receipts.iterdir()) == [f"{past}.json"]
    assert held in result.stdout and "legal hold" in result.stdout
    checked = run("receipt", "verify", str(receipts / f"{past}.json"), "--trust-embedded-key")
    assert checked.exit_code == 0
    states = {c["id"]: c["state"] for c in json.loads(run("customer", "list", "--json").stdout)}
    assert states == {
        setup.customer: "active",
        past: "shredded",
        held: "active",
        future: "active",
    }


def test_shred_expired_json_lists_shredded_and_held(run: Run) -> None:
    past = run("customer", "add", "--retain-until", "2000-01-01").stdout.strip()
    result = run("shred", "--expired", "--yes", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["customer"] for s in summary["shredded"]] == [past]
    assert summary["held"] == [] and summary["receipts"][0]["customer"] == past


def test_shred_expired_dry_run_lists_and_changes_nothing(run: Run, setup: Setup) -> None:
    past = run("customer", "add", "--retain-until", "2000-01-01").stdout.strip()
    held = run("customer", "add", "--retain-until", "2000-01-02").stdout.strip()
    assert run("customer", "hold", held).exit_code == 0
    result = run("shred", "--expired", "--dry-run")  # no --yes needed: nothing happens
    assert result.exit_code == 0, result.output
    assert "would shred 1" in result.stdout and past in result.stdout
    assert "legal hold" in result.stdout and held in result.stdout
    as_json = run("shred", "--expired", "--dry-run", "--json")
    assert json.loads(as_json.stdout) == {
        "due": {past: "2000-01-01T00:00:00.000000Z"},
        "held": {held: "2000-01-02T00:00:00.000000Z"},
        "refs": {},
    }
    states = {c["id"]: c["state"] for c in json.loads(run("customer", "list", "--json").stdout)}
    assert states == {setup.customer: "active", past: "active", held: "active"}
    assert run("shred", setup.customer, "--dry-run", "--yes").exit_code == 2


def test_shred_expired_without_yes_and_without_a_terminal_exits_2(run: Run) -> None:
    past = run("customer", "add", "--retain-until", "2000-01-01").stdout.strip()
    assert run("shred", "--expired").exit_code == 2
    assert json.loads(run("customer", "show", past, "--json").stdout)["state"] == "active"


# -- compact ----------------------------------------------------------------------------


def test_compact_after_a_shred_finds_no_rows_left_and_exits_0(run: Run, setup: Setup) -> None:
    assert run("shred", setup.customer, "--reason", REASON, "--yes").exit_code == 0
    first = run("compact", "--yes", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["removed"] == 0  # the shred deleted its record row
    again = run("compact", "--yes")
    assert again.exit_code == 0 and "removed 0" in again.stdout


def test_compact_without_yes_and_without_a_terminal_exits_2(run: Run) -> None:
    assert run("compact").exit_code == 2


# -- receipt verify ---------------------------------------------------------------------


@pytest.fixture
def receipt(run: Run, setup: Setup, tmp_path: Path) -> Path:
    path = tmp_path / "receipt.json"
    shred_to(run, setup, path)
    return path


def test_receipt_verify_with_the_vaults_public_key(run: Run, receipt: Path, tmp_path: Path) -> None:
    pubkey = tmp_path / "vault.pub"
    printed = run("audit", "pubkey", SHREDVAULT_KEYFILE=None)
    assert printed.exit_code == 0
    pubkey.write_text(printed.stdout)
    result = run("receipt", "verify", str(receipt), "--pubkey", str(pubkey), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["public_key_source"] == "pubkey"
    assert report["public_key"] == printed.stdout.strip()


def test_receipt_verify_with_another_vaults_key_exits_5(
    run: Run, receipt: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pub"
    other.write_text("ed25519:" + "11" * 32)
    result = run("receipt", "verify", str(receipt), "--pubkey", str(other))
    assert result.exit_code == 5
    assert "wrong key" in result.stdout


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("entry", "detail", "reason"), "no reason at all"),
        (("customer",), "cus_" + "b" * 26),
        (("checkpoint", "checkpoint", "seq"), 1),
    ],
    ids=["reason", "customer", "checkpoint-seq"],
)
def test_an_altered_receipt_exits_5_with_the_reason(
    run: Run, receipt: Path, path: tuple[str, ...], value: object
) -> None:
    document = json.loads(receipt.read_text())
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    receipt.write_text(json.dumps(document))
    result = run("receipt", "verify", str(receipt))
    assert result.exit_code == 5
    assert result.stdout.startswith("INVALID")
    assert result.stderr.startswith("error: ")


def test_a_receipt_that_is_not_json_exits_5_also_with_json_output(run: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{ not json")
    result = run("receipt", "verify", str(junk), "--json")
    assert result.exit_code == 5
    assert json.loads(result.stdout)["reason"] == "malformed"


def test_receipt_verify_needs_no_vault_and_no_credential(receipt: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["receipt", "verify", str(receipt), "--trust-embedded-key"],
        env={"SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": None, "SHREDVAULT_PASSPHRASE": None},
    )
    assert result.exit_code == 0, result.output


# -- a shred a crash interrupted --------------------------------------------------------


def test_a_shred_finished_at_open_leaves_its_receipt_in_the_vault(run: Run, setup: Setup) -> None:
    script = Path(sys.executable).with_name("shredvault")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    crashed = subprocess.run(
        [*command, "shred", setup.customer, "--reason", REASON, "--yes"],
        env={
            **env,
            "SHREDVAULT_VAULT": str(setup.root),
            "SHREDVAULT_KEYFILE": str(setup.keyfile),
            "SHREDVAULT_CRASH_AT": "shred:after-keys",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 97 and crashed.stdout == ""  # killed: no receipt issued
    listed = run("customer", "list", "--json")
    assert listed.exit_code == 0, listed.output
    recovered = setup.root / "recovered-receipts" / f"{setup.customer}.json"
    assert str(recovered.parent) in listed.stderr
    assert stat.S_IMODE(recovered.stat().st_mode) == 0o600
    assert run("receipt", "verify", str(recovered), "--trust-embedded-key").exit_code == 0
    assert read(run, setup).exit_code == 4


# -- the demo ---------------------------------------------------------------------------


def test_the_demo_shreds_a_customer_and_verifies_its_receipt() -> None:
    result = CliRunner().invoke(cli, ["demo", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    shred = summary["shred"]
    assert shred["customer"] == summary["customers"][1]
    assert shred["read_after_shred"] == "ShreddedError"
    assert shred["receipt_verified"] is True and shred["records_unreadable"] == 1
    assert summary["log"]["ok"] is True and summary["log"]["entries"] > shred["seq"]
