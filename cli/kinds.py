"""``kind declare|alter|list``: the record kinds the vault may hold (minimal collection)."""

from __future__ import annotations

import click

from ..vault import KindSpec
from .context import open_session, store_options, token_option, unlock_options
from .output import json_option, print_json, print_table
from .params import KEY_VALUE, comma_list, field_values

__all__ = ["kind_group"]


def _spec_json(spec: KindSpec) -> dict[str, object]:
    return {"kind": spec.name, **spec.to_json()}


searchable_option = click.option(
    "--searchable",
    "searchable",
    multiple=True,
    type=KEY_VALUE,
    metavar="FIELD=NORMALIZER",
    help="Make FIELD findable by exact match (record find) with a normalizer: digits, "
    "email or exact (repeatable; docs/search.md).",
)


@click.group("kind")
def kind_group() -> None:
    """Declare and list record kinds: their fields and the purposes they serve."""


@kind_group.command("declare")
@click.argument("name")
@click.option(
    "--fields",
    "fields",
    multiple=True,
    required=True,
    metavar="A,B,...",
    help="Fields the kind may hold (comma-separated; repeatable).",
)
@click.option(
    "--purposes",
    "purposes",
    multiple=True,
    required=True,
    metavar="X,Y,...",
    help="Purposes the kind may be used for (comma-separated; repeatable).",
)
@searchable_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def declare_command(
    ctx: click.Context,
    name: str,
    fields: tuple[str, ...],
    purposes: tuple[str, ...],
    searchable: tuple[tuple[str, str], ...],
    as_json: bool,
) -> None:
    """Declare (or redeclare) kind NAME (admin). Storing anything undeclared is refused."""
    search = field_values(searchable, "--searchable")
    with open_session(ctx) as session:
        spec = session.declare_kind(
            name, fields=comma_list(fields), purposes=comma_list(purposes), searchable=search
        )
    if as_json:
        print_json(_spec_json(spec))
    else:
        found = ", ".join(f"{f}={n}" for f, n in spec.searchable)
        click.echo(
            f"declared kind {spec.name}: fields {', '.join(sorted(spec.fields))}; "
            f"purposes {', '.join(sorted(spec.purposes))}"
            + (f"; searchable {found}" if found else "")
        )


@kind_group.command("alter")
@click.argument("name")
@click.option(
    "--add-fields",
    "add_fields",
    multiple=True,
    metavar="A,B,...",
    help="Fields to add (a deprecated field becomes writable again; comma-separated).",
)
@click.option(
    "--deprecate-fields",
    "deprecate_fields",
    multiple=True,
    metavar="A,B,...",
    help="Fields to deprecate: still read, removed by an update setting them to null, "
    "no longer written (comma-separated).",
)
@click.option(
    "--add-purposes",
    "add_purposes",
    multiple=True,
    metavar="X,Y,...",
    help="Purposes to add (comma-separated).",
)
@searchable_option
@click.option(
    "--unsearchable",
    "unsearchable",
    multiple=True,
    metavar="A,B,...",
    help="Fields no longer searchable: their index entries are dropped (comma-separated).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def alter_command(
    ctx: click.Context,
    name: str,
    add_fields: tuple[str, ...],
    deprecate_fields: tuple[str, ...],
    add_purposes: tuple[str, ...],
    searchable: tuple[tuple[str, str], ...],
    unsearchable: tuple[str, ...],
    as_json: bool,
) -> None:
    """Evolve kind NAME without rewriting its records (admin; logged as schema.alter).
    A change of searchable fields rebuilds the kind's index (its records are
    decrypted once, in the same transaction)."""
    adds, drops, purposes = (
        comma_list(add_fields),
        comma_list(deprecate_fields),
        comma_list(add_purposes),
    )
    search, unsearch = field_values(searchable, "--searchable"), comma_list(unsearchable)
    if not (adds or drops or purposes or search or unsearch):
        raise click.UsageError(
            "give --add-fields, --deprecate-fields, --add-purposes, --searchable or --unsearchable"
        )
    with open_session(ctx) as session:
        spec = session.alter_kind(
            name,
            add_fields=adds,
            deprecate_fields=drops,
            add_purposes=purposes,
            add_searchable=search,
            drop_searchable=unsearch,
        )
    if as_json:
        print_json(_spec_json(spec))
    else:
        deprecated = f"; deprecated {', '.join(sorted(spec.deprecated))}" if spec.deprecated else ""
        click.echo(
            f"altered kind {spec.name}: fields {', '.join(sorted(spec.writable))}{deprecated}; "
            f"purposes {', '.join(sorted(spec.purposes))}"
        )


@kind_group.command("list")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List the declared kinds (needs the list action; logged)."""
    with open_session(ctx) as session:
        specs = sorted(session.kinds().values(), key=lambda s: s.name)
    if as_json:
        print_json([_spec_json(s) for s in specs])
    elif not specs:
        click.echo("no kinds declared (add one with: shredvault kind declare)")
    else:
        print_table(
            ["KIND", "FIELDS", "PURPOSES", "DEPRECATED", "SEARCHABLE"],
            [
                [
                    s.name,
                    ",".join(sorted(s.writable)),
                    ",".join(sorted(s.purposes)),
                    ",".join(sorted(s.deprecated)) or None,
                    ",".join(f"{f}={n}" for f, n in s.searchable) or None,
                ]
                for s in specs
            ],
        )
