"""``certificate verify``: check a certificate of destruction offline, with no vault,
passphrase or network; optionally against an exported log (``audit export``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import click

from ..vault import (
    CertificateReport,
    VerificationError,
    format_public_key,
    load_certificate,
    verify_certificate,
)
from .output import echo, json_option, note, print_json, print_pairs
from .receipts import read_pubkey
from .trust import fail_unless_ok, problem, trust_embedded_option, verdict

__all__ = ["certificate_group"]

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("certificate")
def certificate_group() -> None:
    """Check certificates of destruction (from `shredvault decommission`) offline."""


@certificate_group.command("verify")
@click.argument("certificate_file", metavar="FILE", type=_READABLE_FILE)
@click.option(
    "--pubkey",
    "pubkey_file",
    metavar="FILE",
    type=_READABLE_FILE,
    help="The vault's public key to trust (as `audit pubkey` prints it).",
)
@click.option(
    "--log",
    "log_file",
    metavar="LOG.jsonl",
    type=_READABLE_FILE,
    help="An `audit export` of the vault: it must verify and end in the certified head.",
)
@trust_embedded_option
@json_option
def verify_command(
    certificate_file: Path,
    pubkey_file: Path | None,
    log_file: Path | None,
    trust_embedded_key: bool,
    as_json: bool,
) -> None:
    """Verify the certificate of destruction in FILE. Needs no vault or passphrase.

    Checks the certificate's signature, that the vault's signed checkpoint stands at
    exactly the certified final entry and head, and that the entry records the
    certified reason and counts. With --log, the exported log must verify and end in
    exactly the certified head, and its entries must add up to the certified counts.
    Exits 0 when valid, 5 when not (saying why) and 7 when nothing trusted was given
    to check it against: pass the vault's key with --pubkey (`audit pubkey`), or
    --trust-embedded-key to accept the certificate's own copy (reported as
    self-asserted).
    """
    public_key = read_pubkey(pubkey_file) if pubkey_file is not None else None
    document: dict[str, Any] | None = None
    try:
        document = load_certificate(certificate_file)
    except VerificationError as error:
        report = CertificateReport(False, error.reason, str(error))
    else:
        report = verify_certificate(
            document,
            public_key=public_key,
            log_export=log_file,
            trust_embedded_key=trust_embedded_key,
        )
    embedded = document.get("public_key") if document is not None else None
    key_text = format_public_key(public_key) if public_key is not None else embedded
    if as_json:
        print_json(
            {
                "path": str(certificate_file),
                "public_key": key_text,
                "public_key_source": "pubkey" if public_key is not None else "certificate",
                "log": str(log_file) if log_file is not None else None,
                **report.to_json(),
            }
        )
    elif not report.ok:
        word = verdict(report.ok, report.reason, report.trust)
        echo(f"{word}: certificate of destruction {certificate_file}")
        echo(problem(report.reason, report.message))
    else:
        assert document is not None
        word = verdict(report.ok, report.reason, report.trust)
        echo(f"{word}: certificate of destruction {certificate_file}")
        pairs: list[tuple[str, Any]] = [
            ("vault", report.vault),
            ("decommissioned at", report.decommissioned_at),
            ("reason", document.get("reason")),
            ("final entry", f"seq {report.last_seq}"),
            ("head", report.head),
            ("log", f"{log_file} ends in this head" if log_file is not None else "not checked"),
            (
                "signed by",
                f"{key_text} ({'--pubkey' if public_key else 'self-asserted: its own copy'})",
            ),
        ]
        print_pairs(pairs, indent="  ")
        echo("  scope:")
        echo(
            textwrap.fill(
                str(document.get("scope")),
                width=88,
                initial_indent="    ",
                subsequent_indent="    ",
            )
        )
    if report.ok:
        for text in report.notes:
            note(f"note: {text}")
    fail_unless_ok(report.ok, report.reason, report.message, f"certificate {certificate_file}")
