"""``principal add|list|revoke`` and ``role add|list``: who may do what (DESIGN §6).

A principal's token is printed once, by ``principal add``, and never again: the vault
keeps only its SHA-256. Give it to its holder through a channel you trust; they pass it
with ``--token`` (better: ``SHREDVAULT_TOKEN``) to act with that role.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from ..vault import ACTIONS, Principal, Role
from .context import open_session, store_options, token_option, unlock_options
from .output import json_option, note, print_json, print_table
from .params import DATE_HELP, ISO_MOMENT, comma_list

__all__ = ["principal_group", "rfc3339", "role_group"]


def rfc3339(moment: datetime) -> str:
    """The vault's timestamp form (UTC, microseconds, ``Z``), which sorts like the time:
    role expiries are compared with the vault clock as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _note_if_past(moment: datetime | None, what: str) -> None:
    if moment is not None and moment <= datetime.now(UTC):
        note(f"note: that expiry has passed: the {what} allows nothing from now on")


def _names(values: frozenset[str] | None) -> str:
    return "all" if values is None else ",".join(sorted(values)) or "none"


# -- principals -------------------------------------------------------------------------


@click.group("principal")
def principal_group() -> None:
    """Add, list and revoke principals: named tokens that act with a role."""


@principal_group.command("add")
@click.argument("name")
@click.option(
    "--role", required=True, metavar="ROLE", help="admin, operator, auditor or a custom role."
)
@click.option(
    "--expires",
    type=ISO_MOMENT,
    metavar="DATE|TIME",
    help=f"The token stops working then: {DATE_HELP}.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def principal_add_command(
    ctx: click.Context, name: str, role: str, expires: datetime | None, as_json: bool
) -> None:
    """Add principal NAME with ROLE and print its token, once.

    The vault stores only the token's hash: it cannot be shown again. Lost tokens are
    revoked and replaced, never recovered.
    """
    with open_session(ctx) as session:
        token = session.add_principal(name, role=role, expires=expires)
    if as_json:
        print_json(
            {
                "name": name,
                "role": role,
                "token": token,
                "expires": rfc3339(expires) if expires is not None else None,
            }
        )
    else:
        click.echo(token)
    note(
        f"token of principal {name!r} (role {role}) printed above: it will not be shown "
        "again. Hand it over now; its holder passes it in SHREDVAULT_TOKEN."
    )
    _note_if_past(expires, "token")


@principal_group.command("list")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def principal_list_command(ctx: click.Context, as_json: bool) -> None:
    """List principals with their roles and state (never their tokens)."""
    with open_session(ctx) as session:
        found: list[Principal] = session.list_principals()
    if as_json:
        print_json([p.to_json() for p in found])
    elif not found:
        click.echo("no principals (add one with: shredvault principal add NAME --role ROLE)")
    else:
        print_table(
            ["NAME", "ROLE", "EXPIRES", "REVOKED", "CREATED"],
            [[p.name, p.role, p.expires, "yes" if p.revoked else "no", p.created] for p in found],
        )


@principal_group.command("revoke")
@click.argument("name")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def principal_revoke_command(ctx: click.Context, name: str, as_json: bool) -> None:
    """Revoke principal NAME's token, at once and in every process."""
    with open_session(ctx) as session:
        session.revoke_principal(name)
    if as_json:
        print_json({"principal": name, "revoked": True})
    else:
        click.echo(f"revoked principal {name}")


# -- roles ------------------------------------------------------------------------------


def _actions(values: tuple[str, ...]) -> list[str]:
    actions = comma_list(values)
    unknown = sorted(set(actions) - ACTIONS)
    if unknown:
        raise click.BadParameter(
            f"unknown action(s) {', '.join(unknown)}; choose from {', '.join(sorted(ACTIONS))}",
            param_hint="'--actions'",
        )
    if not actions:
        raise click.BadParameter("name at least one action", param_hint="'--actions'")
    return actions


def _optional_list(values: tuple[str, ...]) -> list[str] | None:
    """None (every one) when the option was not given at all."""
    return comma_list(values) if values else None


@click.group("role")
def role_group() -> None:
    """Add and list roles: allowed actions on which kinds, fields and purposes."""


@role_group.command("add")
@click.argument("name")
@click.option(
    "--actions",
    "actions",
    multiple=True,
    required=True,
    metavar="A,B,...",
    help=f"Allowed actions, from: {', '.join(sorted(ACTIONS - {'admin'}))}.",
)
@click.option(
    "--kinds",
    multiple=True,
    metavar="K,...",
    help="Only these record kinds (default: every kind).",
)
@click.option(
    "--fields",
    multiple=True,
    metavar="KIND.FIELD,...",
    help="Only these fields of the kinds named (default: every field).",
)
@click.option(
    "--purposes",
    multiple=True,
    metavar="P,...",
    help="Only for these purposes (default: every declared purpose).",
)
@click.option(
    "--expires",
    type=ISO_MOMENT,
    metavar="DATE|TIME",
    help=f"The role allows nothing after then, e.g. the end of a handover: {DATE_HELP}.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the role of that name if it exists (its principals get the new spec).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def role_add_command(
    ctx: click.Context,
    name: str,
    actions: tuple[str, ...],
    kinds: tuple[str, ...],
    fields: tuple[str, ...],
    purposes: tuple[str, ...],
    expires: datetime | None,
    replace: bool,
    as_json: bool,
) -> None:
    """Add custom role NAME. Anything not allowed is denied.

    A role of that name is changed only with --replace: its principals get the new
    allowances from their next call.
    """
    role = Role.build(
        name,
        actions=_actions(actions),
        kinds=_optional_list(kinds),
        fields=_optional_list(fields),
        purposes=_optional_list(purposes),
        expires=rfc3339(expires) if expires is not None else None,
    )
    with open_session(ctx) as session:
        session.add_role(role, replace=replace)
    if as_json:
        print_json(role.to_json())
    else:
        click.echo(
            f"role {role.name}: {_names(role.actions)} on kinds {_names(role.kinds)}, "
            f"purposes {_names(role.purposes)}"
            + (f", until {role.expires}" if role.expires else "")
        )
    _note_if_past(expires, "role")


@role_group.command("list")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def role_list_command(ctx: click.Context, as_json: bool) -> None:
    """List the built-in and custom roles."""
    with open_session(ctx) as session:
        found = session.list_roles()
    if as_json:
        print_json([r.to_json() for r in found])
        return
    print_table(
        ["ROLE", "ACTIONS", "KINDS", "FIELDS", "PURPOSES", "EXPIRES"],
        [
            [
                r.name + (" (built-in)" if r.builtin else ""),
                _names(r.actions),
                _names(r.kinds),
                "all"
                if r.fields is None
                else ",".join(sorted(f"{k}.{f}" for k, fs in r.fields.items() for f in fs)),
                _names(r.purposes),
                r.expires,
            ]
            for r in found
        ],
    )
