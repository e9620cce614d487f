"""``request open|list|close|policy`` and ``consent set``: the request desk and consent
history (docs/requests.md). Thin layers over ``Session``; notes never echo back."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..vault import CHANNELS, OUTCOMES, REQUEST_TYPES, Request, Session, render_markdown, write_file
from ..vault.inputs import check_days
from .context import open_session, store_options, token_option, unlock_options
from .output import echo, json_option, note, print_json, print_pairs, print_table
from .params import KEY_VALUE, NewFile, consent_flags, read_text_input, refuse_existing
from .shred import check_receipt_file, save_receipts

__all__ = ["consent_group", "request_group"]


def _days(text: str | None) -> float | None:
    """``7d`` or ``7``: a number of days (0 allowed)."""
    if text is None:
        return None
    try:
        return check_days(float(text.strip().removesuffix("d")), allow_zero=True)
    except ValueError:
        raise click.BadParameter(
            "give days as N or Nd, e.g. 7d", param_hint="'--due-within'"
        ) from None


def _customer(session: Session, customer_id: str | None, ref: str | None) -> str:
    if (customer_id is None) == (ref is None):
        raise click.UsageError("give CUSTOMER or --ref, not both")
    return customer_id if customer_id is not None else session.customer_by_ref(str(ref)).id


def _show(request: Request) -> None:
    print_pairs(
        [
            ("request", request.id),
            ("customer", request.customer or "(shredded)"),
            ("type", request.type),
            ("channel", request.channel),
            ("state", request.state),
            ("opened", request.opened),
            ("due", request.due),
            ("closed", request.closed),
            ("outcome", request.outcome),
            ("in time", request.in_time),
            ("receipt sha256", None if request.receipt is None else request.receipt["sha256"]),
        ]
    )


@click.group("request")
def request_group() -> None:
    """The request desk: record customers' requests, see what is due, close them."""


@request_group.command("open")
@click.argument("customer_id", metavar="[CUSTOMER]", required=False)
@click.option("--ref", metavar="R", help="Find the customer by its reference instead.")
@click.option("--type", "kind", type=click.Choice(REQUEST_TYPES), required=True)
@click.option("--channel", type=click.Choice(CHANNELS), required=True)
@click.option(
    "--note",
    metavar="TEXT|-",
    help="A note, sealed under the customer's key; - reads it from stdin (keeps it out of "
    "shell history and the process list).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def open_command(
    ctx: click.Context,
    customer_id: str | None,
    ref: str | None,
    kind: str,
    channel: str,
    note: str | None,
    as_json: bool,
) -> None:
    """Record a customer's request; it is due by the vault's policy for its type."""
    if note == "-":
        note = read_text_input(None, "the note", "--note")
    with open_session(ctx) as session:
        cid = _customer(session, customer_id, ref)
        request = session.open_request(cid, type=kind, channel=channel, note=note)
    if as_json:
        print_json(request.to_json())
    else:
        _show(request)


@request_group.command("list")
@click.option("--due-within", metavar="DAYS", help="Only open requests due within N days (7d).")
@click.option("--overdue", is_flag=True, help="Only open requests past their due date.")
@click.option("--state", type=click.Choice(["open", "closed"]), help="Only requests in it.")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def list_command(
    ctx: click.Context, due_within: str | None, overdue: bool, state: str | None, as_json: bool
) -> None:
    """List requests, soonest due first."""
    within = _days(due_within)
    with open_session(ctx) as session:
        found = session.list_requests(due_within_days=within, overdue=overdue, state=state)
    if as_json:
        print_json([r.to_json() for r in found])
        return
    if not found:
        echo("no requests")
        return
    print_table(
        ["ID", "CUSTOMER", "TYPE", "CHANNEL", "STATE", "DUE", "OVERDUE", "OUTCOME"],
        [
            [
                r.id,
                r.customer or "(shredded)",
                r.type,
                r.channel,
                r.state,
                r.due,
                "yes" if r.overdue else "no",
                r.outcome,
            ]
            for r in found
        ],
    )


