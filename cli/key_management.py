"""``keys status|rotate-kek|retire-epoch|rotate-dek|change-passphrase`` (DESIGN §3).

Rotation limits what one leaked key exposes; it does not reach copies of keys.db made
earlier (backups), which keep the old epochs, DEKs and root secret until destroyed.
The commands say so where it matters. No key and no passphrase is ever printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..vault import KeyPolicy, KeyStatus, LogPendingError, generate_keyfile
from .confirm import confirm_or_stop, yes_option
from .context import (
    open_session,
    read_secret_file,
    settings_of,
    store_options,
    token_option,
    unlock_options,
)
from .meter import Meter
from .output import json_option, note, print_json, print_pairs
from .params import DAYS_OR_ZERO, NewFile, check_new_keyfile

__all__ = ["NEW_PASSPHRASE_ENV", "key_group"]

NEW_PASSPHRASE_ENV = "SHREDVAULT_NEW_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)


@click.group("keys")
def key_group() -> None:
    """Key ages and rotation: KEK epochs, customers' DEKs, the passphrase or keyfile."""


# -- status -----------------------------------------------------------------------------


def _age(created: str | None, days: float | None) -> str | None:
    return None if created is None or days is None else f"{created} ({days:.1f} days old)"


def _kdf_text(kdf: dict[str, int] | None) -> str:
    if kdf is None:
        return "-"
    return f"Argon2id t={kdf.get('t')} m={kdf.get('m')} KiB p={kdf.get('p')}"


def _print_status(status: KeyStatus, policy: KeyPolicy) -> None:
    epochs = ", ".join(
        f"epoch {epoch}: {count}" for epoch, count in sorted(status.deks_per_epoch.items())
    )
    unlock = status.key_source
    if status.kdf is not None:
        unlock += f" ({_kdf_text(status.kdf)}; recommended {_kdf_text(status.kdf_recommended)})"
    print_pairs(
        [
            (
                "active KEK epoch",
                f"{status.active_epoch}, "
                + (_age(status.active_epoch_created, status.active_epoch_age_days) or ""),
            ),
            ("DEKs per epoch", epochs or "none"),
            ("oldest DEK", _age(status.oldest_dek_created, status.oldest_dek_age_days) or "none"),
            ("unlocked by", unlock),
            ("last rotation", status.last_rotation or "never"),
            (
                "backup key copies",
                f"{status.backup_key_copies} (shredded customers whose keys unexpired "
                "backups still hold)",
            ),
            (
                "restored with unknown shreds",
                "no"
                if status.unreplayed_window is None
                else f"seq {status.unreplayed_window['from_seq']} "
                f"({status.unreplayed_window['from_ts']}) to the restore at "
                f"{status.unreplayed_window['to']}: customers shredded elsewhere then may be "
                "readable here",
            ),
            *_routine_pairs(status.routine),
            (
                "policy",
                f"KEK at most {policy.max_kek_age_days} days, "
                f"DEK at most {policy.max_dek_age_days} days",
            ),
            ("violations", len(status.violations) or "none"),
        ]
    )
    for text in status.violations:
        click.echo(f"  - {text}")
    for text in (status.routine or {}).get("warnings", []):
        click.echo(f"  - routine: {text}")


def _routine_pairs(routine: dict[str, Any] | None) -> list[tuple[str, str]]:
    """When the last restore drill and access review were, and when the next is due."""
    if routine is None:
        return []
    pairs = []
    for key, label in (("drill", "last restore drill"), ("review", "last access review")):
        item = routine[key]
        last = item["last"]
        when = "never" if last is None else f"{last['ts']} ({last['outcome']})"
        due = "OVERDUE since" if item["overdue"] else "next due"
        pairs.append((label, f"{when}; {due} {item['due']} (every {item['interval_days']} days)"))
    return pairs


