"""``customer add|add-many|list|show|retain|hold|release``: customers' metadata, retention and
legal holds.
Personal data lives only in records."""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime
from typing import Any

import click

from ..vault import Customer
from ..vault.customers import ADD_BATCH
from ..vault.inputs import MAX_BATCH, MAX_JSON_BYTES, parse_json
from .backend import open_backend
from .context import open_session, store_options, token_option, unlock_options
from .meter import Meter
from .output import echo, json_option, note, print_json, print_pairs, print_table, printable
from .params import DATE_HELP, ISO_MOMENT, KEY_VALUE, consent_flags, page_options

__all__ = ["customer_group"]

STATES = ("active", "shredding", "shredded")


def _consent_text(customer: Customer) -> str:
    return ",".join(f"{k}={'yes' if v else 'no'}" for k, v in sorted(customer.consent.items()))


@click.group("customer")
def customer_group() -> None:
    """Add, list and show customers; change their retention; put them under legal hold
    and release them."""


@customer_group.command("add")
@click.option(
    "--ref",
    metavar="R",
    help="An application reference, e.g. a CRM id. Not personal data: it is stored in clear.",
)
@click.option(
    "--consent",
    "consent",
    multiple=True,
    type=KEY_VALUE,
    metavar="NAME=yes|no",
    help="A consent flag, e.g. transfer=yes (repeatable).",
)
@click.option(
    "--retain-until",
    type=ISO_MOMENT,
    metavar="DATE|TIME",
    help=f"Keep the data at least until then: {DATE_HELP}.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def add_command(
    ctx: click.Context,
    ref: str | None,
    consent: tuple[tuple[str, str], ...],
    retain_until: datetime | None,
    as_json: bool,
) -> None:
    """Add a customer with fresh keys and print its id."""
    flags = consent_flags(consent)
    with open_backend(ctx) as session:
        customer_id = session.add_customer(ref=ref, consent=flags, retain_until=retain_until)
        customer = session.customer(customer_id) if as_json else None
    if customer is not None:
        print_json(customer.to_json())
    else:
        echo(customer_id)


@customer_group.command("add-many")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="FILE's format (default: csv for a name ending .csv, else JSON lines).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=ADD_BATCH,
    show_default=True,
    help="Customers per transaction.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def add_many_command(
    ctx: click.Context, source: str, fmt: str | None, batch_size: int, as_json: bool
) -> None:
    """Add many customers from FILE (`-`: stdin) and print their ids, one per line, in
    the file's order as each batch commits.

    JSON lines: one object per line, with any of "ref", "consent" (an object of names
    to true/false) and "retain_until" (a date or RFC 3339 time); blank lines are
    skipped. CSV: a header row naming "ref", "retain_until" and "consent:NAME" columns
    (yes/no); an empty cell is no value. Every line is checked before anything is
    written. Each batch is one transaction; if one fails, the batches before it stay
    added (their ids were printed) and the command exits 1. With --json, one object:
    {"added": [ids], "seconds": S}."""
    raw = _read_source(source)
    if fmt is None:
        fmt = "csv" if source.lower().endswith(".csv") else "jsonl"
    specs = _csv_specs(raw) if fmt == "csv" else _jsonl_specs(raw)
    added: list[str] = []

    def committed(ids: list[str]) -> None:
        added.extend(ids)
        meter(len(ids))
        if not as_json:
            for customer_id in ids:
                echo(customer_id)

    with (
        open_session(ctx) as session,
        Meter("adding customers", unit="customers", expected=len(specs)) as meter,
    ):
        session.add_customers(specs, batch_size=batch_size, on_batch=committed)
    if as_json:
        print_json({"added": added, "seconds": round(meter.elapsed, 3)})
    else:
        note(f"added {len(added):,} customer(s) in {meter.elapsed:.1f} s")


def _read_source(source: str) -> bytes:
    try:
        if source == "-":
            return sys.stdin.buffer.read(MAX_JSON_BYTES + 1)
        with open(source, "rb") as handle:
            return handle.read(MAX_JSON_BYTES + 1)
    except OSError as error:
        raise click.BadParameter(f"cannot read {source}: {error.strerror}") from None


