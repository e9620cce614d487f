"""``shred`` and ``compact``: crypto-shredding customers (DESIGN §7) and removing the
unreadable rows it leaves.

A shred cannot be undone and its receipt cannot be issued again, so both commands ask
first (or need ``--yes``), and every receipt reaches a file or stdout: written where
``--receipt``/``--receipt-dir`` say, else printed as JSON on stdout (the summary then
goes to stderr, so ``> receipt.json`` keeps a clean receipt).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..vault import Receipt
from .backend import open_backend
from .confirm import confirm_or_stop, yes_option
from .context import open_session, store_options, token_option, unlock_options
from .exit_codes import CommandError, describe
from .meter import Meter
from .output import echo, json_option, note, print_json, print_pairs, printable
from .params import OUTPUT_FILE, file_or_stdout, refuse_existing

__all__ = ["check_receipt_file", "compact_command", "save_receipts", "shred_command"]

DEFAULT_EXPIRED_REASON = "retention period ended"


def _summary(receipt: Receipt) -> dict[str, Any]:
    entry = receipt.document.get("entry", {})
    detail = entry.get("detail") or {}
    return {
        "customer": receipt.customer,
        "seq": entry.get("seq"),
        "shredded_at": entry.get("ts"),
        "records": detail.get("records"),
        "keys_destroyed": len(detail.get("key_fingerprints") or []),
    }


def check_receipt_file(path: Path, hint: str = "--receipt") -> None:
    """Refuse, before anything is shredded, a receipt path that cannot take the receipt."""
    refuse_existing(path, hint)
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise click.BadParameter(f"cannot write into {path.parent}", param_hint=f"'{hint}'")


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise click.BadParameter(describe(error), param_hint="'--receipt-dir'") from None
    if not os.access(path, os.W_OK):
        raise click.BadParameter(f"cannot write into {path}", param_hint="'--receipt-dir'")


def save_receipts(receipts: list[Receipt], paths: list[Path]) -> None:
    """Write each receipt to its path; on failure print the unwritten ones on stdout
    (they cannot be issued again) and fail with exit 1."""
    for i, (receipt, path) in enumerate(zip(receipts, paths, strict=True)):
        try:
            receipt.write(path)
        except OSError as error:  # including OutputExistsError: never over another file
            print_json([r.to_json() for r in receipts[i:]])
            raise CommandError(
                f"shredded, but the receipt could not be written to {path} "
                f"({describe(error)}); the unwritten receipts were printed on stdout "
                "instead: save them now, they cannot be issued again"
            ) from None


@click.command("shred")
@click.argument("customer_id", metavar="[CUSTOMER]", required=False)
@click.option(
    "--reason",
    metavar="TEXT",
    help="Why (logged and in the receipt; no personal data). Required for one customer.",
)
@click.option(
    "--expired",
    is_flag=True,
    help="Shred every customer past its retention date (except those under legal hold).",
)
@click.option(
    "--receipt",
    "receipt_file",
    metavar="FILE",
    type=OUTPUT_FILE,
    help="Write the erasure receipt here (a new file, mode 0600); '-' or none: stdout.",
)
@click.option(
    "--receipt-dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --expired: write one receipt per customer here, as CUSTOMER.json.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --expired: list who would be shredded and who a legal hold keeps; change nothing.",
)
@yes_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def shred_command(
    ctx: click.Context,
    customer_id: str | None,
    reason: str | None,
    expired: bool,
    receipt_file: Path | None,
    receipt_dir: Path | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Crypto-shred CUSTOMER: destroy its keys so its records can never be read again.

    Takes the same time however many records the customer has, and issues a signed
    erasure receipt (check it with `shredvault receipt verify`). A customer under
    legal hold is refused. With --expired, shreds every customer whose retain-until
    date has passed and reports those kept by a legal hold; --expired --dry-run only
    lists them.

    Asks first unless --yes (without a terminal, --yes is required). The receipt goes
    to --receipt FILE (or --receipt-dir DIR); without one it is printed as JSON on
    stdout and the summary goes to stderr. --json prints the summary with the receipts.
    """
    if expired == (customer_id is not None):
        raise click.UsageError("give either CUSTOMER or --expired (exactly one)")
    if dry_run:
        if not expired:
            raise click.UsageError("--dry-run goes with --expired")
        _preview_expired(ctx, as_json)
        return
    if expired:
        if receipt_file is not None:
            raise click.UsageError("--receipt is for one customer; use --receipt-dir")
        _shred_expired(ctx, reason or DEFAULT_EXPIRED_REASON, receipt_dir, yes, as_json)
        return
    assert customer_id is not None
    if receipt_dir is not None:
        raise click.UsageError("--receipt-dir is for --expired; use --receipt FILE")
    if not reason or not reason.strip():
        raise click.UsageError("say why with --reason (it is logged; no personal data)")
    receipt_file = file_or_stdout(receipt_file)
    if receipt_file is not None:
        check_receipt_file(receipt_file)
    confirm_or_stop(
        f"Shred customer {customer_id}? Its keys are destroyed and its records can never "
        "be read again.",
        yes=yes,
    )
    with open_backend(ctx) as session:
        receipt = session.shred(customer_id, reason=reason)
    if receipt_file is not None:
        save_receipts([receipt], [receipt_file])
    summary = _summary(receipt)
    if as_json:
        print_json(
            {
                **summary,
                "receipt_file": str(receipt_file) if receipt_file is not None else None,
                "receipt": receipt.to_json(),
            }
        )
        return
    if receipt_file is None:
        print_json(receipt.to_json())
    echo = click.echo if receipt_file is not None else note
    echo(f"shredded {receipt.customer}")
    pairs: list[tuple[str, Any]] = [
        ("log entry", f"seq {summary['seq']} (signed checkpoint at it)"),
        ("at", summary["shredded_at"]),
        ("keys destroyed", summary["keys_destroyed"]),
        ("records", f"{summary['records']} now unreadable (`shredvault compact` removes them)"),
        ("receipt", str(receipt_file) if receipt_file is not None else "printed on stdout"),
    ]
    if receipt_file is not None:
        print_pairs(pairs, indent="  ")
    else:
        for name, value in pairs:
            note(f"  {name}: {value}")


