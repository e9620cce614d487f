"""Where the vault is, how to unlock it and who acts in it: global options, environment
and prompts.

Options given on the command line beat the environment; the vault location and data
URL may be given before the command (``shredvault --vault DIR record get ...``) or
after it (``shredvault record get --vault DIR ...``). Data commands act as the unlocking
administrator, or as the principal ``--token``/``SHREDVAULT_TOKEN`` names; the token
is kept out of every repr and message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..vault import Auditor, Session, Vault
from .receipts import save_recovered_receipts

__all__ = [
    "DATA_URL_ENV",
    "DATA_URL_HELP",
    "KEYFILE_ENV",
    "KEYFILE_HELP",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_HELP",
    "SERVER_ENV",
    "SERVER_HELP",
    "TOKEN_ENV",
    "TOKEN_HELP",
    "VAULT_ENV",
    "VAULT_HELP",
    "Credential",
    "Settings",
    "acting_session",
    "blank_token_source",
    "check_data_url",
    "clean_token",
    "data_url_option",
    "open_auditor",
    "open_session",
    "open_vault",
    "read_secret_file",
    "resolve_credential",
    "settings_of",
    "store_options",
    "token_option",
    "unlock_options",
]

VAULT_ENV = "SHREDVAULT_VAULT"
DATA_URL_ENV = "SHREDVAULT_DATA_URL"
KEYFILE_ENV = "SHREDVAULT_KEYFILE"
PASSPHRASE_ENV = "SHREDVAULT_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
TOKEN_ENV = "SHREDVAULT_TOKEN"  # noqa: S105 (a variable name, not a secret)
SERVER_ENV = "SHREDVAULT_SERVER"

_MAX_PASSPHRASE_FILE = 64 * 1024

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class Settings:
    """What the global options and the environment said, kept on ``ctx.obj``."""

    vault: Path | None = None
    data_url: str | None = None
    keyfile: Path | None = None
    keyfile_from_env: bool = False
    passphrase_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    blank_token: str | None = None  # where a token was given empty: "--token" or TOKEN_ENV
    server: str | None = None  # a `shredvault serve` URL: data commands go there

    def refuse_server(self) -> None:
        """A usage error (exit 2) when a server is named for a command that runs only
        where the vault is: it must not quietly act on a local vault instead."""
        if self.server is not None:
            raise click.UsageError(
                f"this command runs where the vault is; --server (or {SERVER_ENV}) serves "
                "customer add/show/list/report/retain/hold/release, "
                "record put/get/update/delete/list, shred CUSTOMER, audit query and audit report"
            )

    def require_vault(self) -> Path:
        """The vault directory; a usage error (exit 2) when none was given."""
        if self.vault is None:
            raise click.UsageError(f"no vault given: pass --vault DIR or set {VAULT_ENV}")
        return self.vault

    def acting_token(self) -> str | None:
        """The token to act with, or None to act as the administrator. A token given
        empty or blank is a usage error (exit 2), never the administrator: an unset
        variable in a script must not turn a principal into the administrator."""
        if self.blank_token == TOKEN_ENV:
            raise click.UsageError(
                f"{TOKEN_ENV} is set but empty: set it to a principal's token, or unset it "
                "to act as the administrator who unlocks the vault"
            )
        if self.blank_token is not None:
            raise click.UsageError(
                f"{self.blank_token} is empty: give a principal's token, or leave the option "
                "out to act as the administrator who unlocks the vault"
            )
        return self.token


@dataclass(frozen=True, slots=True)
class Credential:
    """A passphrase (bytes) or a keyfile path: exactly one is set."""

    passphrase: bytes | None = field(default=None, repr=False)
    keyfile: Path | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Vault.open``/``Vault.create``."""
        if self.keyfile is not None:
            return {"keyfile": self.keyfile}
        return {"passphrase": self.passphrase}


def settings_of(ctx: click.Context) -> Settings:
    """The settings the group stored (commands share their parent's ``obj``)."""
    return ctx.ensure_object(Settings)


