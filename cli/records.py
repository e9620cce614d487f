"""``record put|update|get|list|find|delete``: encrypted records, each access with a purpose
and logged."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..vault import Record
from ..vault.inputs import parse_json
from .backend import open_backend
from .context import store_options, token_option, unlock_options
from .output import echo, json_option, note, print_json, print_pairs
from .params import KEY_VALUE, field_values, page_options, read_text_input

__all__ = ["record_group"]

# The library refuses records over 1 MiB; read a little more so that it can say so.
_MAX_STDIN = 4 * 1024 * 1024

purpose_option = click.option(
    "--purpose",
    required=True,
    metavar="P",
    help="Why you access the data; must be declared for the record's kind.",
)


def _print_record(record: Record) -> None:
    echo(
        f"{record.id}  {record.kind} v{record.version}  "
        f"customer {record.customer}  updated {record.updated}"
    )
    print_pairs(sorted(record.fields.items()), indent="  ")


def _read_stdin_object() -> dict[str, Any]:
    """The JSON object on stdin, through the input layer's parser (limits on size,
    depth, numbers, duplicate keys, UTF-8); a usage error (exit 2) otherwise."""
    data = sys.stdin.buffer.read(_MAX_STDIN + 1)
    if len(data) > _MAX_STDIN:
        raise click.UsageError("the JSON on stdin is too large for one record")
    value = parse_json(data, what="the JSON on stdin", fail=click.UsageError)
    if not isinstance(value, dict):
        raise click.UsageError("stdin must hold a JSON object of field names to values")
    return value


@click.group("record")
def record_group() -> None:
    """Store, read, list and delete a customer's encrypted records."""


@record_group.command("put")
@click.argument("customer_id", metavar="CUSTOMER")
@click.argument("kind")
@click.argument("source", metavar="[-]", required=False)
@purpose_option
@click.option(
    "--field",
    "field_pairs",
    multiple=True,
    type=KEY_VALUE,
    help="A field value (a string; repeatable). Wins over the same field from stdin.",
)
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read a JSON object of fields from stdin (or -)."
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def put_command(
    ctx: click.Context,
    customer_id: str,
    kind: str,
    source: str | None,
    purpose: str,
    field_pairs: tuple[tuple[str, str], ...],
    from_stdin: bool,
    as_json: bool,
) -> None:
    """Store a record of KIND for CUSTOMER and print its id.

    Fields come from --field NAME=VALUE and/or a JSON object on stdin (give - or
    --stdin); both are merged.
    """
    if source is not None and source != "-":
        raise click.BadParameter("only - (read stdin) may follow KIND", param_hint="'[-]'")
    fields: dict[str, Any] = _read_stdin_object() if from_stdin or source == "-" else {}
    fields.update(field_values(field_pairs, "--field"))
    if not fields:
        raise click.UsageError("no fields: give --field NAME=VALUE or a JSON object on stdin (-)")
    with open_backend(ctx) as session:
        record_id = session.put(customer_id, kind, fields, purpose=purpose)
    if as_json:
        print_json({"id": record_id, "customer": customer_id, "kind": kind})
    else:
        echo(record_id)


@record_group.command("update")
@click.argument("customer_id", metavar="CUSTOMER")
@click.argument("record_id", metavar="RECORD")
@click.argument("source", metavar="[-]", required=False)
@purpose_option
@click.option(
    "--field",
    "field_pairs",
    multiple=True,
    type=KEY_VALUE,
    help="A new field value (a string; repeatable). Wins over the same field from stdin.",
)
@click.option(
    "--remove",
    "removed",
    multiple=True,
    metavar="NAME",
    help="Set a field to null; a deprecated or dropped field is removed (repeatable).",
)
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read a JSON object of fields from stdin (or -)."
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def update_command(
    ctx: click.Context,
    customer_id: str,
    record_id: str,
    source: str | None,
    purpose: str,
    field_pairs: tuple[tuple[str, str], ...],
    removed: tuple[str, ...],
    from_stdin: bool,
    as_json: bool,
) -> None:
    """Merge fields into RECORD of CUSTOMER (a new version, re-encrypted) and print it.

    Fields come from --field NAME=VALUE, --remove NAME (null) and/or a JSON object on
    stdin (give - or --stdin); the others keep their values. Prints only what this
    role may read.
    """
    if source is not None and source != "-":
        raise click.BadParameter("only - (read stdin) may follow RECORD", param_hint="'[-]'")
    fields: dict[str, Any] = _read_stdin_object() if from_stdin or source == "-" else {}
    fields.update(field_values(field_pairs, "--field"))
    for name in removed:
        if name in fields:
            raise click.BadParameter(f"{name!r} is also given a value", param_hint="'--remove'")
        fields[name] = None
    if not fields:
        raise click.UsageError(
            "no fields: give --field NAME=VALUE, --remove NAME or a JSON object on stdin (-)"
        )
    with open_backend(ctx) as session:
        record = session.update(customer_id, record_id, fields, purpose=purpose)
    if as_json:
        print_json(record.to_json())
    else:
        _print_record(record)


