"""``handover keygen|export|import|complete``: a business transfer (issue 9).

The acquirer makes a key pair (``keygen``) and gives the seller ``OUT.pub``. The
seller exports the customers who consented to a transfer into one package sealed to
that key (``export``), and sends it. The acquirer imports it into its own vault
(``import``), which verifies everything before writing anything. The seller then
shreds every transferred customer (``complete``), keeping a receipt each and a signed
summary.

The handover key's passphrase is not the vault's: it comes from
``--key-passphrase-file``, ``SHREDVAULT_HANDOVER_PASSPHRASE`` or a prompt, and is never
printed. Exit codes as everywhere: 5 for a package that fails verification (tampered,
another recipient, replayed, not exported by this vault), 6 for a wrong passphrase, 7
for an import without the seller's key (``--seller-pubkey``) and no explicit override.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..vault import (
    format_public_key,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
    read_manifest,
)
from ..vault.inputs import MAX_DOCUMENT_BYTES, parse_json
from .confirm import confirm_or_stop, yes_option
from .context import (
    acting_session,
    open_vault,
    read_secret_file,
    store_options,
    token_option,
    unlock_options,
)
from .exit_codes import CommandError, describe
from .meter import Meter
from .output import json_option, note, print_json, print_pairs
from .params import NewFile, refuse_existing
from .receipts import read_pubkey

__all__ = ["HANDOVER_PASSPHRASE_ENV", "handover_group"]

HANDOVER_PASSPHRASE_ENV = "SHREDVAULT_HANDOVER_PASSPHRASE"  # noqa: S105 (a variable name)
_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _key_passphrase(path: Path | None, *, confirm: bool) -> bytes:
    """The handover key's passphrase: --key-passphrase-file, then the environment, then
    a hidden prompt on a terminal."""
    if path is not None:
        return read_secret_file(path, "--key-passphrase-file")
    env = os.environ.get(HANDOVER_PASSPHRASE_ENV)
    if env:
        return env.removesuffix("\n").encode("utf-8")
    if sys.stdin.isatty():
        text: str = click.prompt(
            "Handover key passphrase",
            hide_input=True,
            confirmation_prompt="Repeat the passphrase" if confirm else False,
            err=True,
        )
        return text.encode("utf-8")
    raise click.UsageError(
        "no handover key passphrase: pass --key-passphrase-file FILE, set "
        f"{HANDOVER_PASSPHRASE_ENV}, or run in a terminal to be prompted"
    )


def _key_passphrase_option(command: Any) -> Any:
    return click.option(
        "--key-passphrase-file",
        metavar="FILE",
        type=_READABLE_FILE,
        help="Read the handover key's passphrase from FILE (not the vault's passphrase); "
        f"or set {HANDOVER_PASSPHRASE_ENV}, or be prompted on a terminal.",
    )(command)


@click.group("handover")
def handover_group() -> None:
    """Business transfer: hand consenting customers to an acquirer, then shred them."""


# -- keygen ---------------------------------------------------------------------------------


@handover_group.command("keygen")
@click.argument("out", metavar="OUT", type=NewFile("a key pair"))
@_key_passphrase_option
@json_option
def keygen_command(out: Path, key_passphrase_file: Path | None, as_json: bool) -> None:
    """Make the acquirer's key pair: OUT.pub (give it to the seller) and OUT.key (the
    private key, mode 0600, sealed under a passphrase with Argon2id). Needs no vault.

    Refuses to overwrite either file. Tell the seller the fingerprint through a second
    channel (a phone call), so a swapped OUT.pub is noticed.
    """
    if not out.parent.is_dir():
        raise click.BadParameter(f"{out.parent} is not a directory", param_hint="'OUT'")
    passphrase = _key_passphrase(key_passphrase_file, confirm=True)
    pub, key, fingerprint = handover_keygen(out, passphrase)
    if as_json:
        print_json(
            {"public_key_file": str(pub), "private_key_file": str(key), "fingerprint": fingerprint}
        )
        return
    click.echo("handover key pair written")
    print_pairs(
        [
            ("public key", f"{pub} (give it to the seller)"),
            ("private key", f"{key} (mode 0600; keep it and its passphrase secret)"),
            ("fingerprint", fingerprint),
        ],
        indent="  ",
    )


# -- export (seller) ------------------------------------------------------------------------


@handover_group.command("export")
@click.option(
    "--to",
    "recipient",
    metavar="ACQUIRER.pub",
    required=True,
    type=_READABLE_FILE,
    help="The acquirer's public key file (from `handover keygen`).",
)
@click.option(
    "--out",
    metavar="PACKAGE",
    required=True,
    type=NewFile("a handover package"),
    help="Write the package here (a new file, mode 0600).",
)
@click.option(
    "--customer",
    "customer_ids",
    metavar="ID",
    multiple=True,
    help="Only these customers (repeatable); default: every customer. Either way only "
    "active customers whose consent allows transfer go in.",
)
@click.option(
    "--require-notice-window",
    is_flag=True,
    help="Refuse unless every exported customer had a transfer notice delivered, its "
    "objection window passed and no objection (docs/requests.md).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def export_command(
    ctx: click.Context,
    recipient: Path,
    out: Path,
    customer_ids: tuple[str, ...],
    require_notice_window: bool,
    as_json: bool,
) -> None:
    """Export the customers who consented to a transfer into a package for the acquirer.

    Each record is decrypted and sealed again under a one-time package key that only
    the acquirer's private key can open; the manifest is signed with this vault's key.
    Customers without transfer consent, and shredded ones, are counted and left out.
    Each exported customer gets a `customer.handover` log entry (purpose
    business-transfer), committed only once the package is complete: an interrupted
    export leaves no package and no entries. Admin, or a role granted `export`.
    """
    refuse_existing(out, "--out")
    if not out.parent.is_dir():
        raise click.BadParameter(f"{out.parent} is not a directory", param_hint="'--out'")
    public_key = read_handover_public_key(recipient)
    with open_vault(ctx) as vault:
        session = acting_session(ctx, vault)
        with Meter("exporting", unit="records") as meter:
            result = session.handover_export(
                public_key,
                str(out),
                customers=list(customer_ids) if customer_ids else None,
                progress=meter,
                require_notice_window=require_notice_window,
            )
        seller_key = format_public_key(vault.public_key)
    summary = {**result.to_json(), "seller_public_key": seller_key}
    if as_json:
        print_json(summary)
        return
    click.echo(f"handover package {result.package} written to {out}")
    print_pairs(
        [
            ("customers", result.customers),
            ("records", result.records),
            (
                "excluded",
                f"{result.excluded} ({result.excluded_no_consent} without transfer consent, "
                f"{result.excluded_shredded} shredded)",
            ),
            ("recipient", result.recipient_fingerprint),
            ("seller key", seller_key),
        ],
        indent="  ",
    )
    note(
        "note: give the acquirer this vault's public key (`shredvault audit pubkey`) by a "
        "second channel so it can check the package with --seller-pubkey; once imported, "
        "run `shredvault handover complete` to shred the transferred customers here"
    )


# -- import (acquirer) ----------------------------------------------------------------------


@handover_group.command("import")
@click.argument("package", metavar="PACKAGE", type=_READABLE_FILE)
@click.option(
    "--key",
    "key_file",
    metavar="ACQUIRER.key",
    required=True,
    type=_READABLE_FILE,
    help="The acquirer's private key file (from `handover keygen`).",
)
@click.option(
    "--seller-pubkey",
    "seller_pubkey",
    metavar="FILE",
    type=_READABLE_FILE,
    help="The seller vault's public key to trust (as its `audit pubkey` prints it), "
    "obtained by a second channel. Required unless --accept-unverified-seller.",
)
@click.option(
    "--accept-unverified-seller",
    is_flag=True,
    help="Import without --seller-pubkey, trusting the key the package names itself "
    "(anyone can make such a package); the import's log entry records this override.",
)
@click.option(
    "--declare-kinds",
    is_flag=True,
    help="Declare the package's record kinds that this vault lacks (as the manifest "
    "defines them); without it such a package is refused.",
)
@_key_passphrase_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def import_command(
    ctx: click.Context,
    package: Path,
    key_file: Path,
    seller_pubkey: Path | None,
    accept_unverified_seller: bool,
    declare_kinds: bool,
    key_passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Import a handover PACKAGE into this vault (admin).

    Checks the seller's signature, that the package is sealed to this key, every hash
    and every record, and that it was not imported before, BEFORE writing anything;
    then creates the customers (with fresh keys, their consent and retention) and
    their records in one transaction, logged with the package id. A tampered,
    misdirected or replayed package exits 5 and changes nothing; without
    --seller-pubkey (or --accept-unverified-seller) it exits 7 and changes nothing.
    """
    trusted = read_pubkey(seller_pubkey) if seller_pubkey is not None else None
    passphrase = _key_passphrase(key_passphrase_file, confirm=False)
    key = open_handover_key(key_file, passphrase)
    expected = int(read_manifest(package).get("records", 0))
    with open_vault(ctx) as vault:
        session = acting_session(ctx, vault)
        with Meter("importing", unit="records", expected=expected) as meter:
            result = session.handover_import(
                str(package),
                key,
                seller_public_key=trusted,
                accept_unverified_seller=accept_unverified_seller,
                declare_kinds=declare_kinds,
                progress=meter,
            )
    if as_json:
        print_json(result.to_json())
    else:
        click.echo(f"imported handover package {result.package}")
        print_pairs(
            [
                ("seller vault", result.seller_vault),
                ("customers", len(result.customers)),
                ("records", result.records),
                ("kinds declared", ", ".join(result.kinds_declared) or "none"),
                (
                    "seller key",
                    f"{result.seller_public_key} "
                    + (
                        "(matches --seller-pubkey)"
                        if trusted
                        else "(self-asserted: --accept-unverified-seller)"
                    ),
                ),
            ],
            indent="  ",
        )
    if trusted is None:
        note(
            "warning: --accept-unverified-seller: the signature was checked against the key "
            "the package itself names (self-asserted): that shows the package is whole, not "
            "who made it. The import's log entry records this override."
        )


