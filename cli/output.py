"""Printing: aligned text for people, ``--json`` for programs. Data goes to stdout;
prompts, progress and notes go to stderr so that ``--json`` output stays parseable."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = [
    "display_value",
    "json_option",
    "note",
    "print_json",
    "print_pairs",
    "print_table",
]

F = TypeVar("F", bound=Callable[..., Any])


def json_option(command: F) -> F:
    """``--json``: print machine-readable JSON instead of text (passed as ``as_json``)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
    )(command)


def print_json(value: Any) -> None:
    """Indented JSON with sorted keys; non-ASCII text kept as UTF-8."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))


def note(message: str) -> None:
    """A remark for the person at the terminal (stderr)."""
    click.echo(message, err=True)


def display_value(value: Any) -> str:
    """A field or metadata value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def print_pairs(pairs: Sequence[tuple[str, Any]], *, indent: str = "") -> None:
    """``name  value`` lines with the names aligned."""
    if not pairs:
        return
    width = max(_width(name) for name, _ in pairs)
    for name, value in pairs:
        click.echo(f"{indent}{_pad(name, width)}  {display_value(value)}".rstrip())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain table with a header row; columns padded to their widest cell."""
    cells = [list(headers)] + [[display_value(v) for v in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip())