def _preview_expired(ctx: click.Context, as_json: bool) -> None:
    with open_session(ctx) as session:
        preview = session.expired_customers()
    if as_json:
        print_json(preview.to_json())
        return
    if not preview.due and not preview.held:
        click.echo("no customer is past its retention date")
        return
    click.echo(f"would shred {len(preview.due)} customer(s) past retention (dry run):")
    for cid, until in preview.due.items():
        echo(f"  {cid}  retain until {until}{_ref_text(preview.refs.get(cid))}")
    if preview.held:
        click.echo(f"would keep {len(preview.held)} under legal hold:")
        for cid, until in preview.held.items():
            echo(f"  {cid}  retain until {until}{_ref_text(preview.refs.get(cid))}")


def _ref_text(ref: str | None) -> str:
    return "" if ref is None else f"  ref {printable(ref)}"


def _shred_expired(
    ctx: click.Context, reason: str, receipt_dir: Path | None, yes: bool, as_json: bool
) -> None:
    if receipt_dir is not None:
        _prepare_dir(receipt_dir)
    confirm_or_stop(
        "Shred every customer past its retention date (except those under legal hold)? "
        "Their records can never be read again.",
        yes=yes,
    )
    with (
        open_session(ctx) as session,
        Meter("shredding customers past retention", unit="customers") as meter,
    ):
        result = session.shred_expired(reason=reason, progress=meter, total=meter.expect)
    receipts = result.receipts
    paths = [receipt_dir / f"{r.customer}.json" for r in receipts] if receipt_dir else []
    if receipt_dir is not None:
        save_receipts(receipts, paths)
    if as_json:
        print_json(
            {
                "shredded": [_summary(r) for r in receipts],
                "held": list(result.held),
                "failed": dict(result.failed),
                "scrub_pending": result.scrub_pending,
                "receipt_files": [str(p) for p in paths] if receipt_dir is not None else None,
                "receipts": [r.to_json() for r in receipts],
            }
        )
        _fail_if_any(result.failed, scrub_pending=result.scrub_pending)
        return
    if receipt_dir is None:
        print_json([r.to_json() for r in receipts])
    echo = click.echo if receipt_dir is not None else note
    if not receipts and not result.held:
        echo("no customer is past its retention date")
        return
    echo(f"shredded {len(receipts)} customer(s) past retention in {meter.elapsed:.1f} s")
    for summary in map(_summary, receipts):
        echo(f"  {summary['customer']}  seq {summary['seq']}  {summary['records']} record(s)")
    if receipts:
        echo(f"receipts: {receipt_dir}" if receipt_dir is not None else "receipts: on stdout")
    if result.held:
        echo(f"kept {len(result.held)} under legal hold (release them to shred):")
        for held in result.held:
            echo(f"  {held}")
    _fail_if_any(result.failed, scrub_pending=result.scrub_pending)


def _fail_if_any(failed: dict[str, str], *, scrub_pending: bool = False) -> None:
    """Customers that could not be shredded (the others' receipts are out), or a keystore
    not yet rebuilt after the deletions: exit 1."""
    problems = []
    if failed:
        lines = "; ".join(f"{cid}: {why}" for cid, why in sorted(failed.items()))
        problems.append(
            f"{len(failed)} customer(s) past retention could not be shredded ({lines}); "
            "run `shredvault shred --expired` again to retry them"
        )
    if scrub_pending:
        problems.append(
            "keys deleted, but the keystore could not be rebuilt yet to erase every copy "
            "(another process holds it open); the next open of the vault finishes it"
        )
    if problems:
        raise CommandError("; ".join(problems))


@click.command("compact")
@yes_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def compact_command(ctx: click.Context, yes: bool, as_json: bool) -> None:
    """Delete the unreadable ciphertext rows that shredded customers left behind.

    Afterwards no record row names the old record ids that earlier log entries
    mention. Logged per batch; safe to interrupt and run again. Asks first unless --yes.
    """
    confirm_or_stop("Delete the record rows of every shredded customer?", yes=yes)
    with open_session(ctx) as session, Meter("compacting", unit="rows") as meter:
        removed = session.compact(progress=meter)
    if as_json:
        print_json({"removed": removed, "seconds": round(meter.elapsed, 3)})
    else:
        click.echo(f"removed {removed:,} record row(s) of shredded customers")
