"""``backup create|list|verify|restore`` (DESIGN §7a): signed archives of both stores that
never bring a shredded customer back.

An archive holds a copy of ``keys.db``: every customer's keys as they were when it was
taken. ``backup list`` shows, per archive, how many customers were shredded since (the
key-copy clock): their keys live on in that copy until it is destroyed. ``backup
restore`` therefore replays every later shred (from the live vault, an exported log or
erasure receipts) before the restored vault serves, and refuses without such a source
unless told explicitly to accept the risk.

``backup verify`` needs no vault and no passphrase. ``backup restore`` unlocks the
*restored* vault with the usual --passphrase-file/--keyfile/environment (the secret the
vault had when the archive was made); the global --vault and --data-url name the live
vault and are not used for the target, which has options of its own (--to,
--to-data-url).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..vault import (
    BackupInfo,
    BackupReport,
    ShredSource,
    VaultError,
    format_public_key,
    restore_backup,
    verify_backup,
)
from .context import (
    acting_session,
    check_data_url,
    open_vault,
    resolve_credential,
    settings_of,
    store_options,
    token_option,
    unlock_options,
)
from .exit_codes import CommandError
from .meter import Meter
from .output import echo, json_option, note, print_json, print_pairs, print_table
from .params import DAYS, NewFile, refuse_existing
from .receipts import read_pubkey
from .trust import PINNED, SELF_ASSERTED, fail_unless_ok, problem, trust_embedded_option, verdict

__all__ = ["backup_group"]

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_READABLE_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_NO_SOURCE = (
    "no newer source of shreds was given: restoring could bring back customers shredded "
    "after this backup. Pass --replay-from VAULT_DIR (the live vault), --replay-log LOG.jsonl "
    "(`audit export`) or --replay-receipts DIR, or --accept-unreplayed-shreds only if you "
    "are sure nobody was shredded since the backup"
)


def _size_text(size: int) -> str:
    """``1.4 MiB (1,468,416 bytes)``."""
    if size < 1024:
        return f"{size:,} bytes"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit} ({size:,} bytes)"


@click.group("backup")
def backup_group() -> None:
    """Signed backup archives; restores that replay every later shred."""


# -- create ---------------------------------------------------------------------------------


def _check_new_archive(path: Path) -> None:
    """Refuse, before unlocking, a path that cannot take the archive."""
    refuse_existing(path, "OUT")
    parent = path.parent
    if not parent.is_dir():
        raise click.BadParameter(f"{parent} is not a directory", param_hint="'OUT'")


@backup_group.command("create")
@click.argument("out", metavar="OUT", type=NewFile("a backup archive"))
@click.option(
    "--expires",
    "expires_days",
    type=DAYS,
    metavar="DAYS",
    help="Record that this copy is to be destroyed after DAYS days (for the key-copy "
    "clock; the archive is not deleted for you). Default: kept until destroyed.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def create_command(
    ctx: click.Context, out: Path, expires_days: float | None, as_json: bool
) -> None:
    """Write a signed backup archive of the vault to OUT (a new file, mode 0600).

    Both stores are copied in one consistent snapshot while writers wait, and the
    manifest (vault, log seq and head, file hashes, expiry) is signed with the vault's
    key. The backup is logged: `backup list` counts, per archive, the customers shredded
    since, whose keys that copy still holds until you destroy it.
    """
    _check_new_archive(out)
    with open_vault(ctx) as vault:
        session = acting_session(ctx, vault)
        expected = vault.head.seq
        with Meter("backing up", unit="log entries", expected=expected) as meter:
            manifest = session.backup(str(out), expires_days=expires_days, progress=meter)
    size = out.stat().st_size
    summary = {
        "id": manifest["backup"],
        "path": str(out),
        "vault": manifest["vault"],
        "seq": manifest["seq"],
        "head": manifest["head"],
        "size": size,
        "created": manifest["created"],
        "expires": manifest["expires"],
    }
    if as_json:
        print_json(summary)
    else:
        click.echo(f"backup {summary['id']} written to {out}")
        print_pairs(
            [
                ("vault", summary["vault"]),
                ("log seq", summary["seq"]),
                ("size", _size_text(size)),
                ("created", summary["created"]),
                ("expires", summary["expires"] or "never (kept until destroyed)"),
            ],
            indent="  ",
        )
    note(
        "note: the archive holds a copy of every customer's keys; a customer shredded from "
        "now on stays readable from it until it is destroyed. Keep it encrypted at rest "
        "and destroy it when it expires."
    )


# -- list -----------------------------------------------------------------------------------


def _expiry_text(info: BackupInfo) -> str:
    if info.expires is None:
        return "never"
    return f"{info.expires} (expired)" if info.expired else info.expires


@backup_group.command("list")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Backups this vault made, with their key-copy clock (logged).

    SHREDDED SINCE counts the customers shredded after each backup was taken: that
    archive still holds their keys until it is destroyed.
    """
    with open_vault(ctx) as vault:
        infos = acting_session(ctx, vault).backups()
    if as_json:
        print_json([info.to_json() for info in infos])
        return
    if not infos:
        click.echo("no backups recorded")
        return
    print_table(
        ["ID", "SEQ", "CREATED", "EXPIRES", "SHREDDED SINCE"],
        [
            [info.id, info.seq, info.created, _expiry_text(info), info.shredded_since]
            for info in infos
        ],
    )
    holding = [info for info in infos if info.shredded_since and not info.expired]
    if holding:
        note(
            f"note: {len(holding)} unexpired backup(s) still hold keys of customers shredded "
            "since they were taken; destroy them when no longer needed"
        )