# -- complete (seller) ----------------------------------------------------------------------


@handover_group.command("complete")
@click.argument("package", metavar="PACKAGE", type=_READABLE_FILE)
@click.option(
    "--receipts",
    "receipts_dir",
    metavar="DIR",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one erasure receipt per customer here, as CUSTOMER.json.",
)
@click.option(
    "--summary",
    "summary_file",
    metavar="FILE",
    required=True,
    type=NewFile("the completion summary"),
    help="Write the signed completion summary here (a new file, mode 0600).",
)
@yes_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def complete_command(
    ctx: click.Context,
    package: Path,
    receipts_dir: Path,
    summary_file: Path,
    yes: bool,
    as_json: bool,
) -> None:
    """Shred every customer that PACKAGE (exported by this vault) transferred (admin).

    One erasure receipt each goes to --receipts DIR (check them with `shredvault
    receipt verify`) and a summary signed by this vault, listing every customer and its
    receipt's SHA-256, to --summary FILE. Safe to run again, after an interruption or
    not: customers already shredded are skipped and their receipts kept, and the summary
    of the same package is replaced by one covering everyone. Asks first unless --yes.
    """
    manifest = read_manifest(package)
    rerun = summary_file.exists()
    if rerun and _summary_package(summary_file) != manifest.get("package"):
        raise click.BadParameter(
            f"{summary_file} already exists and is not the summary of this package; "
            "refusing to overwrite it",
            param_hint="'--summary'",
        )
    confirm_or_stop(
        f"Shred the {manifest.get('customers')} customer(s) handed over in package "
        f"{manifest.get('package')}? Their records here can never be read again.",
        yes=yes,
    )
    with open_vault(ctx) as vault:
        session = acting_session(ctx, vault)
        count = manifest.get("customers")
        expected = count if isinstance(count, int) and not isinstance(count, bool) else None
        with Meter("shredding transferred customers", unit="customers", expected=expected) as meter:
            done = session.handover_complete(
                str(package), receipts_dir=str(receipts_dir), progress=meter
            )
    try:
        done.write(summary_file, replace=rerun)  # a rerun's summary covers everyone
    except OSError as error:
        click.echo(done.dumps())
        raise CommandError(
            f"the customers were shredded but the summary could not be written to "
            f"{summary_file} ({describe(error)}); it was printed on stdout instead"
        ) from None
    counts = done.summary["summary"]["counts"]
    if as_json:
        print_json(
            {
                "package": done.summary["summary"]["package"],
                "counts": counts,
                "receipts_dir": str(receipts_dir),
                "summary_file": str(summary_file),
                "failed": done.failed,
            }
        )
    else:
        click.echo(f"handover {done.summary['summary']['package']} completed")
        print_pairs(
            [
                ("shredded now", counts["shredded"]),
                ("already shredded", counts["already_shredded"]),
                ("failed", counts["failed"]),
                ("receipts", str(receipts_dir)),
                ("summary", str(summary_file)),
            ],
            indent="  ",
        )
        for customer, message in done.failed.items():
            click.echo(f"  not shredded: {customer}: {message}")
    if done.failed:
        raise CommandError(
            f"{len(done.failed)} customer(s) could not be shredded (see above); fix that and "
            "run `handover complete` again"
        )


def _summary_package(path: Path) -> object:
    """The package a completion summary file names, or None if it is not one."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
        document = parse_json(data, what=str(path), max_bytes=MAX_DOCUMENT_BYTES)
        return document["summary"]["package"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
