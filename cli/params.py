"""Parsing command-line values: ``NAME=VALUE`` pairs, comma lists, consent flags, dates,
output paths (``-`` is stdout where the output can stream there).

Error messages name the option, never the value given: a value may be personal data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path

import click

from ..vault import SchemaError
from ..vault.inputs import MAX_PAGE, MOMENT_HELP, check_days, parse_moment

__all__ = [
    "DATE_HELP",
    "DAYS",
    "DAYS_OR_ZERO",
    "ISO_MOMENT",
    "KEY_VALUE",
    "OUTPUT_FILE",
    "NewFile",
    "check_new_keyfile",
    "check_text_inputs",
    "comma_list",
    "consent_flags",
    "field_values",
    "file_or_stdout",
    "page_options",
    "read_text_input",
    "refuse_existing",
]

_TRUE = frozenset({"yes", "y", "true", "1", "on"})
_FALSE = frozenset({"no", "n", "false", "0", "off"})


# Unsubscripted: ParamType is generic only from click 8.5 on.
class KeyValue(click.ParamType):  # type: ignore[type-arg]
    """``NAME=VALUE``, split at the first ``=``; gives ``(name, value)``."""

    name = "NAME=VALUE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        name, sep, rest = text.partition("=")
        if not sep or not name.strip():
            self.fail("expected NAME=VALUE (the value was not shown)", param, ctx)
        return name.strip(), rest


class IsoMoment(click.ParamType):  # type: ignore[type-arg]
    """A plain date (00:00 UTC that day) or an RFC 3339 time, through the vault's one
    date parser (:func:`shredvault.vault.inputs.parse_moment`)."""

    name = "DATE|TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        try:
            return parse_moment(value, what="the value")
        except SchemaError as error:
            self.fail(str(error), param, ctx)


class Days(click.ParamType):  # type: ignore[type-arg]
    """A number of days: finite, above 0 (or 0 where ``allow_zero``), at most 1,000
    years (``nan``, ``inf`` and ``1e308`` are usage errors)."""

    name = "DAYS"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = value if isinstance(value, float) else float(str(value).strip())
            return check_days(number, what="the value", allow_zero=self.allow_zero)
        except ValueError as error:  # SchemaError is one; float("x") too
            self.fail(str(error) if isinstance(error, SchemaError) else "not a number", param, ctx)


class NewFile(click.Path):
    """A new file the command writes that cannot be stdout (a binary archive, a file
    other steps depend on): ``-`` is a usage error rather than a file named ``-``."""

    def __init__(self, what: str) -> None:
        super().__init__(dir_okay=False, path_type=Path)
        self.what = what

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if value == "-":
            self.fail(f"{self.what} cannot go to stdout ('-'); give a file path", param, ctx)
        return super().convert(value, param, ctx)


KEY_VALUE = KeyValue()
ISO_MOMENT = IsoMoment()
DAYS = Days()
DAYS_OR_ZERO = Days(allow_zero=True)
#: the one wording of the date format, for --help texts
DATE_HELP = MOMENT_HELP
# An output that may also stream to stdout: ``-`` (see file_or_stdout).
OUTPUT_FILE = click.Path(dir_okay=False, allow_dash=True, path_type=Path)


def _is_text(value: str) -> bool:
    """False for a string that came from bytes that are not UTF-8 (Python keeps each bad
    byte as a lone surrogate) or that holds a NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def check_text_inputs(args: Iterable[str], environ: Mapping[str, str]) -> None:
    """Every command-line argument and every ``SHREDVAULT_*`` variable is valid UTF-8
    text, before anything else runs (a usage error, exit 2, otherwise). The message
    names the argument's position or the variable, never its bytes: it may be a
    passphrase or a token."""
    for position, arg in enumerate(args, start=1):
        if not _is_text(arg):
            raise click.UsageError(f"argument {position} is not valid UTF-8 text")
    for name in sorted(environ):
        if name.startswith("SHREDVAULT_") and not _is_text(environ[name]):
            raise click.UsageError(f"the environment variable {name} is not valid UTF-8 text")


def file_or_stdout(path: Path | None) -> Path | None:
    """The file to write, or None for stdout (no path given, or ``-``)."""
    return None if path is None or str(path) == "-" else path


def comma_list(values: Iterable[str]) -> list[str]:
    """``--fields a,b --fields c`` -> ``["a", "b", "c"]`` (blanks dropped, order kept)."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(out))


def field_values(pairs: Iterable[tuple[str, str]], option: str) -> dict[str, str]:
    """``NAME=VALUE`` pairs as a dict; a name given twice is a usage error."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise click.BadParameter(f"{name!r} given twice", param_hint=f"'{option}'")
        out[name] = value
    return out


def consent_flags(pairs: Iterable[tuple[str, str]]) -> dict[str, bool]:
    """``transfer=yes`` -> ``{"transfer": True}`` (yes/no, true/false, 1/0, on/off)."""
    out: dict[str, bool] = {}
    for name, value in field_values(pairs, "--consent").items():
        word = value.strip().lower()
        if word in _TRUE:
            out[name] = True
        elif word in _FALSE:
            out[name] = False
        else:
            raise click.BadParameter(
                f"consent {name!r} must be yes or no, not {value!r}", param_hint="'--consent'"
            )
    return out


def refuse_existing(path: Path | None, hint: str) -> None:
    """Refuse, before any work (exit 2), an output path where something already is,
    dangling links included (the writer refuses those too, but only after the work):
    nothing is overwritten unless a command says it may (docs/files.md)."""
    if path is not None and str(path) != "-" and os.path.lexists(path):
        raise click.BadParameter(
            f"{path} already exists; refusing to overwrite it", param_hint=f"'{hint}'"
        )


def check_new_keyfile(path: Path, vault_dir: Path) -> Path:
    """A path for a new keyfile: outside the vault directory (whoever copies the
    directory would get the key with it) and not taken (exit 2 otherwise)."""
    if path.resolve().is_relative_to(vault_dir.resolve()):
        raise click.BadParameter(
            "keep the keyfile outside the vault directory: whoever copies the directory "
            "would get the key with it",
            param_hint="'--new-keyfile'",
        )
    refuse_existing(path, "--new-keyfile")
    return path


def page_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--limit N`` and ``--after CURSOR``: one page of a listing (keyset, not
    OFFSET). The next page's cursor is printed on stderr, or as ``next`` with --json."""
    command = click.option(
        "--after",
        metavar="CURSOR",
        help="Continue after this cursor (printed by the previous page).",
    )(command)
    return click.option(
        "--limit",
        type=click.IntRange(1, MAX_PAGE),
        metavar="N",
        help=f"At most N items (1-{MAX_PAGE}); prints a cursor for the next page.",
    )(command)


#: bytes of text read from stdin or a file for one value (a search value, a note)
MAX_TEXT_INPUT = 4 * 1024 * 1024


def read_text_input(path: Path | None, what: str, hint: str) -> str:
    """Text kept out of shell history and the process list: the file ``path``'s, or
    stdin's when ``path`` is None; UTF-8, at most :data:`MAX_TEXT_INPUT` bytes, one
    trailing line break dropped. A usage error (exit 2) otherwise, naming ``what``
    (never the text)."""
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_TEXT_INPUT + 1)
        except OSError as error:
            raise click.BadParameter(
                f"cannot read it ({error.strerror})", param_hint=f"'{hint}'"
            ) from None
    else:
        data = sys.stdin.buffer.read(MAX_TEXT_INPUT + 1)
    if len(data) > MAX_TEXT_INPUT:
        raise click.UsageError(f"{what} is too large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.UsageError(f"{what} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")