def check_data_url(value: str | None) -> str | None:
    """Refuse something that is not a database URL, without echoing it (it may hold a
    database password)."""
    if value is not None and "://" not in value:
        raise click.BadParameter(
            "not a database URL (expected e.g. postgresql+psycopg://user@host/db)",
            param_hint="'--data-url'",
        )
    return value or None


# -- options repeated on commands -------------------------------------------------------


def _set_vault(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        settings_of(ctx).vault = value


def _set_data_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings_of(ctx).data_url = check_data_url(value)


def _set_keyfile(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        settings = settings_of(ctx)
        settings.keyfile, settings.keyfile_from_env = value, False


def _set_passphrase_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        settings_of(ctx).passphrase_file = value


def clean_token(value: str | None) -> str | None:
    """A token as given, without surrounding whitespace (an env file's newline); None
    when empty. Never validated here: the vault decides, and says nothing of it."""
    return (value or "").strip() or None


def blank_token_source(value: str | None, source: ParameterSource | None) -> str | None:
    """Where the group's token was given empty or blank (``--token`` or
    :data:`TOKEN_ENV`), or None when it was given usable or not at all."""
    if value is not None and clean_token(value) is None:
        return TOKEN_ENV if source is ParameterSource.ENVIRONMENT else "--token"
    if value is None and TOKEN_ENV in os.environ:  # click reads an empty variable as unset
        return TOKEN_ENV
    return None


def _set_token(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # the command's own --token beats the group's and the env's
        settings = settings_of(ctx)
        settings.token = clean_token(value)
        settings.blank_token = None if settings.token is not None else "--token"


VAULT_HELP = f"The vault directory [env: {VAULT_ENV}]."
DATA_URL_HELP = f"Data store URL, for PostgreSQL (never printed) [env: {DATA_URL_ENV}]."
KEYFILE_HELP = f"Unlock with this 32-byte keyfile (mode 0600) [env: {KEYFILE_ENV}]."
PASSPHRASE_FILE_HELP = (
    f"Read the passphrase from FILE (one trailing newline is dropped); or set {PASSPHRASE_ENV}, "
    "or be prompted on a terminal."
)
SERVER_HELP = (
    "Send customer, record, shred and audit report/query commands to this "
    f"`shredvault serve` URL, as the principal the token names [env: {SERVER_ENV}]."
)
TOKEN_HELP = (
    "Act as the principal this token names (from `principal add`) instead of as the "
    f"administrator; prefer the environment, which other users cannot see [env: {TOKEN_ENV}]."
)


def data_url_option(command: F) -> F:
    """``--data-url`` on a command (no envvar: the group reads the environment)."""
    return click.option(
        "--data-url",
        metavar="URL",
        expose_value=False,
        callback=_set_data_url,
        help=DATA_URL_HELP,
    )(command)


def store_options(command: F) -> F:
    """``--vault`` and ``--data-url`` on a command: where the vault is."""
    command = data_url_option(command)
    return click.option(
        "--vault",
        metavar="DIR",
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_vault,
        help=VAULT_HELP,
    )(command)


def unlock_options(command: F) -> F:
    """``--keyfile`` and ``--passphrase-file`` on a command: how to unlock it."""
    command = click.option(
        "--passphrase-file",
        metavar="FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_passphrase_file,
        help=PASSPHRASE_FILE_HELP,
    )(command)
    return click.option(
        "--keyfile",
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_keyfile,
        help=KEYFILE_HELP,
    )(command)


def token_option(command: F) -> F:
    """``--token`` on a command that acts on the vault's data as a principal."""
    return click.option(
        "--token",
        metavar="TOKEN",
        expose_value=False,
        callback=_set_token,
        help=TOKEN_HELP,
    )(command)


# -- credentials ------------------------------------------------------------------------


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def read_secret_file(path: Path, option: str = "--passphrase-file") -> bytes:
    """A passphrase from a file (UTF-8, one trailing newline dropped). Errors are usage
    errors naming ``option`` and the file, never a byte of its content."""
    hint = f"'{option}'"
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_PASSPHRASE_FILE + 1)
    except OSError as error:
        raise click.BadParameter(f"cannot read {path}: {error.strerror}", param_hint=hint) from None
    if len(raw) > _MAX_PASSPHRASE_FILE:
        raise click.BadParameter(f"{path} is too large for a passphrase file", param_hint=hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The codec's message quotes a byte of the passphrase: say nothing of it.
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint=hint) from None
    return _strip_newline(text).encode("utf-8")


def _prompt(confirm: bool) -> bytes:
    text: str = click.prompt(
        "Passphrase" if not confirm else "New passphrase",
        hide_input=True,
        confirmation_prompt="Repeat the passphrase" if confirm else False,
        err=True,
    )
    return text.encode("utf-8")


def resolve_credential(settings: Settings, *, confirm: bool = False) -> Credential:
    """The passphrase or keyfile to unlock (or create) the vault with.

    Command-line options first, then the environment, then a hidden prompt when stdin
    is a terminal (asked twice when ``confirm``). Raises ``click.UsageError`` when two
    sources compete at the same level or when there is none and no terminal.
    """
    explicit: list[str] = []
    if settings.keyfile is not None and not settings.keyfile_from_env:
        explicit.append("--keyfile")
    if settings.passphrase_file is not None:
        explicit.append("--passphrase-file")
    if len(explicit) > 1:
        raise click.UsageError("give either --keyfile or --passphrase-file, not both")
    if explicit == ["--keyfile"]:
        return Credential(keyfile=settings.keyfile)
    if settings.passphrase_file is not None:
        return Credential(passphrase=read_secret_file(settings.passphrase_file))

    env_passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if settings.keyfile is not None and env_passphrase is not None:
        raise click.UsageError(
            f"both {KEYFILE_ENV} and {PASSPHRASE_ENV} are set: unset one, or pass "
            "--keyfile or --passphrase-file"
        )
    if settings.keyfile is not None:
        return Credential(keyfile=settings.keyfile)
    if env_passphrase is not None:
        return Credential(passphrase=_strip_newline(env_passphrase).encode("utf-8"))
    if sys.stdin.isatty():
        return Credential(passphrase=_prompt(confirm))
    raise click.UsageError(
        "no passphrase: pass --passphrase-file FILE or --keyfile FILE, set "
        f"{PASSPHRASE_ENV} or {KEYFILE_ENV}, or run in a terminal to be prompted"
    )


# -- opening ----------------------------------------------------------------------------


@contextmanager
def open_vault(ctx: click.Context, *, serving: bool = False) -> Iterator[Vault]:
    """Unlock the vault the options name; closes it (signing a checkpoint) afterwards.
    Refused while a server is named, unless ``serving`` (the server itself)."""
    settings = settings_of(ctx)
    if not serving:
        settings.refuse_server()
    root = settings.require_vault()
    settings.acting_token()  # a blank token is a usage error before any unlocking
    credential = resolve_credential(settings)
    with Vault.open(root, data_url=settings.data_url, **credential.kwargs()) as vault:
        save_recovered_receipts(vault)  # this open's, and any an earlier opener left kept
        yield vault


def acting_session(ctx: click.Context, vault: Vault) -> Session:
    """The session data commands act in: the principal ``--token`` names, else the
    administrator who unlocked the vault. A bad, revoked or expired token raises
    ``AccessDeniedError`` (exit 3); the token itself is never printed. An empty or
    blank token is a usage error (exit 2)."""
    token = settings_of(ctx).acting_token()
    return vault.admin() if token is None else vault.login(token)


@contextmanager
def open_session(ctx: click.Context) -> Iterator[Session]:
    """Unlock the vault and act in it as :func:`acting_session` says."""
    with open_vault(ctx) as vault:
        yield acting_session(ctx, vault)


@contextmanager
def open_auditor(ctx: click.Context) -> Iterator[Auditor]:
    """Open the vault read-only for auditing: no passphrase, no keys."""
    settings = settings_of(ctx)
    settings.refuse_server()
    root = settings.require_vault()
    with Auditor.open(root, data_url=settings.data_url) as auditor:
        yield auditor
