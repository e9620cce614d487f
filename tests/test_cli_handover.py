"""``handover keygen|export|import|complete`` end to end, each command a real process
(issue 9): a seller with consenting and non-consenting customers hands the consenting
ones to an acquirer, who reads them and never the others; the seller then shreds them
with receipts that verify. Tampered, misdirected, re-signed and replayed packages exit 5
and leave the acquirer's data as it was; interrupted exports and imports leave nothing
half-done and can be run again."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from shredvault.keys import generate_keyfile
from shredvault.vault import parse_public_key, verify_completion
from shredvault.vault.canonical import canonical

PURPOSE = "service"
KEY_PASSPHRASE = "acquirer lantern 4471 harbour"
NAMES = {"ana": "Ana Lima", "bo": "Bo Nilsson", "cy": "Cyrus Farahani"}
CRASH_EXIT = 97


def console() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


@dataclass(frozen=True)
class World:
    base: Path
    keyfile: Path
    seller: Path
    acquirer: Path
    pub: Path
    key: Path
    ana: str  # consents to transfer, two records
    bo: str  # consents to transfer, one record
    cy: str  # does not consent
    records: dict[str, list[str]]


def sh(
    world: World | None, *args: str, vault: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    extra: dict[str, str] = {"SHREDVAULT_HANDOVER_PASSPHRASE": KEY_PASSPHRASE}
    if world is not None:
        extra["SHREDVAULT_KEYFILE"] = str(world.keyfile)
    if vault is not None:
        extra["SHREDVAULT_VAULT"] = str(vault)
    return subprocess.run(
        [*console(), *args],
        input="",
        capture_output=True,
        text=True,
        env={**base, **extra, **env},
        cwd=world.base if world is not None else None,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("handover-cli")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    stub = World(base, keyfile, base / "seller", base / "acquirer", Path(), Path(), "", "", "", {})
    seller, acquirer = stub.seller, stub.acquirer
    for root in (seller, acquirer):
        ok(sh(stub, "init", str(root)))
        ok(
            sh(
                stub,
                "kind",
                "declare",
                "profile",
                "--fields",
                "name,phone",
                "--purposes",
                PURPOSE,
                vault=root,
            )
        )
    people: dict[str, str] = {}
    recs: dict[str, list[str]] = {}
    for who, consent in (("ana", "yes"), ("bo", "yes"), ("cy", "no")):
        cid = ok(sh(stub, "customer", "add", "--consent", f"transfer={consent}", vault=seller))
        people[who] = cid.stdout.strip()
        put = sh(
            stub,
            "record",
            "put",
            people[who],
            "profile",
            "--purpose",
            PURPOSE,
            "--field",
            f"name={NAMES[who]}",
            vault=seller,
        )
        recs[who] = [ok(put).stdout.strip()]
    extra = sh(
        stub,
        "record",
        "put",
        people["ana"],
        "profile",
        "--purpose",
        PURPOSE,
        "--field",
        "phone=+1 555 0100",
        vault=seller,
    )
    recs["ana"].append(ok(extra).stdout.strip())
    ok(sh(stub, "handover", "keygen", str(base / "buyer")))
    ok(sh(stub, "audit", "pubkey", vault=seller))
    (base / "seller.pub").write_text(sh(stub, "audit", "pubkey", vault=seller).stdout)
    return World(
        base,
        keyfile,
        seller,
        acquirer,
        base / "buyer.pub",
        base / "buyer.key",
        people["ana"],
        people["bo"],
        people["cy"],
        recs,
    )


@pytest.fixture
def world(template: World, tmp_path: Path) -> World:
    """Private copies of both vaults (same keyfile and acquirer key pair)."""
    for name in ("seller", "acquirer"):
        shutil.copytree(template.base / name, tmp_path / name)
    for name in ("buyer.pub", "buyer.key", "seller.pub"):
        shutil.copy2(template.base / name, tmp_path / name)
    return World(
        tmp_path,
        template.keyfile,
        tmp_path / "seller",
        tmp_path / "acquirer",
        tmp_path / "buyer.pub",
        tmp_path / "buyer.key",
        template.ana,
        template.bo,
        template.cy,
        template.records,
    )


def export(world: World, out: str = "package.svho", *extra: str, **env: str) -> Any:
    result = sh(
        world,
        "handover",
        "export",
        "--to",
        str(world.pub),
        "--out",
        out,
        "--json",
        *extra,
        vault=world.seller,
        **env,
    )
    return result


def import_(world: World, package: Path, *extra: str, trust: bool = True, **env: str) -> Any:
    """``handover import`` into the acquirer, pinning the seller's key unless ``extra``
    chooses otherwise (or ``trust`` is False)."""
    chosen = {"--seller-pubkey", "--accept-unverified-seller"} & set(extra)
    pinned = ("--seller-pubkey", str(world.base / "seller.pub")) if trust and not chosen else ()
    return sh(
        world,
        "handover",
        "import",
        str(package),
        "--key",
        str(world.key),
        *pinned,
        *extra,
        vault=world.acquirer,
        **env,
    )


def state(root: Path) -> dict[str, Any]:
    """Customers, records and the log's actions, read straight from data.db."""
    conn = sqlite3.connect(root / "data.db")
    try:
        return {
            "customers": sorted(r[0] for r in conn.execute("SELECT id FROM sv_customers")),
            "records": sorted(r[0] for r in conn.execute("SELECT id FROM sv_records")),
            "actions": [r[0] for r in conn.execute("SELECT action FROM sv_log ORDER BY seq")],
        }
    finally:
        conn.close()


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Nothing but the unlock of the failed command (and its closing checkpoint)."""
    assert after["customers"] == before["customers"]
    assert after["records"] == before["records"]
    new = after["actions"][len(before["actions"]) :]
    assert after["actions"][: len(before["actions"])] == before["actions"]
    assert set(new) <= {"vault.unlock"}


# -- the whole story ------------------------------------------------------------------------


def test_consenting_customers_move_to_the_acquirer_and_are_then_shredded_at_the_seller(
    world: World,
) -> None:
    exported = json.loads(ok(export(world)).stdout)
    assert (exported["customers"], exported["records"], exported["excluded"]) == (2, 3, 1)
    package = world.base / "package.svho"

    imported = import_(world, package, "--seller-pubkey", str(world.base / "seller.pub"), "--json")
    result = json.loads(ok(imported).stdout)
    assert sorted(result["customers"]) == sorted([world.ana, world.bo])
    assert result["seller_key_trusted"] is True
    listing = ok(
        sh(world, "record", "list", world.ana, "--purpose", PURPOSE, "--json", vault=world.acquirer)
    )
    assert {r["fields"].get("name") for r in json.loads(listing.stdout)} == {NAMES["ana"], None}
    never = sh(world, "customer", "show", world.cy, vault=world.acquirer)
    assert never.returncode == 4
    assert NAMES["cy"] not in package.read_text("latin-1")

    completed = sh(
        world,
        "handover",
        "complete",
        str(package),
        "--receipts",
        "receipts",
        "--summary",
        "summary.json",
        "--yes",
        "--json",
        vault=world.seller,
    )
    assert json.loads(ok(completed).stdout)["counts"]["shredded"] == 2
    for cid in (world.ana, world.bo):
        receipt = world.base / "receipts" / f"{cid}.json"
        ok(sh(None, "receipt", "verify", str(receipt), "--pubkey", str(world.base / "seller.pub")))
        gone = sh(world, "record", "list", cid, "--purpose", PURPOSE, vault=world.seller)
        assert gone.returncode == 4
    kept = sh(world, "record", "list", world.cy, "--purpose", PURPOSE, vault=world.seller)
    assert NAMES["cy"] in ok(kept).stdout
    summary = json.loads((world.base / "summary.json").read_text())
    assert summary["summary"]["package"] == exported["package"]
    # The acquirer's copy is untouched by the seller's shred.
    still = sh(world, "record", "list", world.bo, "--purpose", PURPOSE, vault=world.acquirer)
    assert NAMES["bo"] in ok(still).stdout
    for step in (exported, result):
        assert KEY_PASSPHRASE not in json.dumps(step)


def test_the_seller_sells_then_deregisters_and_keeps_proof(world: World) -> None:
    """The whole story: export, import, complete, then decommission the seller; the
    acquirer keeps serving the transferred customers, the seller's keystore keeps no key
    and its certificate and receipts verify offline."""
    ok(export(world))
    package = world.base / "package.svho"
    pub = str(world.base / "seller.pub")
    ok(import_(world, package, "--seller-pubkey", pub))
    complete = ["handover", "complete", str(package), "--receipts", "receipts", "--yes"]
    ok(sh(world, *complete, "--summary", "summary.json", vault=world.seller))
    cert = world.base / "cert.json"
    decommission = ["decommission", "--reason", "business sold", "--yes"]
    ok(sh(world, *decommission, "--certificate", str(cert), vault=world.seller))
    log_file = world.base / "log.jsonl"
    log_file.write_text(ok(sh(None, "audit", "export", vault=world.seller)).stdout)
    ok(sh(None, "certificate", "verify", str(cert), "--pubkey", pub, "--log", str(log_file)))
    for cid in (world.ana, world.bo):
        receipt = world.base / "receipts" / f"{cid}.json"
        ok(sh(None, "receipt", "verify", str(receipt), "--pubkey", pub))
    conn = sqlite3.connect(world.seller / "keys.db")
    try:
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("deks", "kek_epochs", "signing")
        ]
    finally:
        conn.close()
    assert counts == [0, 0, 0]
    refused = sh(world, "customer", "list", vault=world.seller)
    assert refused.returncode == 4
    # The acquirer still serves what it bought; the seller's third customer never left.
    bought = sh(world, "record", "list", world.ana, "--purpose", PURPOSE, vault=world.acquirer)
    assert NAMES["ana"] in ok(bought).stdout
    assert world.cy not in ok(sh(world, "customer", "list", vault=world.acquirer)).stdout


def test_import_without_a_trusted_seller_key_exits_7_unless_overridden_and_logged(
    world: World,
) -> None:
    ok(export(world))
    package = world.base / "package.svho"
    before = state(world.acquirer)
    refused = import_(world, package, trust=False)
    assert refused.returncode == 7, refused.stderr
    assert "no trusted key" in refused.stderr and "--seller-pubkey" in refused.stderr
    assert "Traceback" not in refused.stderr
    after = state(world.acquirer)
    assert (after["customers"], after["records"]) == (before["customers"], before["records"])
    assert "handover.import" not in after["actions"]
    imported = ok(import_(world, package, "--accept-unverified-seller"))
    assert "self-asserted" in imported.stdout and "warning" in imported.stderr
    assert "valid" not in imported.stdout
    conn = sqlite3.connect(world.acquirer / "data.db")
    try:
        (body,) = conn.execute(
            "SELECT body FROM sv_log WHERE action = 'handover.import'"
        ).fetchone()
    finally:
        conn.close()
    detail = json.loads(body)["detail"]
    assert detail["seller_key_trusted"] is False and detail["seller_key_override"] is True


def test_complete_runs_again_after_an_interruption_keeping_the_receipts(world: World) -> None:
    ok(export(world))
    package = str(world.base / "package.svho")
    crashed = sh(
        world,
        "handover",
        "complete",
        package,
        "--receipts",
        "receipts",
        "--summary",
        "summary.json",
        "--yes",
        vault=world.seller,
        SHREDVAULT_CRASH_AT="shred:after-finish",
    )
    assert crashed.returncode == CRASH_EXIT
    again = sh(
        world,
        "handover",
        "complete",
        package,
        "--receipts",
        "receipts",
        "--summary",
        "summary.json",
        "--yes",
        "--json",
        vault=world.seller,
    )
    counts = json.loads(ok(again).stdout)["counts"]
    assert (counts["shredded"], counts["already_shredded"]) == (1, 1)
    # The receipt the crash kept from the first customer was recovered at open.
    recovered = list((world.seller / "recovered-receipts").glob("*.json"))
    assert len(recovered) == 1


def test_complete_runs_again_when_done_and_replaces_only_its_own_summary(
    world: World,
) -> None:
    ok(export(world))
    package = str(world.base / "package.svho")
    args = ["handover", "complete", package, "--receipts", "receipts", "--yes", "--json"]
    ok(sh(world, *args, "--summary", "summary.json", vault=world.seller))
    again = json.loads(ok(sh(world, *args, "--summary", "summary.json", vault=world.seller)).stdout)
    assert (again["counts"]["shredded"], again["counts"]["already_shredded"]) == (0, 2)
    summary = json.loads((world.base / "summary.json").read_text())
    key = parse_public_key((world.base / "seller.pub").read_text().strip())
    assert verify_completion(summary, key)
    assert sorted(c["customer"] for c in summary["summary"]["customers"]) == sorted(
        [world.ana, world.bo]
    )
    # A file that is not this package's summary is never replaced.
    other = world.base / "notes.json"
    other.write_text('{"mine": true}\n')
    refused = sh(world, *args, "--summary", str(other), vault=world.seller)
    assert refused.returncode == 2 and other.read_text() == '{"mine": true}\n'


def test_complete_without_yes_and_without_a_terminal_does_nothing(world: World) -> None:
    ok(export(world))
    before = state(world.seller)
    refused = sh(
        world,
        "handover",
        "complete",
        str(world.base / "package.svho"),
        "--receipts",
        "r",
        "--summary",
        "s.json",
        vault=world.seller,
    )
    assert refused.returncode == 2
    assert state(world.seller) == before


def test_the_acquirer_cannot_complete_a_package_it_did_not_export(world: World) -> None:
    ok(export(world))
    ok(import_(world, world.base / "package.svho"))
    refused = sh(
        world,
        "handover",
        "complete",
        str(world.base / "package.svho"),
        "--receipts",
        "r",
        "--summary",
        "s.json",
        "--yes",
        vault=world.acquirer,
    )
    assert refused.returncode == 5


# -- keys -----------------------------------------------------------------------------------


def test_a_wrong_key_passphrase_exits_6_and_changes_nothing(world: World) -> None:
    ok(export(world))
    before = state(world.acquirer)
    wrong = import_(
        world, world.base / "package.svho", SHREDVAULT_HANDOVER_PASSPHRASE="not the passphrase"
    )
    assert wrong.returncode == 6
    assert "not the passphrase" not in wrong.stderr + wrong.stdout
    assert state(world.acquirer) == before


def test_keygen_refuses_to_overwrite_a_key(world: World) -> None:
    again = sh(world, "handover", "keygen", str(world.base / "buyer"))
    assert again.returncode == 1
    assert "exists" in again.stderr


# -- refusals -------------------------------------------------------------------------------


def frames(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    out, at = [], 8
    while at < len(data) - 16:
        kind, length = struct.unpack_from(">BI", data, at)
        out.append((kind, data[at + 5 : at + 5 + length]))
        at += 5 + length
    return out


def rewrite(path: Path, parts: list[tuple[int, bytes]]) -> None:
    out = bytearray(b"SVHOPKG1")
    manifest_at = 0
    for kind, payload in parts:
        if kind == 4:
            manifest_at = len(out)
        out += struct.pack(">BI", kind, len(payload)) + payload
    path.write_bytes(bytes(out + struct.pack(">Q", manifest_at) + b"SVHOEND1"))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def swap_record(path: Path) -> None:
    parts = frames(path)
    first = next(i for i, (k, _) in enumerate(parts) if k == 2)
    moved = parts.pop(first)
    second_customer = [i for i, (k, _) in enumerate(parts) if k == 3][1]
    parts.insert(second_customer, moved)
    rewrite(path, parts)


def resign(path: Path) -> None:
    parts = frames(path)
    idx = next(i for i, (k, _) in enumerate(parts) if k == 4)
    manifest = json.loads(parts[idx][1])
    manifest["excluded"] = 0
    body = canonical(manifest)
    parts[idx] = (4, body)
    parts[idx + 1] = (5, bytes(SigningKey.generate().sign(body).signature))
    rewrite(path, parts)


@pytest.mark.parametrize("tamper", [flip_byte, swap_record, resign])
def test_a_tampered_package_exits_5_and_the_acquirer_is_unchanged(
    world: World, tamper: Any
) -> None:
    ok(export(world))
    package = world.base / "package.svho"
    tamper(package)
    before = state(world.acquirer)
    refused = import_(world, package)
    assert refused.returncode == 5, refused.stderr
    assert_unchanged(before, state(world.acquirer))


def test_a_package_for_another_recipient_exits_5(world: World) -> None:
    ok(sh(world, "handover", "keygen", str(world.base / "other")))
    other = sh(
        world,
        "handover",
        "export",
        "--to",
        str(world.base / "other.pub"),
        "--out",
        "other.svho",
        vault=world.seller,
    )
    ok(other)
    before = state(world.acquirer)
    refused = import_(world, world.base / "other.svho")
    assert refused.returncode == 5 and "another recipient" in refused.stderr
    assert_unchanged(before, state(world.acquirer))


def test_importing_the_same_package_twice_exits_5_the_second_time(world: World) -> None:
    ok(export(world))
    ok(import_(world, world.base / "package.svho"))
    before = state(world.acquirer)
    replay = import_(world, world.base / "package.svho")
    assert replay.returncode == 5 and "already imported" in replay.stderr
    assert_unchanged(before, state(world.acquirer))


# -- interruptions --------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["handover:export-batch", "handover:before-log"])
def test_an_interrupted_export_leaves_no_package_and_no_handover_entries(
    world: World, point: str
) -> None:
    crashed = export(world, SHREDVAULT_CRASH_AT=point)
    assert crashed.returncode == CRASH_EXIT
    assert not (world.base / "package.svho").exists()
    actions = state(world.seller)["actions"]
    assert "customer.handover" not in actions and "handover.export" not in actions
    again = json.loads(ok(export(world)).stdout)
    assert again["customers"] == 2
    assert [p.name for p in world.base.glob(".package.svho*")] == []
    assert state(world.seller)["actions"].count("customer.handover") == 2


def test_an_interrupted_import_writes_nothing_and_can_be_run_again(world: World) -> None:
    ok(export(world))
    package = world.base / "package.svho"
    before = state(world.acquirer)
    crashed = import_(world, package, SHREDVAULT_CRASH_AT="handover:import-customer")
    assert crashed.returncode == CRASH_EXIT
    assert_unchanged(before, state(world.acquirer))
    ok(import_(world, package))
    after = state(world.acquirer)
    assert set(after["customers"]) == set(before["customers"]) | {world.ana, world.bo}
    listing = sh(world, "record", "list", world.ana, "--purpose", PURPOSE, vault=world.acquirer)
    assert NAMES["ana"] in ok(listing).stdout


def test_a_crash_between_the_log_and_the_rename_over_reports_and_a_rerun_recovers(
    world: World,
) -> None:
    """The one-link window: entries committed, no package at OUT (the log says more was
    disclosed than was, never less). Exporting again cleans up and works."""
    crashed = export(world, SHREDVAULT_CRASH_AT="handover:after-log")
    assert crashed.returncode == CRASH_EXIT
    assert not (world.base / "package.svho").exists()
    assert state(world.seller)["actions"].count("handover.export") == 1
    again = json.loads(ok(export(world)).stdout)
    assert (world.base / "package.svho").exists() and again["customers"] == 2
    assert [p.name for p in world.base.glob(".package.svho*")] == []