# -- verify ---------------------------------------------------------------------------------


def _print_report(report: BackupReport, archive: Path) -> None:
    manifest = report.manifest or {}
    echo(f"{verdict(report.ok, report.reason, report.trust)}: backup archive {archive}")
    if not report.ok:
        echo(problem(report.reason, report.message))
        return
    members = manifest.get("members") or {}
    print_pairs(
        [
            ("backup", manifest.get("backup")),
            ("vault", manifest.get("vault")),
            ("log seq", f"{manifest.get('seq')} (head {manifest.get('head')})"),
            ("created", manifest.get("created")),
            ("expires", manifest.get("expires") or "never"),
            (
                "members",
                ", ".join(f"{name} {_size_text(int(m['size']))}" for name, m in members.items()),
            ),
            (
                "signed by",
                "the --pubkey key"
                if report.trust == PINNED
                else "the archive's own key (self-asserted)",
            ),
        ],
        indent="  ",
    )


@backup_group.command("verify")
@click.argument("archive", metavar="ARCHIVE", type=_READABLE_FILE)
@click.option(
    "--pubkey",
    "pubkey_file",
    metavar="FILE",
    type=_READABLE_FILE,
    help="The vault's public key to trust (as `audit pubkey` prints it).",
)
@trust_embedded_option
@json_option
def verify_command(
    archive: Path, pubkey_file: Path | None, trust_embedded_key: bool, as_json: bool
) -> None:
    """Verify a backup ARCHIVE offline. Needs no vault, passphrase or network.

    Checks the manifest's signature, every member's hash and size, and the access log
    inside (chain, signed checkpoints, head at the snapshot). Exits 0 when valid, 5
    when not (truncated, altered, swapped members, another vault's key), saying why,
    and 7 when nothing trusted was given to check it against.

    Pass the vault's key with --pubkey (`audit pubkey`). The key inside the archive
    shows only that the archive is whole, not that your vault made it: with
    --trust-embedded-key it is used and the result is reported as self-asserted.
    """
    public_key = read_pubkey(pubkey_file) if pubkey_file is not None else None
    report = verify_backup(archive, public_key=public_key, trust_embedded_key=trust_embedded_key)
    if as_json:
        print_json(
            {
                "path": str(archive),
                "public_key": format_public_key(public_key) if public_key is not None else None,
                "public_key_source": "pubkey" if public_key is not None else "archive",
                **report.to_json(),
            }
        )
    else:
        _print_report(report, archive)
    if report.ok and report.trust == SELF_ASSERTED:
        note(
            "note: self-asserted: checked against the key inside the archive; pass --pubkey "
            "FILE with the vault's key (`shredvault audit pubkey`) to prove the vault signed it"
        )
    fail_unless_ok(report.ok, report.reason, report.message, f"backup archive {archive}")


# -- restore --------------------------------------------------------------------------------


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
    if given and accept:
        raise click.UsageError(
            "--accept-unreplayed-shreds is for a restore without a source of newer shreds; "
            f"{given[0]} replays them"
        )
    if not given and not accept:
        raise CommandError(_NO_SOURCE)
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


@backup_group.command("restore")
@click.argument("archive", metavar="ARCHIVE", type=_READABLE_FILE)
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
    help="Replay the shreds recorded in this live vault's log since the backup.",
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
    "the backup's seq.",
)
@click.option(
    "--replay-receipts",
    metavar="DIR",
    type=_READABLE_DIR,
    help="Replay the shreds these erasure receipts (DIR/*.json) prove.",
)
@click.option(
    "--accept-unreplayed-shreds",
    "accept",
    is_flag=True,
    help="Restore without any source of newer shreds: anyone shredded after the backup "
    "becomes readable again. Logged in the restored vault.",
)
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
    """Restore ARCHIVE into a new vault at --to DIR, replaying every later shred first.

    The archive is verified, both stores are written into DIR (marked incomplete), and
    every customer shredded after the backup, as the replay source shows, is shredded
    again before the marker goes: a restore never brings back an erased customer. A
    restore refused before writing (bad archive, occupied database) leaves DIR as it was;
    one interrupted later leaves DIR refusing to open: restore again into a new empty
    directory.

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
    credential = resolve_credential(settings_of(ctx))
    note(f"verifying {archive} and restoring into {target} ...")
    try:
        result = restore_backup(
            archive,
            target,
            data_url=target_url,
            source=source,
            accept_unreplayed_shreds=accept,
            public_key=public_key,
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
                ("public key", result["public_key"]),
            ],
            indent="  ",
        )
        for customer in result["replayed"]:
            click.echo(f"  shredded again: {customer}")
    if result["unreplayed_shreds_accepted"]:
        note(
            "warning: no newer source of shreds was checked: any customer shredded after "
            "this backup is readable again in the restored vault (logged there as accepted)"
        )
