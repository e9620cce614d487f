"""Parsing command-line values: ``NAME=VALUE`` pairs, comma lists, consent flags, dates,
output paths (``-`` is stdout where the output can stream there).

Error messages name the option, never the value given: a value may be personal data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from pathlib import Path

import click

__all__ = [
    "ISO_MOMENT",
    "KEY_VALUE",
    "OUTPUT_FILE",
    "NewFile",
    "check_new_keyfile",
    "comma_list",
    "consent_flags",
    "field_values",
    "file_or_stdout",
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
    """An ISO 8601 date or date-time. A date means 00:00 UTC that day; a date-time
    without an offset is taken as UTC."""

    name = "ISO-DATE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            if len(text) == 10:
                return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{text!r} is not an ISO date (YYYY-MM-DD) or date-time", param, ctx)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
# An output that may also stream to stdout: ``-`` (see file_or_stdout).
OUTPUT_FILE = click.Path(dir_okay=False, allow_dash=True, path_type=Path)


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
