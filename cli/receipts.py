"""Erasure receipts on disk: keeping those a crash recovery issued, and ``receipt
verify``, which checks one offline with no vault, passphrase or network.

A receipt names the customer next to the subject tag of its old log entries, so it is
written like every file (``Receipt.write``: owner-only, atomically, never over another
file): half a receipt is no proof, and a copy left lying around re-links a shredded
customer to its history.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import click

from ..vault import (
    ReceiptReport,
    Vault,
    VaultError,
    VerificationError,
    format_public_key,
    load_receipt,
    parse_public_key,
    verify_receipt,
)
from .exit_codes import describe
from .output import echo, json_option, note, print_json, print_pairs
from .trust import PINNED, SELF_ASSERTED, fail_unless_ok, problem, trust_embedded_option, verdict

__all__ = [
    "RECOVERED_DIR",
    "receipt_group",
    "save_recovered_receipts",
]

RECOVERED_DIR = "recovered-receipts"
_MAX_PUBKEY_FILE = 4096
_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def save_recovered_receipts(vault: Vault) -> Path | None:
    """Write the receipts of shreds an open finished after a crash (this open's, and
    those the keystore kept because an earlier opener did not collect them) to
    ``<vault>/recovered-receipts/<customer>.json``, collect them from the keystore, and
    tell the person at the terminal. They cannot be issued again, so a failure to
    write them is reported, not raised (they stay kept): the command still runs."""
    target = vault.path / RECOVERED_DIR
    try:
        written = {p.name for p in vault.collect_receipts(target)}
        for receipt in vault.recovered_receipts:  # a decommission's are not kept
            name = f"{receipt.customer}.json"
            if name not in written and not (target / name).exists():
                target.mkdir(mode=0o700, exist_ok=True)
                receipt.write(target / name)
                written.add(name)
    except (OSError, VaultError) as error:
        note(
            "warning: erasure receipts of shreds a crash interrupted could not be saved "
            f"in {target}: {describe(error)}; they stay kept in the keystore, and the "
            "next command that unlocks the vault tries again"
        )
        return None
    if written:
        note(
            f"note: {len(written)} shred(s) a crash had interrupted were finished; their "
            f"erasure receipts are in {target}. Hand them to whoever asked for the "
            "erasure, then delete the copies there: each ties a customer id to its old "
            "log entries."
        )
    return target


def read_pubkey(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            text = handle.read(_MAX_PUBKEY_FILE).decode("utf-8", errors="replace")
        return parse_public_key(text)
    except OSError as error:
        raise click.BadParameter(
            f"cannot read {path}: {describe(error)}", param_hint="'--pubkey'"
        ) from None
    except VerificationError as error:
        raise click.BadParameter(f"{path}: {error}", param_hint="'--pubkey'") from None


def _print_report(report: ReceiptReport, path: Path, key_text: str | None) -> None:
    echo(f"{verdict(report.ok, report.reason, report.trust)}: erasure receipt {path}")
    if not report.ok:
        echo(problem(report.reason, report.message))
        return
    key_note = "given with --pubkey" if report.trust == PINNED else "self-asserted: its own copy"
    pairs: list[tuple[str, Any]] = [
        ("customer", report.customer),
        ("vault", report.vault),
        ("shred entry", f"seq {report.seq}"),
        ("shredded at", report.shredded_at),
        ("signed by", f"{key_text} ({key_note})"),
    ]
    print_pairs(pairs, indent="  ")


@click.group("receipt")
def receipt_group() -> None:
    """Check erasure receipts (from `shredvault shred`) offline."""


@receipt_group.command("verify")
@click.argument("receipt_file", metavar="FILE", type=_READABLE_FILE)
@click.option(
    "--pubkey",
    "pubkey_file",
    metavar="FILE",
    type=_READABLE_FILE,
    help="The vault's public key to trust (as `audit pubkey` prints it).",
)
@trust_embedded_option
@json_option
def verify_command(
    receipt_file: Path, pubkey_file: Path | None, trust_embedded_key: bool, as_json: bool
) -> None:
    """Verify the erasure receipt in FILE. Needs no vault, passphrase or network.

    Checks that the shred entry matches its hash, that the vault's signed checkpoint
    stands at exactly that entry, and that the entry commits to the customer the
    receipt names. Exits 0 when valid, 5 when not (saying why) and 7 when nothing
    trusted was given to check it against.

    Pass the vault's key with --pubkey (get it from the vault's owner: `shredvault
    audit pubkey`). The key inside the receipt shows only that the receipt is whole,
    not that your vault signed it: with --trust-embedded-key it is used and the result
    is reported as self-asserted.
    """
    public_key = read_pubkey(pubkey_file) if pubkey_file is not None else None
    document: dict[str, Any] | None = None
    try:
        document = load_receipt(receipt_file)
    except VerificationError as error:
        report = ReceiptReport(False, error.reason, str(error))
    else:
        report = verify_receipt(
            document, public_key=public_key, trust_embedded_key=trust_embedded_key
        )
    if public_key is not None:
        key_text: str | None = format_public_key(public_key)
    else:
        embedded = document.get("public_key") if document is not None else None
        key_text = embedded if isinstance(embedded, str) else None
    if as_json:
        print_json(
            {
                "path": str(receipt_file),
                "public_key": key_text,
                "public_key_source": "pubkey" if public_key is not None else "receipt",
                **report.to_json(),
            }
        )
    else:
        _print_report(report, receipt_file, key_text)
        if report.ok:
            scope = document.get("scope") if document is not None else None
            if isinstance(scope, str):
                echo("  scope:")
                echo(
                    textwrap.fill(scope, width=88, initial_indent="    ", subsequent_indent="    ")
                )
    if report.ok and report.trust == SELF_ASSERTED:
        note(
            "note: self-asserted: checked against the key inside the receipt; pass --pubkey "
            "FILE with the vault's key (`shredvault audit pubkey`) to prove the vault signed it"
        )
    fail_unless_ok(report.ok, report.reason, report.message, f"receipt {receipt_file}")
