"""``demo``: a guided tour in a throw-away vault, end to end, in a second or two.

Creates a vault unlocked by a fresh keyfile, stores three cleaning-service customers'
profiles, shows that no field value is anywhere in the files, crypto-shreds one customer
and checks its erasure receipt offline, then audits the log without the key: live, and
again from an export verified offline.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..vault import (
    Auditor,
    PurposeError,
    ShreddedError,
    Vault,
    create_file,
    format_public_key,
    generate_keyfile,
    load_receipt,
    verify_export,
    verify_receipt,
)
from .exit_codes import CommandError
from .output import json_option, print_json

__all__ = ["demo_command"]

# Invented people. Phone numbers come from ranges set aside for fiction or are clearly
# fake; the addresses are made up.
CUSTOMERS: tuple[tuple[str, Mapping[str, str]], ...] = (
    (
        "crm-10417",
        {
            "name": "王晓梅",
            "phone": "+86 139 0000 4821",
            "address": "上海市徐汇区漕溪北路 88 弄 6 号 1203 室",
        },
    ),
    (
        "crm-10418",
        {
            "name": "Oliver Bennett",
            "phone": "+44 20 7946 0321",
            "address": "Flat 3, 27 Alder Grove, London N16 5QT",
        },
    ),
    (
        "crm-10419",
        {
            "name": "陈志强 (Kevin Chan)",
            "phone": "+1 415 555 0186",
            "address": "1450 Larkspur Avenue, Apt 2B, San Francisco, CA 94110",
        },
    ),
)
KIND = "profile"
FIELDS = ("name", "phone", "address")
PURPOSES = ("service", "billing")
SHRED_INDEX = 1  # the customer who asks to be forgotten
SHRED_REASON = "customer asked to be forgotten (demo)"


@dataclass(slots=True)
class DemoSummary:
    """What the tour did, with the figures it found."""

    workdir: str
    vault: str = ""
    public_key: str = ""
    customers: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    read_back: list[dict[str, Any]] = field(default_factory=list)
    refused_purpose: str = "marketing"
    values_checked: int = 0
    files_scanned: dict[str, int] = field(default_factory=dict)
    plaintext_hits: list[str] = field(default_factory=list)
    refs_found: int = 0
    shredded: str = ""
    shred_seq: int | None = None
    shred_records: int = 0
    read_after_shred: str = ""
    receipt_verified: bool = False
    log_entries: int = 0
    checkpoint_seq: int | None = None
    unsigned_tail: int = 0
    export_entries: int = 0
    export_verified: bool = False
    log_ok: bool = False
    kept: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": self.workdir if self.kept else None,
            "vault": self.vault,
            "public_key": self.public_key,
            "customers": self.customers,
            "records": self.records,
            "records_read_back": len(self.read_back),
            "purpose_refused": self.refused_purpose,
            "plaintext_scan": {
                "values_checked": self.values_checked,
                "files": self.files_scanned,
                "values_found": len(self.plaintext_hits),
                "clear_refs_found": self.refs_found,
            },
            "log": {
                "ok": self.log_ok,
                "entries": self.log_entries,
                "last_checkpoint": self.checkpoint_seq,
                "unsigned_tail": self.unsigned_tail,
            },
            "shred": {
                "customer": self.shredded,
                "reason": SHRED_REASON,
                "seq": self.shred_seq,
                "records_unreadable": self.shred_records,
                "read_after_shred": self.read_after_shred,
                "receipt_verified": self.receipt_verified,
            },
            "export": {"entries": self.export_entries, "verified": self.export_verified},
            "kept": self.kept,
        }


def _read_store(vault_dir: Path, name: str) -> bytes:
    """A database file's bytes with its write-ahead log and journal, if any."""
    return b"".join(path.read_bytes() for path in sorted(vault_dir.glob(name + "*")))


def _found(blob: bytes, values: list[str]) -> list[int]:
    return [i for i, value in enumerate(values) if value.encode("utf-8") in blob]


def run_demo(workdir: Path) -> DemoSummary:
    """Run the tour in ``workdir`` (an empty directory) and return what it found."""
    summary = DemoSummary(workdir=str(workdir))
    keyfile = workdir / "demo.key"
    vault_dir = workdir / "vault"
    export_file = workdir / "log.jsonl"
    generate_keyfile(keyfile)

    with Vault.create(vault_dir, keyfile=keyfile) as vault:
        summary.vault = vault.vault_id
        summary.public_key = format_public_key(vault.public_key)
        vault.declare_kind(KIND, fields=FIELDS, purposes=PURPOSES)
        session = vault.admin()
        for ref, _profile in CUSTOMERS:
            summary.customers.append(session.add_customer(ref=ref, consent={"transfer": False}))
        items = [
            (cid, KIND, profile)
            for cid, (_ref, profile) in zip(summary.customers, CUSTOMERS, strict=True)
        ]
        summary.records = session.put_many(items, purpose="service")
        pairs = list(zip(summary.customers, summary.records, strict=True))
        read = session.get_many(pairs, purpose="service")
        if [dict(r.fields) for r in read] != [dict(p) for _ref, p in CUSTOMERS]:
            raise CommandError("demo: the records read back differ from those stored")
        summary.read_back = [dict(r.fields) for r in read]
        try:
            session.get(*pairs[0], purpose=summary.refused_purpose)
        except PurposeError:
            pass  # refused and logged as denied, as it should be
        else:
            raise CommandError("demo: a read for an undeclared purpose was allowed")

    values = [v for _ref, profile in CUSTOMERS for v in profile.values()]
    summary.values_checked = len(values)
    for name in ("data.db", "keys.db"):
        blob = _read_store(vault_dir, name)
        summary.files_scanned[name] = len(blob)
        summary.plaintext_hits.extend(f"{name} holds value {i}" for i in _found(blob, values))
        if name == "data.db":
            # A control: refs are stored in clear, so the same scan must find them.
            summary.refs_found = len(_found(blob, [ref for ref, _profile in CUSTOMERS]))

    _shred_one(summary, vault_dir, keyfile, workdir / "receipt.json")

    with Auditor.open(vault_dir) as auditor:
        report = auditor.verify()
        public_key = auditor.public_key
        with create_file(export_file) as out:
            summary.export_entries = auditor.export(out)
    summary.log_ok = report.ok
    summary.log_entries = report.entries
    summary.checkpoint_seq = report.last_checkpoint
    summary.unsigned_tail = report.unsigned_tail
    summary.export_verified = verify_export(export_file, public_key=public_key).ok
    return summary


