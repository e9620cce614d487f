"""The ``shredvault`` command group: global options, error-to-exit-code mapping, entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..vault import KeysError, VaultError
from . import (
    access,
    audit,
    backups,
    certificates,
    customers,
    decommission,
    demo,
    handover,
    init,
    key_management,
    kinds,
    notices,
    receipts,
    records,
    reports,
    requests,
    routine,
    serve,
    shred,
)
from .context import (
    DATA_URL_ENV,
    DATA_URL_HELP,
    KEYFILE_ENV,
    KEYFILE_HELP,
    PASSPHRASE_FILE_HELP,
    SERVER_ENV,
    SERVER_HELP,
    TOKEN_ENV,
    TOKEN_HELP,
    VAULT_ENV,
    VAULT_HELP,
    Settings,
    blank_token_source,
    check_data_url,
    clean_token,
)
from .exit_codes import ERROR, CommandError, describe, exit_code_for
from .output import echo
from .params import check_text_inputs

__all__ = ["cli", "main"]


#: set (to anything) to let an unexpected exception through with its traceback; the
#: test suite sets it, so that reaching the catch-all below fails a test
RAISE_UNEXPECTED_ENV = "SHREDVAULT_RAISE_UNEXPECTED"
_JSON_ERRORS = "shredvault.json_errors"


class VaultGroup(click.Group):
    """A group that turns the library's errors into ``error: ...`` and an exit code
    (with ``--json``, one JSON line on stderr instead)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The top group sees every argument: refuse bytes that are not UTF-8 here,
        # before any option is parsed or anything is read or written.
        if ctx.parent is None:
            check_text_inputs(args, os.environ)
            ctx.meta[_JSON_ERRORS] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # the reader went away (``| head``): click ends quietly
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors, --help, a declined confirmation: click's own
        except (CommandError, VaultError, KeysError, OSError) as error:
            # Expected failures: one line on stderr and the exit code, no traceback.
            _fail(ctx, describe(error), exit_code_for(error), type(error).__name__)
        except Exception as error:
            # A bug. One line and exit 1 for the person at the terminal; never the
            # exception's text (it could hold a value).
            if os.environ.get(RAISE_UNEXPECTED_ENV):
                raise
            _fail(
                ctx,
                f"unexpected {type(error).__name__} (a bug in shredvault: please report it)",
                ERROR,
                type(error).__name__,
            )


def _fail(ctx: click.Context, message: str, code: int, kind: str) -> None:
    if ctx.meta.get(_JSON_ERRORS):
        line = json.dumps({"error": message, "exit_code": code, "type": kind}, ensure_ascii=False)
        echo(line, err=True)
    else:
        echo(f"error: {message}", err=True)
    ctx.exit(code)


@click.group(
    cls=VaultGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--vault",
    "vault_dir",
    metavar="DIR",
    envvar=VAULT_ENV,
    type=click.Path(file_okay=False, path_type=Path),
    help=VAULT_HELP,
)
@click.option("--data-url", metavar="URL", envvar=DATA_URL_ENV, help=DATA_URL_HELP)
@click.option(
    "--passphrase-file",
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=PASSPHRASE_FILE_HELP,
)
@click.option(
    "--keyfile",
    metavar="FILE",
    envvar=KEYFILE_ENV,
    type=click.Path(dir_okay=False, path_type=Path),
    help=KEYFILE_HELP,
)
@click.option("--token", metavar="TOKEN", envvar=TOKEN_ENV, help=TOKEN_HELP)
@click.option("--server", metavar="URL", envvar=SERVER_ENV, help=SERVER_HELP)
@click.version_option(package_name="shredvault", prog_name="shredvault")
@click.pass_context
def cli(
    ctx: click.Context,
    vault_dir: Path | None,
    data_url: str | None,
    passphrase_file: Path | None,
    keyfile: Path | None,
    token: str | None,
    server: str | None,
) -> None:
    """Customer records encrypted under one key per customer, every access in a
    hash-chained log, erasure by destroying keys.

    Exit codes: 0 ok, 1 error, 2 usage, 3 access denied, 4 not found or shredded,
    5 verification failed, 6 unlock failed, 7 not verified: no trusted key.

    Unlocking acts as the administrator; with --token (or SHREDVAULT_TOKEN) data
    commands act as that principal, with its role. With --server URL (or
    SHREDVAULT_SERVER) and a token, the main data commands go to `shredvault serve`:
    no passphrase and no file here, so the role binds.

    Try `shredvault demo` for a tour in a throw-away vault.
    """
    ctx.obj = Settings(
        vault=vault_dir,
        data_url=check_data_url(data_url),
        keyfile=keyfile,
        keyfile_from_env=ctx.get_parameter_source("keyfile") is ParameterSource.ENVIRONMENT,
        passphrase_file=passphrase_file,
        token=clean_token(token),
        blank_token=blank_token_source(token, ctx.get_parameter_source("token")),
        server=server or None,
    )


cli.add_command(init.init_command)
cli.add_command(demo.demo_command)
cli.add_command(kinds.kind_group)
cli.add_command(customers.customer_group)
cli.add_command(records.record_group)
cli.add_command(shred.shred_command)
cli.add_command(shred.compact_command)
cli.add_command(receipts.receipt_group)
cli.add_command(access.principal_group)
cli.add_command(access.role_group)
cli.add_command(key_management.key_group)
cli.add_command(audit.audit_group)
cli.add_command(backups.backup_group)
cli.add_command(handover.handover_group)
cli.add_command(decommission.decommission_command)
cli.add_command(certificates.certificate_group)
cli.add_command(requests.request_group)
cli.add_command(requests.consent_group)
cli.add_command(notices.notice_group)
cli.add_command(serve.serve_command)
_ = reports  # registers `customer report`, `audit query` and `audit report`
_ = routine  # registers `backup drill[-interval]` and `role review[-interval]`


def main() -> None:
    """Console-script entry point (click's standalone mode also ends quietly, exit 1,
    when the reader of stdout goes away)."""
    cli.main(prog_name="shredvault")


if __name__ == "__main__":
    main()
