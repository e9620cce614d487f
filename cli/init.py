"""``init DIR``: create a vault, unlocked by a passphrase or a keyfile."""

from __future__ import annotations

from pathlib import Path

import click

from ..vault import Vault, format_public_key, generate_keyfile
from .context import (
    Credential,
    data_url_option,
    resolve_credential,
    settings_of,
    unlock_options,
)
from .output import json_option, note, print_json, print_pairs
from .params import NewFile, check_new_keyfile

__all__ = ["init_command"]


def _new_keyfile(path: Path, vault_dir: Path) -> Credential:
    generate_keyfile(check_new_keyfile(path, vault_dir))
    return Credential(keyfile=path)


@click.command("init")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--new-keyfile",
    metavar="PATH",
    type=NewFile("a keyfile"),
    help="Generate a new 32-byte keyfile at PATH (mode 0600) and use it instead of a passphrase.",
)
@click.option(
    "--unique-refs",
    is_flag=True,
    help="Declare customer refs unique: a second customer with the same ref is refused "
    "(change it later with 'customer refs').",
)
@json_option
@data_url_option
@unlock_options
@click.pass_context
def init_command(
    ctx: click.Context, directory: Path, new_keyfile: Path | None, unique_refs: bool, as_json: bool
) -> None:
    """Create a vault in DIR (new or empty).

    Unlocked by a passphrase (asked twice on a terminal, or --passphrase-file /
    SHREDVAULT_PASSPHRASE), by an existing --keyfile, or by a keyfile made with
    --new-keyfile. With --data-url the data lives in PostgreSQL; the keystore stays in DIR
    and remembers the URL without its password, so later commands need no --data-url
    (the password then comes from PGPASSWORD or ~/.pgpass).
    """
    settings = settings_of(ctx)
    if new_keyfile is not None:
        if settings.keyfile is not None or settings.passphrase_file is not None:
            raise click.UsageError("--new-keyfile replaces --keyfile and --passphrase-file")
        credential = _new_keyfile(new_keyfile, directory)
    else:
        credential = resolve_credential(settings, confirm=True)
    try:
        vault = Vault.create(
            directory, data_url=settings.data_url, unique_refs=unique_refs, **credential.kwargs()
        )
    except BaseException:
        if new_keyfile is not None:
            new_keyfile.unlink(missing_ok=True)  # a key to no vault is only a liability
        raise
    with vault:
        summary = {
            "vault": vault.vault_id,
            "path": str(directory),
            "public_key": format_public_key(vault.public_key),
            "data": "external" if settings.data_url else "sqlite",
            "unlock": "keyfile" if credential.keyfile is not None else "passphrase",
            "keyfile": str(credential.keyfile) if credential.keyfile is not None else None,
            "unique_refs": unique_refs,
        }
    if as_json:
        print_json(summary)
    else:
        print_pairs(
            [
                ("vault", summary["vault"]),
                ("path", summary["path"]),
                ("public key", summary["public_key"]),
                ("data", "PostgreSQL (URL remembered)" if settings.data_url else "data.db"),
                ("unlock", summary["unlock"]),
                ("unique refs", "yes" if unique_refs else "no"),
            ]
        )
    netloc = (settings.data_url or "").split("://", 1)[-1].split("/", 1)[0]
    if ":" in netloc.rpartition("@")[0]:  # user:password@host
        note(
            "the data URL is remembered without any password: later commands read it from "
            "PGPASSWORD or ~/.pgpass (or pass --data-url again)"
        )
    if new_keyfile is not None:
        note(
            f"new keyfile written to {new_keyfile}: it unlocks the vault. Keep it safe and "
            "apart from the vault directory; without it the vault cannot be opened."
        )
