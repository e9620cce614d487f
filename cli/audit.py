"""``audit verify|export|checkpoint|pubkey``: checking the access log, mostly without keys.

Only ``audit checkpoint`` unlocks the vault (it signs); the others need no passphrase:
an auditor reads ``data.db`` (or the data URL) and the public parts of ``keys.db``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..vault import (
    Checkpoint,
    TamperError,
    VerifyReport,
    create_file,
    format_public_key,
    parse_public_key,
    read_anchor,
    verify_export,
)
from ..vault.inputs import MAX_DOCUMENT_BYTES, parse_json
from .context import open_auditor, open_session, store_options, token_option, unlock_options
from .output import echo, json_option, note, print_json, print_pairs
from .params import OUTPUT_FILE, file_or_stdout, refuse_existing
from .progress import LazyProgress
from .trust import NO_TRUSTED_KEY, fail_unless_ok, trust_embedded_option, verdict

__all__ = ["audit_group"]

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("audit")
def audit_group() -> None:
    """Verify, export and checkpoint the hash-chained access log."""


def _export_head(path: Path) -> int | None:
    """The head seq an export's header line announces (only to size the progress bar)."""
    try:
        with path.open("rb") as handle:
            line = handle.readline(MAX_DOCUMENT_BYTES + 1)
        header = parse_json(line, what="the export header", max_bytes=MAX_DOCUMENT_BYTES)
        return int(header["head_seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _print_report(report: VerifyReport, source: str) -> None:
    echo(f"{verdict(report.ok, report.reason, report.trust)}: {source}")
    if report.reason == NO_TRUSTED_KEY:
        echo(f"  {report.message}")
    elif not report.ok:
        where = "" if report.bad_seq is None else f"first bad seq {report.bad_seq}: "
        echo(f"  {where}{report.reason}: {report.message}")
    span = f" (seq {report.first_seq}-{report.last_seq})" if report.entries else ""
    pairs: list[tuple[str, Any]] = [
        ("entries checked", f"{report.entries}{span}"),
        ("signed checkpoints", report.checkpoints),
        ("last signed checkpoint", report.last_checkpoint),
        ("unsigned tail", report.unsigned_tail),
    ]
    if report.anchor_seq is not None:
        pairs.append(("anchor", f"seq {report.anchor_seq}"))
    if report.ok:
        pairs.append(("head", report.head))
    print_pairs(pairs, indent="  ")
    for text in report.notes:
        echo(f"  note: {text}")


@audit_group.command("verify")
@click.option(
    "--pubkey",
    "pubkey_file",
    metavar="FILE",
    type=_READABLE_FILE,
    help="Trust this public key (as `audit pubkey` prints it), not the vault's own copy.",
)
@click.option(
    "--anchor",
    "anchor_file",
    metavar="CHECKPOINT.json",
    type=_READABLE_FILE,
    help="A checkpoint saved earlier (`audit checkpoint`): the log must still reach it.",
)
@click.option(
    "--from-export",
    "export_file",
    metavar="LOG.jsonl",
    type=_READABLE_FILE,
    help="Verify an exported log offline instead of the vault's data store "
    "(needs --pubkey or --anchor, or --trust-embedded-key).",
)
@trust_embedded_option
@click.option(
    "--strict/--no-strict",
    default=None,
    help="Also require every entry to be canonical v1 JSON "
    "(default: on for exports, off for the live store).",
)
@json_option
@store_options
@click.pass_context
def verify_command(
    ctx: click.Context,
    pubkey_file: Path | None,
    anchor_file: Path | None,
    export_file: Path | None,
    strict: bool | None,
    trust_embedded_key: bool,
    as_json: bool,
) -> None:
    """Verify the access log's hash chain and signed checkpoints. No passphrase needed.

    Exits 0 when the log verifies and 5 when it does not, naming the first bad seq
    and why (modified, deleted, reordered, forked, truncated, bad signature, ...).

    An export (--from-export) is checked against a trust root: the vault's key
    (--pubkey, from `audit pubkey` by a second channel) or a checkpoint saved earlier
    (--anchor), which the export's key must have signed. Without one it exits 7 (not
    verified: no trusted key), unless --trust-embedded-key accepts the key the export
    names itself; the result is then reported as self-asserted.
    """
    public_key = (
        parse_public_key(pubkey_file.read_text("utf-8", errors="replace")) if pubkey_file else None
    )
    anchor: Checkpoint | None = read_anchor(anchor_file) if anchor_file else None
    result: dict[str, Any]
    if export_file is not None:
        source = f"export {export_file}"
        result = {"source": "export", "path": str(export_file)}
        with LazyProgress("verifying export", _export_head(export_file)) as progress:
            report = verify_export(
                export_file,
                public_key=public_key,
                anchor=anchor,
                strict=True if strict is None else strict,
                progress=progress,
                trust_embedded_key=trust_embedded_key,
            )
    else:
        with open_auditor(ctx) as auditor:
            source = f"access log of {auditor.vault_id}"
            result = {"source": "vault", "vault": auditor.vault_id}
            latest = auditor.latest_checkpoint()
            expected = max(latest.seq if latest else 0, anchor.seq if anchor else 0)
            with LazyProgress("verifying access log", expected or None) as progress:
                report = auditor.verify(
                    public_key=public_key, anchor=anchor, strict=bool(strict), progress=progress
                )
    if as_json:
        print_json({**result, **report.to_json()})
    else:
        _print_report(report, source)
    fail_unless_ok(
        report.ok,
        report.reason,
        report.message,
        source,
        option="--pubkey FILE or --anchor CHECKPOINT.json",
        seq=report.bad_seq,
    )


@audit_group.command("export")
@click.option(
    "--since",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="SEQ",
    help="First entry to export.",
)
@click.option(
    "--out",
    "out_path",
    metavar="FILE",
    type=OUTPUT_FILE,
    default="-",
    help="Write here (mode 0600, published atomically when done) instead of stdout.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace an existing --out file (only once the new export is complete).",
)
@store_options
@click.pass_context
def export_command(ctx: click.Context, since: int, out_path: Path, replace: bool) -> None:
    """Export the access log as JSON Lines (header, checkpoints, entries), streaming.

    No passphrase needed. Verify the file anywhere with
    `shredvault audit verify --from-export FILE --pubkey KEY`.
    """
    target = file_or_stdout(out_path)
    if not replace:
        refuse_existing(target, "--out")
    with open_auditor(ctx) as auditor:
        latest = auditor.latest_checkpoint()
        expected = (latest.seq - since + 1) if latest and latest.seq >= since else None
        with (
            LazyProgress("exporting", expected) as progress,
            click.open_file("-", "wb")
            if target is None
            else create_file(target, overwrite=replace) as out,
        ):
            count = auditor.export(out, since=since, progress=progress)
    if target is not None:
        note(f"exported {count} entries to {target}")


@audit_group.command("checkpoint")
@store_options
@unlock_options
@token_option
@click.pass_context
def checkpoint_command(ctx: click.Context) -> None:
    """Sign a checkpoint at the log head now and print it as JSON (needs the audit
    action: admin or auditor).

    Save it: `audit verify --anchor FILE` later proves the log still reaches it
    (nothing was cut off or rewritten since).
    """
    with open_session(ctx) as session:
        checkpoint = session.checkpoint()
    print_json(checkpoint.to_json())
    note(f"signed checkpoint at seq {checkpoint.seq}")


@audit_group.command("check-store")
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def check_store_command(ctx: click.Context, as_json: bool) -> None:
    """Check every authenticated row of the data store (needs the vault's key and the
    audit action: admin or auditor).

    `audit verify` checks the log without keys; it cannot check the rows of
    principals, roles, kinds, customers and records, whose authenticators are MACs
    under a key only the unlocked vault holds. This command does: it lists each row
    that fails (table, row, why: bad auth, unauthenticated, stale, malformed) and
    exits 5 if there is any.
    """
    with open_session(ctx) as session, LazyProgress("checking rows", None) as progress:
        report = session.check_store(progress=progress)
    if as_json:
        print_json(report.to_json())
    else:
        click.echo("rows verify" if report.ok else "TAMPERED ROWS FOUND")
        print_pairs([(f"{t} rows", n) for t, n in report.rows.items()], indent="  ")
        for bad in report.tampered:
            click.echo(f"  {bad.table} {bad.row}: {bad.reason}")
    if not report.ok:
        first = report.tampered[0]
        raise TamperError(
            f"{len(report.tampered)} row(s) of the data store fail their checks",
            table=first.table,
            row=first.row,
            reason=first.reason,
        )


@audit_group.command("pubkey")
@json_option
@store_options
@click.pass_context
def pubkey_command(ctx: click.Context, as_json: bool) -> None:
    """Print the vault's Ed25519 public key (for `audit verify --pubkey`). No passphrase."""
    with open_auditor(ctx) as auditor:
        text = format_public_key(auditor.public_key)
        vault_id = auditor.vault_id
    if as_json:
        print_json({"vault": vault_id, "public_key": text})
    else:
        echo(text)