@key_group.command("status")
@click.option(
    "--max-kek-age",
    type=click.IntRange(min=1),
    metavar="DAYS",
    default=KeyPolicy().max_kek_age_days,
    show_default=True,
    help="Report the active KEK epoch as a violation when older.",
)
@click.option(
    "--max-dek-age",
    type=click.IntRange(min=1),
    metavar="DAYS",
    default=KeyPolicy().max_dek_age_days,
    show_default=True,
    help="Report the oldest customer DEK as a violation when older.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def status_command(ctx: click.Context, max_kek_age: int, max_dek_age: int, as_json: bool) -> None:
    """Key ages, DEKs per KEK epoch, KDF strength and policy violations (logged)."""
    policy = KeyPolicy(max_kek_age_days=max_kek_age, max_dek_age_days=max_dek_age)
    with open_session(ctx) as session:
        status = session.key_status(policy)
    if as_json:
        print_json(
            {
                **status.to_json(),
                "policy": {
                    "max_kek_age_days": policy.max_kek_age_days,
                    "max_dek_age_days": policy.max_dek_age_days,
                },
            }
        )
    else:
        _print_status(status, policy)


# -- KEK epochs -------------------------------------------------------------------------


@key_group.command("rotate-kek")
@click.option(
    "--retire", is_flag=True, help="Afterwards delete the old epochs that no DEK uses any more."
)
@yes_option
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def rotate_kek_command(ctx: click.Context, retire: bool, yes: bool, as_json: bool) -> None:
    """Make a new KEK epoch and re-wrap every customer's DEK under it.

    Runs in batches, each logged; if interrupted, run it again to finish. Records are
    not re-encrypted (that is `keys rotate-dek`). Asks first unless --yes.
    """
    confirm_or_stop(
        "Rotate the KEK: re-wrap every customer's DEK under a new epoch"
        + (" and delete the old epochs" if retire else "")
        + "?",
        yes=yes,
    )
    with open_session(ctx) as session:
        # Only to size the bar; the rotation itself decides what is left to re-wrap.
        expected = sum(session.key_status().deks_per_epoch.values())
        with Meter("re-wrapping DEKs", unit="DEKs", expected=expected) as meter:
            result: dict[str, Any] = session.rotate_kek(retire=retire, progress=meter)
    if as_json:
        print_json({**result, "seconds": round(meter.elapsed, 3), "rate": meter.rate})
        return
    started = "new" if result.get("new_epoch") else "finished the interrupted rotation to"
    click.echo(f"{started} KEK epoch {result['epoch']}: re-wrapped {meter.summary()}")
    retired = result.get("retired") or []
    if retired:
        click.echo(f"retired epoch(s) {', '.join(map(str, retired))}: gone from keys.db")
        note("note: copies of keys.db made earlier (backups) still hold the retired epochs")
    else:
        note("note: the old epochs stay in keys.db until retired (--retire, or keys retire-epoch)")


@key_group.command("retire-epoch")
@click.argument("epoch", type=click.IntRange(min=1))
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def retire_epoch_command(ctx: click.Context, epoch: int, as_json: bool) -> None:
    """Delete KEK EPOCH from keys.db: refused while it is active or still wraps a DEK."""
    with open_session(ctx) as session:
        session.retire_epoch(epoch)
    if as_json:
        print_json({"epoch": epoch, "retired": True})
    else:
        click.echo(f"retired KEK epoch {epoch}")
    note("note: copies of keys.db made earlier (backups) still hold it")


# -- customers' DEKs --------------------------------------------------------------------


@key_group.command("rotate-dek")
@click.argument("customer_id", metavar="[CUSTOMER]", required=False)
@click.option("--all", "rotate_all", is_flag=True, help="Every active customer.")
@click.option(
    "--older-than",
    type=DAYS_OR_ZERO,
    metavar="DAYS",
    help="Every active customer whose DEK is older than DAYS.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def rotate_dek_command(
    ctx: click.Context,
    customer_id: str | None,
    rotate_all: bool,
    older_than: float | None,
    as_json: bool,
) -> None:
    """Give CUSTOMER (or --all, or those --older-than DAYS) a new DEK version.

    Re-encrypts the customer's records under the new version, then deletes the older
    versions. Records stay readable throughout; safe to interrupt and run again.
    """
    chosen = sum([customer_id is not None, rotate_all, older_than is not None])
    if chosen != 1:
        raise click.UsageError("give exactly one of CUSTOMER, --all or --older-than DAYS")
    if customer_id is not None:
        with open_session(ctx) as session:
            version = session.rotate_dek(customer_id)
        if as_json:
            print_json({"customer": customer_id, "dek_version": version})
        else:
            click.echo(f"customer {customer_id} now uses DEK version {version}")
        return
    with (
        open_session(ctx) as session,
        Meter("rotating DEKs", unit="customers") as meter,
    ):
        rotated = session.rotate_deks(
            older_than_days=older_than, progress=meter, total=meter.expect
        )
    if as_json:
        print_json({"rotated": rotated, "seconds": round(meter.elapsed, 3)})
        return
    click.echo(f"rotated the DEKs of {len(rotated):,} customer(s) in {meter.elapsed:.1f} s")


# -- the root secret --------------------------------------------------------------------


def _given_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The new passphrase from the option or the environment; None means "prompt"."""
    if passphrase_file is not None:
        secret = read_secret_file(passphrase_file, "--new-passphrase-file")
    else:
        value = os.environ.get(NEW_PASSPHRASE_ENV)
        if not value:
            return None
        secret = value.removesuffix("\n").removesuffix("\r").encode("utf-8")
    if not secret:
        raise click.UsageError("the new passphrase is empty")
    return secret


def _prompt_new_passphrase() -> bytes:
    text: str = click.prompt(
        "New passphrase",
        hide_input=True,
        confirmation_prompt="Repeat the new passphrase",
        err=True,
    )
    return text.encode("utf-8")


@key_group.command("change-passphrase")
@click.option(
    "--new-passphrase-file",
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Read the new passphrase from FILE; or set {NEW_PASSPHRASE_ENV}, or be asked "
    "twice on a terminal.",
)
@click.option(
    "--new-keyfile",
    metavar="PATH",
    type=NewFile("a keyfile"),
    help="Switch to a new 32-byte keyfile generated at PATH (mode 0600) instead.",
)
@json_option
@store_options
@unlock_options
@token_option
@click.pass_context
def change_passphrase_command(
    ctx: click.Context,
    new_passphrase_file: Path | None,
    new_keyfile: Path | None,
    as_json: bool,
) -> None:
    """Change the passphrase (or switch to a new keyfile) that unlocks the vault.

    Unlock with the current one as usual. Only the KEK epochs and the signing key are
    re-wrapped, so it is quick; afterwards the old secret no longer opens this vault,
    but copies of keys.db made earlier (backups) still open with it.
    """
    settings = settings_of(ctx)
    new_passphrase: bytes | None = None
    if new_keyfile is not None:
        if new_passphrase_file is not None:
            raise click.UsageError("give --new-passphrase-file or --new-keyfile, not both")
        check_new_keyfile(new_keyfile, settings.require_vault())
    else:
        new_passphrase = _given_passphrase(new_passphrase_file)
        if new_passphrase is None and not sys.stdin.isatty():
            raise click.UsageError(
                f"no new passphrase: pass --new-passphrase-file FILE or --new-keyfile PATH, "
                f"set {NEW_PASSPHRASE_ENV}, or run in a terminal to be asked"
            )
    with open_session(ctx) as session:
        if new_keyfile is not None:
            generate_keyfile(new_keyfile)
            try:
                session.change_passphrase(keyfile=str(new_keyfile))
            except LogPendingError:
                raise  # the vault opens only with the new keyfile now: keep it
            except BaseException:
                new_keyfile.unlink(missing_ok=True)  # a key to nothing is only a liability
                raise
        else:
            session.change_passphrase(passphrase=new_passphrase or _prompt_new_passphrase())
    source = "keyfile" if new_keyfile is not None else "passphrase"
    if as_json:
        print_json({"key_source": source, "keyfile": str(new_keyfile) if new_keyfile else None})
    elif new_keyfile is not None:
        click.echo(f"the vault now opens only with the keyfile {new_keyfile}")
    else:
        click.echo("passphrase changed: the old one no longer opens the vault")
    if new_keyfile is not None:
        note(
            f"keep {new_keyfile} safe and apart from the vault directory; destroy the old "
            "passphrase or keyfile once copies of keys.db made earlier are gone"
        )
    else:
        note("note: copies of keys.db made earlier (backups) still open with the old secret")