def _text(raw: bytes) -> str:
    if len(raw) > MAX_JSON_BYTES:
        raise click.BadParameter(f"FILE is larger than {MAX_JSON_BYTES:,} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise click.BadParameter("FILE is not UTF-8 text") from None


def _jsonl_specs(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(_text(raw).splitlines(), start=1):
        if not line.strip():
            continue
        value = parse_json(line, what=f"line {number}", fail=click.BadParameter)
        if not isinstance(value, dict):
            raise click.BadParameter(f"line {number} is not a JSON object")
        out.append(value)
    return out


def _csv_specs(raw: bytes) -> list[dict[str, Any]]:
    try:
        rows = list(csv.reader(io.StringIO(_text(raw), newline="")))
    except csv.Error as error:
        raise click.BadParameter(f"FILE is not valid CSV ({error})") from None
    if not rows:
        return []
    header = [name.strip() for name in rows[0]]
    unknown = [
        n for n in header if n not in ("ref", "retain_until") and not n.startswith("consent:")
    ]
    if unknown or len(set(header)) < len(header):
        raise click.BadParameter(
            'the CSV header names each of "ref", "retain_until" and "consent:NAME" at most '
            f"once (found {printable(', '.join(unknown or header))[:200]})"
        )
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise click.BadParameter(f"CSV line {number} has {len(row)} cells, not {len(header)}")
        spec: dict[str, Any] = {}
        flags = []
        for name, cell in zip(header, row, strict=True):
            if not cell:
                continue
            if name.startswith("consent:"):
                flags.append((name.removeprefix("consent:"), cell))
            else:
                spec[name] = cell
        if flags:
            try:
                spec["consent"] = consent_flags(flags)
            except click.BadParameter as error:
                raise click.BadParameter(f"CSV line {number}: {error.message}") from None
        out.append(spec)
    return out


@customer_group.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only customers in this state.")
@page_options
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def list_command(
    ctx: click.Context, state: str | None, limit: int | None, after: str | None, as_json: bool
) -> None:
    """List customers: all, oldest first; or with --limit/--after one page, in id order.
    With --json and a page: {"customers": [...], "next": CURSOR or null}."""
    paged = limit is not None or after is not None
    with open_backend(ctx) as session:
        found = session.list_customers(state=state, limit=limit, after=after)
    if as_json:
        items = [c.to_json() for c in found]
        print_json({"customers": items, "next": found.next} if paged else items)
        return
    if found.next is not None:
        note(f"more customers: --after {found.next}")
    if not found:
        echo("no customers" + (f" in state {state}" if state else ""))
        return
    print_table(
        ["ID", "STATE", "REF", "CREATED", "RETAIN UNTIL", "HOLD", "CONSENT"],
        [
            [
                c.id,
                c.state,
                c.ref,
                c.created,
                c.retain_until,
                "yes" if c.legal_hold else "no",
                _consent_text(c) or None,
            ]
            for c in found
        ],
    )


@customer_group.command("show")
@click.argument("customer_id", metavar="ID", required=False)
@click.option(
    "--ref",
    metavar="R",
    help="Find the customer by its application reference instead of its id.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def show_command(
    ctx: click.Context, customer_id: str | None, ref: str | None, as_json: bool
) -> None:
    """Show one customer's metadata (also for a shredded customer), by ID or by --ref.
    Exits 4 when there is no such customer."""
    if (customer_id is None) == (ref is None):
        raise click.UsageError("give a customer ID or --ref, not both")
    with open_backend(ctx) as session:
        if ref is not None:
            customer = session.customer_by_ref(ref)
        else:
            assert customer_id is not None
            customer = session.customer(customer_id)
    if as_json:
        print_json(customer.to_json())
        return
    print_pairs(
        [
            ("id", customer.id),
            ("state", customer.state),
            ("ref", customer.ref),
            ("created", customer.created),
            ("retain until", customer.retain_until),
            ("legal hold", "yes" if customer.legal_hold else "no"),
            ("consent", _consent_text(customer) or None),
            ("shredded", customer.shredded),
        ]
    )


@customer_group.command("refs")
@click.option(
    "--unique/--not-unique",
    "unique",
    default=None,
    help="Declare refs unique (refused while customers share a ref) or stop.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def refs_command(ctx: click.Context, unique: bool | None, as_json: bool) -> None:
    """Declare whether customer refs are unique in this vault (needs admin). While they
    are, adding a customer with a ref another customer has is refused."""
    if unique is None:
        raise click.UsageError("give --unique or --not-unique")
    with open_session(ctx) as session:
        session.set_unique_refs(unique)
    if as_json:
        print_json({"unique_refs": unique})
    else:
        echo("customer refs are " + ("unique" if unique else "not unique") + " in this vault")


@customer_group.command("retain")
@click.argument("customer_id", metavar="CUSTOMER")
@click.option(
    "--until",
    "until",
    type=ISO_MOMENT,
    metavar="DATE|TIME",
    help=f"The new retention date: {DATE_HELP}.",
)
@click.option("--forever", is_flag=True, help="No retention date: keep until shredded.")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def retain_command(
    ctx: click.Context, customer_id: str, until: datetime | None, forever: bool, as_json: bool
) -> None:
    """Change when CUSTOMER's data is due for erasure by `shred --expired` (admin;
    logged). Give exactly one of --until and --forever."""
    if (until is None) == (not forever):
        raise click.UsageError("give exactly one of --until DATE|TIME and --forever")
    with open_backend(ctx) as session:
        stored = session.set_retention(customer_id, until)
    if as_json:
        print_json({"customer": customer_id, "retain_until": stored})
    else:
        echo(f"customer {customer_id}: kept until {stored or 'shredded on request'}")


@customer_group.command("hold")
@click.argument("customer_id", metavar="CUSTOMER")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def hold_command(ctx: click.Context, customer_id: str, as_json: bool) -> None:
    """Put CUSTOMER under legal hold: it cannot be shredded, not even by
    `shred --expired`, until released."""
    with open_backend(ctx) as session:
        session.hold(customer_id)
    if as_json:
        print_json({"customer": customer_id, "legal_hold": True})
    else:
        echo(f"customer {customer_id} is under legal hold")


@customer_group.command("release")
@click.argument("customer_id", metavar="CUSTOMER")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def release_command(ctx: click.Context, customer_id: str, as_json: bool) -> None:
    """Release CUSTOMER's legal hold: it may be shredded again."""
    with open_backend(ctx) as session:
        session.release(customer_id)
    if as_json:
        print_json({"customer": customer_id, "legal_hold": False})
    else:
        echo(f"released the legal hold on customer {customer_id}")
