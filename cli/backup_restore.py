"""``backup restore`` (DESIGN §7a, docs/backup.md): a restore that never brings a
shredded customer back without saying so.

Only the live vault (``--replay-from``) knows every shred up to now. An exported log
knows them up to its last signed head, receipts only the shreds they name, and no
source nothing after the snapshot: each leaves a *window* of unknown shreds, and the
restore refuses unless ``--accept-unreplayed-window`` is given; it then prints the
window and logs it in the restored vault (``keys status`` shows it too).

ARCHIVE may be ``-``: the archive is read from stdin (decrypted by age/gpg in a pipe);
the secret must then come from --passphrase-file, --keyfile or the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

import click

from ..vault import ShredSource, VaultError, restore_backup
from .context import check_data_url, resolve_credential, settings_of, unlock_options
from .exit_codes import CommandError
from .meter import Phases
from .output import json_option, note, print_json, print_pairs
from .receipts import read_pubkey

__all__ = ["ARCHIVE_IN", "archive_input", "restore_command"]

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_READABLE_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
#: an archive to read: a file, or ``-`` for stdin
ARCHIVE_IN = click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
_NO_COMPLETE_SOURCE = (
    "{what}: restoring could bring back customers shredded after {since}. Pass "
    "--replay-from VAULT_DIR (the live vault, the only complete source), or "
    "--accept-unreplayed-window to restore anyway: the window of unknown shreds is then "
    "printed and logged in the restored vault"
)
_WHAT = {
    None: "no newer source of shreds was given",
    "--replay-log": "an exported log shows shreds only up to its last signed head",
    "--replay-receipts": "receipts show only the shreds they name, never that nobody else "
    "was shredded",
}
_PHASES = {
    "verifying": ("verifying the archive", "bytes"),
    "replaying": ("replaying shreds", "shreds"),
}


def archive_input(archive: Path) -> Path | BinaryIO:
    """The archive to read: the file, or stdin for ``-`` (refused from a terminal)."""
    if str(archive) != "-":
        return archive
    if sys.stdin.isatty():
        raise click.UsageError("ARCHIVE is '-' but stdin is a terminal: pipe the archive in")
    return sys.stdin.buffer


def _shred_source(
    replay_from: Path | None,
    replay_data_url: str | None,
    replay_log: Path | None,
    replay_receipts: Path | None,
    accept: bool,
) -> ShredSource:
    given = [
        name
        for name, value in (
            ("--replay-from", replay_from),
            ("--replay-log", replay_log),
            ("--replay-receipts", replay_receipts),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"give one source of newer shreds, not {' and '.join(given)}")
    if replay_data_url is not None and replay_from is None:
        raise click.UsageError("--replay-data-url goes with --replay-from VAULT_DIR")
    if given == ["--replay-from"] and accept:
        raise click.UsageError(
            "--accept-unreplayed-window is for a source other than the live vault; "
            "--replay-from leaves no window"
        )
    if given != ["--replay-from"] and not accept:
        source = given[0] if given else None
        since = "the backup" if source != "--replay-log" else "the log's last signed head"
        raise CommandError(_NO_COMPLETE_SOURCE.format(what=_WHAT[source], since=since))
    return ShredSource(
        vault_dir=replay_from,
        vault_data_url=replay_data_url,
        log_export=replay_log,
        receipts_dir=replay_receipts,
    )


def _url_option(value: str | None, option: str) -> str | None:
    try:
        return check_data_url(value)
    except click.BadParameter as error:
        error.param_hint = f"'{option}'"
        raise


def window_text(window: dict[str, Any]) -> str:
    """``seq 41 (2026-…Z) to 2026-…Z``."""
    return f"seq {window['from_seq']} ({window['from_ts']}) to {window['to']}"


@click.command("restore")
@click.argument("archive", metavar="ARCHIVE", type=ARCHIVE_IN)
@click.option(
    "--to",
    "target",
    metavar="DIR",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Restore into this new or empty directory (never over a vault).",
)
@click.option(
    "--to-data-url",
    metavar="URL",
    help="Put the restored vault's data in this empty database (PostgreSQL) instead of "
    "DIR/data.db (never printed).",
)
@click.option(
    "--replay-from",
    metavar="VAULT_DIR",
    type=_READABLE_DIR,
    help="Replay the shreds recorded in this live vault's log since the backup (the only "
    "source that leaves no window).",
)
@click.option(
    "--replay-data-url",
    metavar="URL",
    help="The data URL of the --replay-from vault, when its data is in PostgreSQL.",
)
@click.option(
    "--replay-log",
    metavar="LOG.jsonl",
    type=_READABLE_FILE,
    help="Replay the shreds in this exported log (`audit export`); it must reach back to "
    "the backup's seq. Leaves a window: needs --accept-unreplayed-window.",
)
@click.option(
    "--replay-receipts",
    metavar="DIR",
    type=_READABLE_DIR,
    help="Replay the shreds these erasure receipts (DIR/*.json) prove. Leaves a window: "
    "needs --accept-unreplayed-window.",
)
@click.option(
    "--accept-unreplayed-window",
    "accept",
    is_flag=True,
    help="Restore from a source other than the live vault (or none): anyone shredded in "
    "the window it cannot see becomes readable again. The window is printed and logged.",
)
@click.option("--accept-unreplayed-shreds", "accept", is_flag=True, hidden=True)
@click.option(
    "--pubkey",
    "pubkey_file",
    metavar="FILE",
    type=_READABLE_FILE,
    help="Trust this vault public key (as `audit pubkey` prints it) for the archive and the "
    "replay source, not the archive's copy.",
)
@json_option
@unlock_options
@click.pass_context
def restore_command(
    ctx: click.Context,
    archive: Path,
    target: Path,
    to_data_url: str | None,
    replay_from: Path | None,
    replay_data_url: str | None,
    replay_log: Path | None,
    replay_receipts: Path | None,
    accept: bool,
    pubkey_file: Path | None,
    as_json: bool,
) -> None:
    """Restore ARCHIVE (a file, or - for stdin) into a new vault at --to DIR, replaying
    every later shred first.

    The archive is verified, the replay source is verified under the vault's key, both
    stores are written into DIR (marked incomplete), and every customer shredded after
    the backup, as the source shows (a shred that crashed after its intent included), is
    shredded again before the marker goes. Only the live vault knows every shred up to
    now: any other source leaves a window of unknown shreds, refused unless
    --accept-unreplayed-window, then printed and logged. A restore refused before
    writing leaves DIR as it was; one interrupted later leaves DIR refusing to open:
    restore again into a new empty directory.

    Unlock with the passphrase or keyfile the vault had when the backup was made
    (--passphrase-file, --keyfile or the environment). The global --vault/--data-url are
    not used for the target.
    """
    target_url = _url_option(to_data_url, "--to-data-url")
    source = _shred_source(
        replay_from,
        _url_option(replay_data_url, "--replay-data-url"),
        replay_log,
        replay_receipts,
        accept,
    )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(
            f"{target} exists and is not empty; restore only into a new or empty directory"
        )
    public_key = read_pubkey(pubkey_file) if pubkey_file is not None else None
    reading = archive_input(archive)
    credential = resolve_credential(settings_of(ctx))
    note(f"verifying {archive} and restoring into {target} ...")
    try:
        with Phases(_PHASES) as phases:
            result = restore_backup(
                reading,
                target,
                data_url=target_url,
                source=source,
                accept_unreplayed_window=accept,
                public_key=public_key,
                progress=phases,
                **credential.kwargs(),
            )
    except VaultError:
        if target.is_dir() and any(target.iterdir()):
            note(
                f"note: {target} is left as an unfinished restore and will not open; delete "
                "it, then restore again into a new or empty directory"
            )
        raise
    summary: dict[str, Any] = {"path": str(target), "data": "external" if target_url else "sqlite"}
    summary.update(result)
    window = result["unreplayed_window"]
    if as_json:
        print_json(summary)
    else:
        click.echo(f"restored backup {result['backup']} into {target}")
        print_pairs(
            [
                ("snapshot seq", result["snapshot_seq"]),
                ("data", "the database at --to-data-url" if target_url else "data.db"),
                ("replayed from", f"{result['replayed_from']} (up to seq {result['source_seq']})"),
                ("shreds replayed", result["shreds_replayed"]),
                ("unreplayed window", "none" if window is None else window_text(window)),
                ("public key", result["public_key"]),
            ],
            indent="  ",
        )
        for customer in result["replayed"]:
            click.echo(f"  shredded again: {customer}")
    if window is not None:
        note(
            f"warning: shreds in the window {window_text(window)} are unknown: any customer "
            "shredded then is readable again in the restored vault (the window is logged "
            "there and shown by `keys status`)"
        )
