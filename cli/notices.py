"""``notice prepare|delivered|objected``: change notices before a handover or a new
purpose (docs/requests.md). Thin layers over ``Session``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from ..vault import CHANNELS, NOTICE_REASONS, Notice
from .context import open_session, store_options, token_option, unlock_options
from .output import echo, json_option, note, print_json, print_pairs
from .params import DATE_HELP, ISO_MOMENT

__all__ = ["notice_group"]


def _show(notice: Notice) -> None:
    print_pairs(
        [
            ("notice", notice.id),
            ("customer", notice.customer),
            ("effective", notice.effective),
            ("delivered", notice.delivered),
            ("channel", notice.channel),
            ("objected", notice.objected),
        ]
    )


@click.group("notice")
def notice_group() -> None:
    """Change notices: prepare one per affected customer, mark them delivered, record
    objections; `handover export --require-notice-window` then checks them."""


@notice_group.command("prepare")
@click.option("--reason", type=click.Choice(NOTICE_REASONS), required=True)
@click.option(
    "--effective",
    type=ISO_MOMENT,
    required=True,
    metavar="DATE|TIME",
    help=f"When the change takes effect, the end of the objection window: {DATE_HELP}.",
)
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    required=True,
    metavar="NAME",
    help="Who receives the data (repeatable).",
)
@click.option("--purpose", metavar="NAME", help="The new purpose (for --reason new-purpose).")
@click.option("--contact", metavar="TEXT", help="How to object (a default wording otherwise).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="An existing directory for the notices (NOTICE.md and NOTICE.json each).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def prepare_command(
    ctx: click.Context,
    reason: str,
    effective: datetime,
    recipients: tuple[str, ...],
    purpose: str | None,
    contact: str | None,
    out_dir: Path,
    as_json: bool,
) -> None:
    """Prepare a notice per affected customer (transfer: those whose consent allows
    it; new-purpose: every active customer) and record them."""
    extra = {} if contact is None else {"contact": contact}
    with open_session(ctx) as session:
        batch = session.prepare_notices(
            reason=reason,
            effective=effective,
            recipients=list(recipients),
            out_dir=out_dir,
            purpose=purpose,
            **extra,
        )
    if as_json:
        print_json(batch.to_json())
        return
    echo(f"batch {batch.batch}: {len(batch.notices)} notice(s)")
    note(f"{len(batch.files)} file(s) written to {out_dir}")


def _mark(objected: bool) -> click.Command:
    @click.argument("customer_id", metavar="CUSTOMER")
    @click.option("--notice", "notice_id", required=True, metavar="ID")
    @click.option("--channel", type=click.Choice(CHANNELS), required=True)
    @json_option
    @store_options
    @unlock_options
    @token_option
    @click.pass_context
    def command(
        ctx: click.Context, customer_id: str, notice_id: str, channel: str, as_json: bool
    ) -> None:
        with open_session(ctx) as session:
            mark = session.notice_objected if objected else session.notice_delivered
            marked = mark(customer_id, notice_id, channel=channel)
        if as_json:
            print_json(marked.to_json())
        else:
            _show(marked)

    command.__doc__ = (
        "Record that the customer objected to the notice."
        if objected
        else "Mark the customer's notice delivered (through CHANNEL)."
    )
    return notice_group.command("objected" if objected else "delivered")(command)


delivered_command = _mark(objected=False)
objected_command = _mark(objected=True)