@request_group.command("close")
@click.argument("request_id", metavar="ID")
@click.option("--outcome", type=click.Choice(OUTCOMES), required=True)
@click.option("--reason", metavar="TEXT", help="Why (stored in clear: no personal data).")
@click.option(
    "--receipt-out",
    type=NewFile("the receipt"),
    help="Erasure: write the receipt to this new file (mode 0600).",
)
@click.option(
    "--report-out",
    type=NewFile("the report"),
    help="Access: write the subject report to this new file (.md: Markdown, else JSON).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def close_command(
    ctx: click.Context,
    request_id: str,
    outcome: str,
    reason: str | None,
    receipt_out: Path | None,
    report_out: Path | None,
    as_json: bool,
) -> None:
    """Close a request. Fulfilling an erasure shreds the customer (the receipt's hash
    stays on the request); an access produces the subject report; a consent withdrawal
    withdraws every consent the customer gave."""
    if receipt_out is not None:
        check_receipt_file(receipt_out, "--receipt-out")
    refuse_existing(report_out, "--report-out")
    with open_session(ctx) as session:
        done = session.close_request(request_id, outcome=outcome, reason=reason)
    receipt = done.receipt
    if receipt is not None and receipt_out is not None:
        save_receipts([receipt], [receipt_out])  # on failure: printed on stdout, exit 1
        note(f"receipt written to {receipt_out}")
    if done.report is not None and report_out is not None:
        text = (
            render_markdown(done.report)
            if report_out.suffix == ".md"
            else json.dumps(done.report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        write_file(report_out, text.encode("utf-8"))
        note(f"report written to {report_out} (owner-only: it holds personal data)")
    if as_json:
        shown = done.to_json()
        if receipt is not None:  # a receipt cannot be issued again: never dropped
            shown["receipt"] = receipt.to_json()
            shown["receipt_file"] = None if receipt_out is None else str(receipt_out)
        print_json(shown)
    elif receipt is not None and receipt_out is None:
        print_json(receipt.to_json())  # stdout holds only the receipt; the rest on stderr
        note(
            f"request {done.request.id} closed ({done.request.outcome}); the erasure receipt "
            "was printed on stdout: save it, it cannot be issued again"
        )
    else:
        _show(done.request)


@request_group.group("policy")
def policy_group() -> None:
    """Days to answer each request type (defaults: 30; docs/requests.md)."""


@policy_group.command("show")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def policy_show_command(ctx: click.Context, as_json: bool) -> None:
    """Show the days to answer per request type."""
    with open_session(ctx) as session:
        days = session.request_policy()
    if as_json:
        print_json(days)
    else:
        print_table(["TYPE", "DAYS"], sorted(days.items()))


@policy_group.command("set")
@click.option("--type", "kind", type=click.Choice(REQUEST_TYPES), required=True)
@click.option("--days", type=click.IntRange(1, 366), required=True)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def policy_set_command(ctx: click.Context, kind: str, days: int, as_json: bool) -> None:
    """Set the days to answer a request type (open requests keep their due date)."""
    with open_session(ctx) as session:
        session.set_request_policy(kind, days)
    if as_json:
        print_json({"type": kind, "days": days})
    else:
        echo(f"{kind}: {days} days")


@click.group("consent")
def consent_group() -> None:
    """Customers' consent, kept with its history (who, when, what, which channel)."""


@consent_group.command("set")
@click.argument("customer_id", metavar="CUSTOMER")
@click.argument("flags", nargs=-1, required=True, type=KEY_VALUE, metavar="NAME=yes|no...")
@click.option("--channel", type=click.Choice(CHANNELS), required=True)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def consent_set_command(
    ctx: click.Context,
    customer_id: str,
    flags: tuple[tuple[str, str], ...],
    channel: str,
    as_json: bool,
) -> None:
    """Change consent flags (e.g. transfer=no); the change joins the history."""
    wanted = consent_flags(flags)
    with open_session(ctx) as session:
        consent = session.set_consent(customer_id, wanted, channel=channel)
    if as_json:
        print_json(consent)
    else:
        echo(",".join(f"{k}={'yes' if v else 'no'}" for k, v in sorted(consent.items())))
