"""``decommission``: destroy everything a vault holds and issue a signed certificate of
destruction (docs/decommission.md).

It cannot be undone, so it asks first (or needs ``--yes``). The certificate reaches a
file or stdout before the vault's signing key is destroyed: written to ``--certificate
OUT`` (with a Markdown rendering beside it), else printed as JSON on stdout (the summary
then goes to stderr). Interrupted, it is run again to finish; on a vault already
decommissioned it re-emits the stored certificate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..vault import Certificate, decommission_state, decommissioned_certificate
from ..vault.certificate import markdown_path
from .confirm import confirm_or_stop, yes_option
from .context import (
    acting_session,
    open_vault,
    settings_of,
    store_options,
    token_option,
    unlock_options,
)
from .meter import Meter
from .output import json_option, note, print_json, print_pairs
from .params import OUTPUT_FILE, file_or_stdout
from .receipts import save_recovered_receipts

__all__ = ["decommission_command"]


def _check_target(path: Path, *, resuming: bool) -> None:
    """Refuse, before anything is destroyed, a certificate path that cannot take it. A
    rerun may find the files its first run wrote: they are kept if identical."""
    for file in (path, markdown_path(path)):
        if file.exists() and not resuming:
            raise click.BadParameter(
                f"{file} already exists; refusing to overwrite it", param_hint="'--certificate'"
            )
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise click.BadParameter(f"cannot write into {path.parent}", param_hint="'--certificate'")


def _summary(certificate: Certificate) -> dict[str, Any]:
    doc = certificate.document
    return {
        "vault": doc["vault"],
        "reason": doc["reason"],
        "decommissioned_at": doc["decommissioned_at"],
        **doc["counts"],
        "kek_epochs_destroyed": len(doc["destroyed_keys"]["kek_epochs"]),
        "first_seq": doc["log"]["first_seq"],
        "last_seq": doc["log"]["last_seq"],
        "head": doc["log"]["head"],
        "backups_outstanding": [b["id"] for b in doc["backups_outstanding"]],
    }


@click.command("decommission")
@click.option(
    "--reason",
    metavar="TEXT",
    required=True,
    help="Why (logged and in the certificate; no personal data), e.g. deregistered.",
)
@click.option(
    "--certificate",
    "certificate_file",
    metavar="OUT",
    type=OUTPUT_FILE,
    help="Write the certificate here (JSON, mode 0600) and its Markdown rendering beside "
    "it (cert.json -> cert.md); '-' or none: the JSON on stdout.",
)
@click.option(
    "--override-holds",
    is_flag=True,
    help="Destroy customers under legal hold too (refused without this flag).",
)
@yes_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def decommission_command(
    ctx: click.Context,
    reason: str,
    certificate_file: Path | None,
    override_holds: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Decommission the vault: shred every customer, delete every record row, destroy
    every key, and issue a signed certificate of destruction.

    Then the vault's signing key is destroyed too: the vault can never be unlocked
    again, and every data command exits 4. `audit verify`, `audit export`, `receipt
    verify` and `certificate verify` keep working without a passphrase.

    Refused (nothing destroyed) while customers are under legal hold, unless
    --override-holds. Admin only. Asks first unless --yes. Safe to interrupt: run it
    again to finish (the first run's reason stands). On a decommissioned vault it
    re-emits the certificate.
    """
    if not reason.strip():
        raise click.UsageError("say why with --reason (it is logged; no personal data)")
    root = settings_of(ctx).require_vault()
    state = decommission_state(root)
    certificate_file = file_or_stdout(certificate_file)
    if certificate_file is not None:
        _check_target(certificate_file, resuming=state != "active")

    def deliver(certificate: Certificate) -> None:
        if certificate_file is not None:
            certificate.write(certificate_file)

    if state == "decommissioned":
        certificate = decommissioned_certificate(root)
        deliver(certificate)
        note("note: the vault was already decommissioned; its certificate is re-emitted")
    else:
        if state == "decommissioning":
            note("note: finishing a decommission that was interrupted")
        confirm_or_stop(
            "Decommission this vault? Every customer is shredded, every key destroyed; the "
            "vault can never be unlocked again.",
            yes=yes,
        )
        with open_vault(ctx) as vault, Meter("shredding customers", unit="customers") as meter:
            session = acting_session(ctx, vault)
            certificate = session.decommission(
                reason=reason,
                override_holds=override_holds,
                progress=meter,
                on_certificate=deliver,
                total=meter.expect,
            )
            if vault.recovered_receipts:
                save_recovered_receipts(vault)
    _report(certificate, certificate_file, reason, as_json, earlier=state != "active")


def _report(
    certificate: Certificate,
    certificate_file: Path | None,
    reason: str,
    as_json: bool,
    *,
    earlier: bool,
) -> None:
    summary = _summary(certificate)
    md = markdown_path(certificate_file) if certificate_file is not None else None
    if as_json:
        print_json(
            {
                **summary,
                "certificate_file": str(certificate_file) if certificate_file else None,
                "markdown_file": str(md) if md else None,
                "certificate": certificate.to_json(),
            }
        )
        return
    if certificate_file is None:
        print_json(certificate.to_json())
    echo = click.echo if certificate_file is not None else note
    echo(f"decommissioned {summary['vault']}")
    pairs: list[tuple[str, Any]] = [
        ("reason", summary["reason"]),
        ("at", summary["decommissioned_at"]),
        (
            "customers shredded",
            f"{summary['customers_shredded']} (and {summary['customers_shredded_before']} before)",
        ),
        ("record rows deleted", summary["records_deleted"]),
        ("KEK epochs destroyed", summary["kek_epochs_destroyed"]),
        ("final log entry", f"seq {summary['last_seq']} (signed checkpoint at it)"),
        ("head", summary["head"]),
        (
            "certificate",
            f"{certificate_file} and {md}" if certificate_file is not None else "on stdout",
        ),
    ]
    if certificate_file is not None:
        print_pairs(pairs, indent="  ")
    else:
        for name, value in pairs:
            note(f"  {name}: {value}")
    if earlier and summary["reason"] != reason:
        note(f"note: the first run's reason stands: {summary['reason']!r}")
    if summary["backups_outstanding"]:
        note(
            f"warning: {len(summary['backups_outstanding'])} unexpired backup(s) still hold "
            f"keys: {', '.join(summary['backups_outstanding'])}; destroy them to complete "
            "the erasure"
        )