def _shred_one(summary: DemoSummary, vault_dir: Path, keyfile: Path, receipt_file: Path) -> None:
    """Shred one customer, show its record is gone, and check the receipt offline."""
    customer, record = summary.customers[SHRED_INDEX], summary.records[SHRED_INDEX]
    with Vault.open(vault_dir, keyfile=keyfile) as vault:
        public_key = vault.public_key
        session = vault.admin()
        receipt = session.shred(customer, reason=SHRED_REASON)
        receipt.write(receipt_file)
        try:
            session.get(customer, record, purpose="service")
        except ShreddedError:
            summary.read_after_shred = "ShreddedError"  # refused, and logged
        else:
            raise CommandError("demo: a shredded customer's record could still be read")
    entry = receipt.to_json()["entry"]
    summary.shredded = customer
    summary.shred_seq = int(entry["seq"])
    summary.shred_records = int(entry["detail"]["records"])
    # Offline: only the file and the public key, as the customer would check it.
    summary.receipt_verified = verify_receipt(load_receipt(receipt_file), public_key=public_key).ok


def _narrate(s: DemoSummary) -> None:
    echo = click.echo
    echo(f"shredvault demo: a throw-away vault in {s.workdir}\n")
    echo(f"1. Created vault {s.vault}, unlocked by a fresh 32-byte keyfile.")
    echo(f"   Its signing key, for auditors: {s.public_key}")
    echo(
        f"2. Declared kind {KIND!r}: fields {', '.join(FIELDS)}; "
        f"purposes {', '.join(PURPOSES)}. Nothing else may be stored."
    )
    echo(
        f"3. Added {len(s.customers)} customers of a home-cleaning service, each with its own key:"
    )
    for cid, (ref, _profile) in zip(s.customers, CUSTOMERS, strict=True):
        echo(f"     {cid}  (ref {ref})")
    echo(f"4. Stored {len(s.records)} encrypted profiles for purpose 'service' and read them back:")
    for fields in s.read_back:
        echo(f"     {fields['name']} · {fields['phone']} · {fields['address']}")
    echo(
        f"5. Reading for purpose {s.refused_purpose!r} was refused (not declared for "
        f"{KIND!r}); the refusal is in the log too."
    )
    files = ", ".join(f"{name} ({size:,} bytes)" for name, size in s.files_scanned.items())
    found = len(s.plaintext_hits)
    echo(f"6. Scanned the bytes of {files} for the {s.values_checked} field values: {found} found.")
    echo(
        f"7. Customer {s.shredded} (ref {CUSTOMERS[SHRED_INDEX][0]}) asked to be forgotten: "
        f"shredded by destroying its key (log seq {s.shred_seq}, signed checkpoint at it)."
    )
    echo(
        f"   Reading its profile now fails ({s.read_after_shred}); its {s.shred_records} "
        "ciphertext row(s) are unreadable junk until `compact` removes them."
    )
    echo(
        "   Its erasure receipt, checked offline against the vault's pinned public key "
        f"(`receipt verify receipt.json --pubkey vault.pub`): "
        f"{'valid' if s.receipt_verified else 'INVALID'}."
    )
    echo(
        f"8. Verified the access log without the key: {s.log_entries} entries, last signed "
        f"checkpoint at seq {s.checkpoint_seq}, unsigned tail {s.unsigned_tail}."
    )
    echo(
        f"9. Exported the log ({s.export_entries} entries) and verified the export offline "
        "against the pinned public key (`audit verify --from-export log.jsonl --pubkey "
        f"vault.pub`): {'valid' if s.export_verified else 'INVALID'}."
    )


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep the temporary vault (and its keyfile) afterwards.")
@json_option
def demo_command(keep: bool, as_json: bool) -> None:
    """Tour shredvault in a throw-away vault: encrypt, read, scan, shred, audit the log.

    Takes no passphrase and touches nothing outside a new temporary directory,
    which is removed afterwards unless --keep.
    """
    workdir = Path(tempfile.mkdtemp(prefix="shredvault-demo-"))
    try:
        summary = run_demo(workdir)
        summary.kept = keep
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        print_json(summary.to_json())
    else:
        _narrate(summary)
        if keep:
            click.echo(
                f"\nKept {workdir}: open it with\n"
                f"  shredvault --vault {workdir / 'vault'} --keyfile {workdir / 'demo.key'} "
                "customer list"
            )
        else:
            click.echo(f"\nRemoved {workdir} (use --keep to look around).")
    if summary.plaintext_hits:
        raise CommandError(
            f"plaintext found in the vault files: {', '.join(summary.plaintext_hits)}"
        )
    if not (summary.log_ok and summary.export_verified):
        raise CommandError("the access log did not verify", exit_code=5)
    if not summary.receipt_verified:
        raise CommandError("the erasure receipt did not verify", exit_code=5)
