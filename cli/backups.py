"""``backup create|list|forget|verify|restore`` (DESIGN §7a): signed archives of both
stores that never bring a shredded customer back.

An archive holds a copy of ``keys.db``: every customer's keys as they were when it was
taken. ``backup list`` shows, per archive, where it was written, its state and how many
customers were shredded since (the key-copy clock): their keys live on in that copy
until it is destroyed; ``backup forget`` records that it was. ``backup restore``
(cli/backup_restore.py) replays every later shred before the restored vault serves.
``-`` is stdout for ``create`` and stdin for ``verify`` and ``restore``, so archives
can be piped through age, gpg or restic.

``backup verify`` needs no vault and no passphrase. ``backup restore`` unlocks the
*restored* vault with the usual --passphrase-file/--keyfile/environment (the secret the
vault had when the archive was made); the global --vault and --data-url name the live
vault and are not used for the target, which has options of its own (--to,
--to-data-url).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import click

from ..vault import BackupInfo, BackupReport, format_public_key, verify_backup
from .backup_restore import ARCHIVE_IN, archive_input, restore_command
from .context import acting_session, open_vault, store_options, token_option, unlock_options
from .meter import Meter, Phases
from .output import echo, json_option, note, print_json, print_pairs, print_table
from .params import DAYS, refuse_existing
from .receipts import read_pubkey
from .trust import PINNED, SELF_ASSERTED, fail_unless_ok, problem, trust_embedded_option, verdict

__all__ = ["backup_group"]

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_ARCHIVE_OUT = click.Path(dir_okay=False, allow_dash=True, path_type=Path)


class _Counted:
    """A binary stream that counts what is written through it (stdout's archive size)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def seekable(self) -> bool:
        return False  # written in one pass, as a tar stream


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


backup_group.add_command(restore_command)


# -- create ---------------------------------------------------------------------------------


def _check_new_archive(path: Path) -> None:
    """Refuse, before unlocking, a path that cannot take the archive."""
    refuse_existing(path, "OUT")
    parent = path.parent
    if not parent.is_dir():
        raise click.BadParameter(f"{parent} is not a directory", param_hint="'OUT'")


@backup_group.command("create")
@click.argument("out", metavar="OUT", type=_ARCHIVE_OUT)
@click.option(
    "--expires",
    "expires_days",
    type=DAYS,
    metavar="DAYS",
    help="Record that this copy is to be destroyed after DAYS days (for the key-copy "
    "clock; the archive is not deleted for you). Default: kept until destroyed or "
    "`backup forget`.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def create_command(
    ctx: click.Context, out: Path, expires_days: float | None, as_json: bool
) -> None:
    """Write a signed backup archive of the vault to OUT (a new file, mode 0600 from its
    creation; or - for stdout, to pipe into age, gpg or restic).

    Both stores are copied in one consistent snapshot while writers wait, and the
    manifest (vault, log seq and head, file hashes, expiry) is signed with the vault's
    key. The backup is logged: `backup list` counts, per archive, the customers shredded
    since, whose keys that copy still holds until you destroy it (`backup forget`).
    """
    to_stdout = str(out) == "-"
    if to_stdout:
        if sys.stdout.isatty():
            raise click.UsageError(
                "OUT is '-' but stdout is a terminal: pipe the archive (| age -r KEY > FILE)"
            )
    else:
        _check_new_archive(out)
    stream = _Counted(sys.stdout.buffer) if to_stdout else None
    with open_vault(ctx) as vault:
        session = acting_session(ctx, vault)
        expected = vault.head.seq
        with Meter("backing up", unit="log entries", expected=expected) as meter:
            manifest = session.backup(
                stream if stream is not None else str(out),  # type: ignore[arg-type]
                expires_days=expires_days,
                progress=meter,
            )
    size = stream.size if stream is not None else out.stat().st_size
    summary = {
        "id": manifest["backup"],
        "path": "-" if to_stdout else str(out),
        "vault": manifest["vault"],
        "seq": manifest["seq"],
        "head": manifest["head"],
        "size": size,
        "created": manifest["created"],
        "expires": manifest["expires"],
    }
    if to_stdout:  # the archive is on stdout: the summary goes to stderr
        note(
            json.dumps(summary, indent=2, sort_keys=True)
            if as_json
            else f"backup {summary['id']} written to stdout: log seq {summary['seq']}, "
            f"{_size_text(size)}"
        )
    elif as_json:
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
        "now on stays readable from it until it is destroyed. Keep it encrypted at rest, "
        f"destroy it when it expires, then run `shredvault backup forget {manifest['backup']}`."
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
    """Backups this vault made: where each was written, its state and its key-copy
    clock (logged).

    STATE is held (counts on the clock), expired (past --expires) or forgotten (`backup
    forget`). SHREDDED SINCE counts the customers shredded after each backup was taken:
    that archive still holds their keys until it is destroyed. PATH is where it was
    written (- for stdout; unknown for a backup made before paths were recorded).
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
        ["ID", "SEQ", "CREATED", "EXPIRES", "STATE", "SHREDDED SINCE", "PATH"],
        [
            [
                info.id,
                info.seq,
                info.created,
                _expiry_text(info),
                info.state,
                info.shredded_since,
                info.path or "unknown",
            ]
            for info in infos
        ],
    )
    holding = [info for info in infos if info.shredded_since and info.state == "held"]
    if holding:
        note(
            f"note: {len(holding)} unexpired backup(s) still hold keys of customers shredded "
            "since they were taken; destroy them when no longer needed, then `backup forget ID`"
        )


# -- forget ---------------------------------------------------------------------------------


@backup_group.command("forget")
@click.argument("backup_id", metavar="ID")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def forget_command(ctx: click.Context, backup_id: str, as_json: bool) -> None:
    """Record that backup ID's archive was destroyed: it stops counting on the key-copy
    clock (`backup list`, `keys status`). Admin only; logged as backup.forget.

    The archive file is not touched (copies may be anywhere): destroy every copy first.
    Exits 4 for an unknown id, 1 if it was already forgotten.
    """
    with open_vault(ctx) as vault:
        info = acting_session(ctx, vault).forget_backup(backup_id)
    if as_json:
        print_json(info.to_json())
        return
    click.echo(f"backup {info.id} forgotten at {info.forgotten}")
    print_pairs(
        [
            ("written to", info.path or "unknown"),
            ("log seq", info.seq),
            ("shredded since", f"{info.shredded_since} (no longer counted: the copy is gone)"),
        ],
        indent="  ",
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
@click.argument("archive", metavar="ARCHIVE", type=ARCHIVE_IN)
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
    """Verify a backup ARCHIVE (a file, or - for stdin) offline. Needs no vault,
    passphrase or network.

    Checks the manifest's signature, every member's hash and size, and the access log
    inside (chain, signed checkpoints, head at the snapshot). Exits 0 when valid, 5
    when not (truncated, altered, swapped members, another vault's key), saying why,
    and 7 when nothing trusted was given to check it against.

    Pass the vault's key with --pubkey (`audit pubkey`). The key inside the archive
    shows only that the archive is whole, not that your vault made it: with
    --trust-embedded-key it is used and the result is reported as self-asserted.
    """
    public_key = read_pubkey(pubkey_file) if pubkey_file is not None else None
    with Phases({"verifying": ("verifying the archive", "bytes")}) as phases:
        report = verify_backup(
            archive_input(archive),
            public_key=public_key,
            progress=lambda count, total: phases("verifying", count, total),
            trust_embedded_key=trust_embedded_key,
        )
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