@record_group.command("get")
@click.argument("customer_id", metavar="CUSTOMER")
@click.argument("record_id", metavar="RECORD")
@purpose_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def get_command(
    ctx: click.Context, customer_id: str, record_id: str, purpose: str, as_json: bool
) -> None:
    """Decrypt and print one record (the read is logged with its purpose)."""
    with open_backend(ctx) as session:
        record = session.get(customer_id, record_id, purpose=purpose)
    if as_json:
        print_json(record.to_json())
    else:
        _print_record(record)


@record_group.command("list")
@click.argument("customer_id", metavar="CUSTOMER")
@purpose_option
@click.option("--kind", metavar="K", help="Only records of this kind.")
@page_options
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def list_command(
    ctx: click.Context,
    customer_id: str,
    purpose: str,
    kind: str | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
) -> None:
    """Print every record of CUSTOMER usable for the purpose, oldest first (each read is
    logged), or one page with --limit/--after. With --json and a page:
    {"records": [...], "next": CURSOR or null}."""
    paged = limit is not None or after is not None
    with open_backend(ctx) as session:
        found = session.list_records(
            customer_id, purpose=purpose, kind=kind, limit=limit, after=after
        )
    if as_json:
        items = [r.to_json() for r in found]
        print_json({"records": items, "next": found.next} if paged else items)
        return
    if found.next is not None:
        note(f"more records: --after {found.next}")
    if not found:
        echo(f"no records usable for purpose {purpose}")
    for i, record in enumerate(found):
        if i:
            echo()
        _print_record(record)


def _search_value(value: str | None, value_file: Path | None) -> str:
    """The value to find: the argument, or (kept out of shell history) stdin for ``-``
    or a file's text; one trailing line break is dropped from either."""
    given = sum(x is not None for x in (value, value_file))
    if given != 1:
        raise click.UsageError("give the VALUE, - (read it from stdin) or --value-file PATH")
    if value is not None and value != "-":
        return value
    return read_text_input(value_file, "the search value", "--value-file")


@record_group.command("find")
@click.argument("kind")
@click.argument("field")
@click.argument("value", metavar="[VALUE|-]", required=False)
@purpose_option
@click.option(
    "--value-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Read the value from this file (keeps it out of shell history; or give -).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def find_command(
    ctx: click.Context,
    kind: str,
    field: str,
    value: str | None,
    purpose: str,
    value_file: Path | None,
    as_json: bool,
) -> None:
    """Print the records of KIND whose searchable FIELD holds VALUE (exact match after
    the field's normalizer; docs/search.md). Each record returned is logged, with the
    kind, field and count, never the value. Give - to read the value from stdin, or
    --value-file, so it stays out of shell history."""
    wanted = _search_value(value, value_file)
    with open_backend(ctx) as session:
        found = session.find(kind, field, wanted, purpose=purpose)
    if as_json:
        print_json([r.to_json() for r in found])
        return
    if not found:
        echo(f"no {kind} record matches")
    for i, record in enumerate(found):
        if i:
            echo()
        _print_record(record)


@record_group.command("delete")
@click.argument("customer_id", metavar="CUSTOMER")
@click.argument("record_id", metavar="RECORD")
@purpose_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def delete_command(
    ctx: click.Context, customer_id: str, record_id: str, purpose: str, yes: bool, as_json: bool
) -> None:
    """Delete one record of CUSTOMER (logged). Asks first unless --yes."""
    if not yes:
        click.confirm(f"Delete record {record_id} of {customer_id}?", abort=True, err=True)
    with open_backend(ctx) as session:
        session.delete(customer_id, record_id, purpose=purpose)
    if as_json:
        print_json({"customer": customer_id, "record": record_id, "deleted": True})
    else:
        echo(f"deleted {record_id}")
