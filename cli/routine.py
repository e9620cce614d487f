"""The routine (issue 23, items 4 and 5): ``backup drill`` rehearses a restore in a
temporary copy that is always deleted; ``role review`` lists who may do what and what
they did since the last review, and ``--done`` records the review. ``backup
drill-interval`` and ``role review-interval`` set how often each is due; ``keys
status`` and ``audit report`` warn when one is overdue (docs/drills.md,
docs/access-control.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..vault import DrillReport, Vault
from .access import role_group
from .backups import backup_group
from .context import (
    acting_session,
    open_session,
    resolve_credential,
    settings_of,
    store_options,
    token_option,
    unlock_options,
)
from .meter import Phases
from .output import json_option, note, print_json, print_pairs, print_table
from .receipts import save_recovered_receipts

__all__ = ["drill_command", "review_command"]

_PHASES = {
    "verifying": ("verifying the archive", "bytes"),
    "restoring": ("restoring into a temporary copy", "bytes"),
    "replaying": ("replaying shreds", "shreds"),
    "sampling": ("decrypting a sample", "customers"),
    "checking shreds": ("checking shredded customers", "customers"),
}
_STEPS = {
    "verify_archive": "verify archive",
    "restore": "restore and replay",
    "verify_log": "verify restored log",
    "sample": "decrypt sample",
    "shreds": "check shreds",
    "cleanup": "delete copy",
}
_INTERVAL = click.IntRange(1, 3660)
_ROLE_COLUMNS = ["ROLE", "ACTIONS", "KINDS", "FIELDS", "PURPOSES", "EXPIRES", "PRINCIPALS"]
_ROLE_COLUMNS += ["LAST USE", "ENTRIES", "DENIED"]


@backup_group.command("drill")
@click.argument(
    "archive", metavar="ARCHIVE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--sample",
    type=click.IntRange(0, 100_000),
    default=20,
    show_default=True,
    metavar="N",
    help="Decrypt every record of N customers picked at random in the copy.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def drill_command(ctx: click.Context, archive: Path, sample: int, as_json: bool) -> None:
    """Rehearse restoring ARCHIVE (a backup of this vault) without touching the vault.

    The archive is verified under the vault's key and restored into a temporary copy
    beside the vault (for a vault in PostgreSQL, also a temporary schema in its
    database), replaying every shred logged since; the copy's log chain is verified,
    a random sample of customers is decrypted and every customer shredded in the vault
    is checked to have no key in the copy. The copy is then deleted, whatever
    happened. Each step is timed; the drill is logged as backup.drill, passed or
    failed. Unlocks the copy with the same passphrase or keyfile as the vault. Admin
    only. Exits 5 if the archive or the copy fails a check, 6 for a wrong secret.
    """
    settings = settings_of(ctx)
    root = settings.require_vault()
    settings.acting_token()
    credential = resolve_credential(settings)
    note(f"drilling a restore of {archive} ...")
    with (
        Vault.open(root, data_url=settings.data_url, **credential.kwargs()) as vault,
        Phases(_PHASES) as phases,
    ):
        if vault.recovered_receipts:
            save_recovered_receipts(vault)
        report = acting_session(ctx, vault).restore_drill(
            archive, sample=sample, progress=phases, **credential.kwargs()
        )
    if as_json:
        print_json(report.to_json())
        return
    _print_drill(report)


def _print_drill(report: DrillReport) -> None:
    click.echo(
        f"drill of backup {report.backup} passed in {report.total_ms / 1000:.1f} s "
        f"(logged at seq {report.seq})"
    )
    print_pairs(
        [
            *[(_STEPS.get(step, step), f"{ms:,} ms") for step, ms in report.ms.items()],
            ("snapshot seq", report.snapshot_seq),
            ("shreds replayed", report.shreds_replayed),
            ("restored log", f"{report.log_entries:,} entries, verified"),
            (
                "sample",
                f"{report.records_decrypted:,} records of {report.sampled} of "
                f"{report.customers_in_copy:,} customers decrypted, "
                f"{report.decrypt_failures} failed",
            ),
            (
                "shredded customers",
                f"{report.shredded_checked:,} checked, {report.shredded_readable} readable",
            ),
            ("temporary copy", "deleted" if report.copy_removed else "NOT deleted"),
        ],
        indent="  ",
    )


@backup_group.command("drill-interval")
@click.argument("days", type=_INTERVAL)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def drill_interval_command(ctx: click.Context, days: int, as_json: bool) -> None:
    """Set how many DAYS may pass between restore drills (default 90) before `keys
    status` and `audit report` warn. Admin only; logged as policy.set."""
    with open_session(ctx) as session:
        session.set_drill_interval(days)
    if as_json:
        print_json({"policy": "drill_interval_days", "days": days})
    else:
        click.echo(f"restore drills are due every {days} days")


@role_group.command("review")
@click.option("--done", is_flag=True, help="Record that the review was made (admin only).")
@click.option(
    "--note",
    "review_note",
    metavar="TEXT",
    help="With --done: a short note for the log (decisions, never personal data).",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def review_command(ctx: click.Context, done: bool, review_note: str | None, as_json: bool) -> None:
    """Review third parties' access: every custom role and principal with its grants
    (actions, kinds, fields, purposes, expiry), its last use and its log entries
    (and denials) since the last review. Needs the audit action (an auditor may list).

    With --done, record that the review was made (logged as role.review; admin only):
    the counts start again from here and the next review is due after the interval
    (`role review-interval`).
    """
    if review_note is not None and not done:
        raise click.UsageError("--note goes with --done")
    with open_session(ctx) as session:
        result = session.review_done(note=review_note) if done else session.role_review()
    if as_json:
        print_json(result)
    elif done:
        click.echo(f"review recorded at seq {result['seq']}")
        print_pairs(
            [
                ("principals reviewed", result["principals"]),
                ("custom roles reviewed", result["roles"]),
                ("entries since the last review", result["entries_since_last"]),
            ],
            indent="  ",
        )
    else:
        _print_review(result)


def _names(values: Any) -> str:
    return "all" if values is None else ",".join(values) or "-"


def _print_review(result: dict[str, Any]) -> None:
    policy = result["policy"]
    since = result["since"] or "ever (no review recorded)"
    click.echo(f"access review: activity since {since}")
    print_table(
        _ROLE_COLUMNS,
        [
            [
                r["name"],
                _names(r["actions"]),
                _names(r["kinds"]),
                _names(r["fields"]),
                _names(r["purposes"]),
                r["role_expires"] or "never",
                ",".join(r["principals"]) or "-",
                r["last_use"] or "never",
                r["entries_since_review"],
                r["denied_since_review"],
            ]
            for r in result["roles"]
        ],
    )
    click.echo("")
    print_table(
        ["PRINCIPAL", "ROLE", "STATE", "EXPIRES", "LAST USE", "ENTRIES", "DENIED"],
        [
            [
                p["name"],
                p["role"],
                p["state"],
                p["expires"] or "never",
                p["last_use"] or "never",
                p["entries_since_review"],
                p["denied_since_review"],
            ]
            for p in result["principals"]
        ],
    )
    state = "OVERDUE" if policy["overdue"] else "due"
    note(f"next review {state} {policy['due']} (every {policy['interval_days']} days)")


@role_group.command("review-interval")
@click.argument("days", type=_INTERVAL)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def review_interval_command(ctx: click.Context, days: int, as_json: bool) -> None:
    """Set how many DAYS may pass between access reviews (default 90) before `keys
    status` and `audit report` warn. Admin only; logged as policy.set."""
    with open_session(ctx) as session:
        session.set_review_interval(days)
    if as_json:
        print_json({"policy": "review_interval_days", "days": days})
    else:
        click.echo(f"access reviews are due every {days} days")
