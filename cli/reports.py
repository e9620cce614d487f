"""Reports: `customer report`, `audit query`, `audit report` (thin layers over vault)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..vault import SchemaError, load_receipt, render_markdown, write_file
from ..vault.audit_reports import normalize_time
from .audit import audit_group
from .backend import open_backend
from .context import store_options, token_option, unlock_options
from .customers import customer_group
from .output import note, print_json, print_pairs, print_table
from .params import DATE_HELP, OUTPUT_FILE, file_or_stdout, page_options, refuse_existing


def _deliver(report: dict[str, Any], fmt: str, out: Path | None) -> None:
    import json

    text = (
        render_markdown(report)
        if fmt == "md"
        else json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    target = file_or_stdout(out)
    if target is None:
        click.echo(text, nl=False)
        return
    write_file(target, text.encode("utf-8"))
    note(f"report written to {target} (owner-only: it holds personal data)")


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "md"]),
    default="json",
    show_default=True,
    help="JSON for machines, Markdown for people.",
)
_json_flag = click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
_out_option = click.option(
    "--out",
    "out",
    type=OUTPUT_FILE,
    help="Write to a new file (mode 0600) instead of stdout ('-').",
)


@customer_group.command("report")
@click.argument("customer_id", metavar="[CUSTOMER]", required=False)
@click.option(
    "--receipt",
    "receipt_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Report on a shredded customer through its erasure receipt (instead of CUSTOMER).",
)
@_format_option
@_json_flag
@_out_option
@store_options
@unlock_options
@token_option
@click.pass_context
def customer_report_command(
    ctx: click.Context,
    customer_id: str | None,
    receipt_file: Path | None,
    fmt: str,
    as_json: bool,
    out: Path | None,
) -> None:
    """Everything the vault holds about CUSTOMER, decrypted, with every access to it
    and a signed checkpoint: the answer to a subject access request (logged).

    A shredded customer is answered through its erasure receipt (--receipt FILE, no
    CUSTOMER): the receipt must verify against this vault's key (else exit 5); the
    report holds it, every log entry about the customer and a signed checkpoint."""
    if (customer_id is None) == (receipt_file is None):
        raise click.UsageError("give exactly one of CUSTOMER and --receipt FILE")
    receipt = None if receipt_file is None else load_receipt(receipt_file)
    refuse_existing(out, "--out")  # before anything is decrypted or logged
    with open_backend(ctx) as session:
        if receipt is not None:
            report = session.customer_report_from_receipt(receipt)
        else:
            assert customer_id is not None
            report = session.customer_report(customer_id)
    _deliver(report, "json" if as_json else fmt, out)


def _check_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A window bound through the one date parser, as the log stores times; a malformed
    one is a usage error (exit 2), caught before unlocking."""
    try:
        return normalize_time(str(param.name), value)
    except SchemaError as error:
        raise click.BadParameter(str(error)) from None


def _print_records_by_customer(customers: list[dict[str, Any]]) -> None:
    """Each customer's record ids, a few to a line under the customer's id."""
    click.echo("")
    click.echo("records touched, by customer:")
    for c in customers:
        click.echo(f"  {c['customer']}")
        ids = c["records"] or ["(no record: customer-level entries only)"]
        for start in range(0, len(ids), _IDS_PER_LINE):
            click.echo("    " + "  ".join(ids[start : start + _IDS_PER_LINE]))


_IDS_PER_LINE = 3


@audit_group.command("query")
@click.option("--actor", help="Principal name (admin for the unlocking administrator).")
@click.option("--role", help="Role name.")
@click.option("--action", help="Log action, e.g. record.get.")
@click.option("--outcome", type=click.Choice(["ok", "denied", "error"]))
@click.option(
    "--since",
    metavar="DATE|TIME",
    callback=_check_time,
    help=f"From then (inclusive): {DATE_HELP}.",
)
@click.option(
    "--until",
    metavar="DATE|TIME",
    callback=_check_time,
    help=f"Up to then (exclusive): {DATE_HELP}.",
)
@page_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_options
@unlock_options
@token_option
@click.pass_context
def query_command(
    ctx: click.Context,
    actor: str | None,
    role: str | None,
    action: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
) -> None:
    """Which customers and records were touched, by whom, in a window: the
    breach-scope question. Ids and counts only, never record contents. --limit takes
    that many matching entries (after --after); "next" continues."""
    with open_backend(ctx) as session:
        result = session.audit_query(
            actor=actor,
            role=role,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            after=after,
        )
    if as_json:
        print_json(result)
        return
    if limit is not None:
        if result["next"] is not None:
            note(f"more entries: --after {result['next']}")
    elif result["truncated"]:
        warning = (
            f"WARNING: truncated: the query stopped at {result['entries']:,} entries "
            f"(seq {result['first_seq']}-{result['last_seq']}); later matching entries "
            "are not counted below. Narrow the window (--since/--until) or add filters."
        )
        click.echo(warning)
        note(warning)
    print_pairs(
        [
            ("entries", result["entries"]),
            (
                "seq range",
                f"{result['first_seq']}-{result['last_seq']}" if result["entries"] else "—",
            ),
            ("per action", ", ".join(f"{k} {v}" for k, v in result["per_action"].items()) or "—"),
            ("customers touched", len(result["customers"])),
            ("entries about shredded customers", result["entries_about_shredded_customers"]),
        ]
    )
    if result["customers"]:
        print_table(
            ["customer", "records", "actions"],
            [
                [
                    c["customer"],
                    len(c["records"]),
                    ", ".join(f"{k} {v}" for k, v in c["actions"].items()),
                ]
                for c in result["customers"]
            ],
        )
        _print_records_by_customer(result["customers"])


@audit_group.command("report")
@_format_option
@_json_flag
@_out_option
@store_options
@unlock_options
@token_option
@click.option(
    "--full",
    is_flag=True,
    help="Verify and count the whole log again instead of from the totals the last "
    "report stored (the figures are the same; this re-checks old entries too).",
)
@click.pass_context
def report_command(
    ctx: click.Context, fmt: str, as_json: bool, out: Path | None, full: bool
) -> None:
    """One page for an inspector: principals and roles, keys against policy, backups
    and the key-copy clock, checkpoints, chain verification, shreds, holds, denials."""
    refuse_existing(out, "--out")  # before anything is decrypted or logged
    with open_backend(ctx) as session:
        report = session.audit_report(full=full)
    _deliver(report, "json" if as_json else fmt, out)
