"""Printing: aligned text for people, ``--json`` for programs. Data goes to stdout;
prompts, progress and notes go to stderr so that ``--json`` output stays parseable.

Text for people passes :func:`printable` (through :func:`display_value`,
:func:`print_pairs`, :func:`print_table`, :func:`note` and :func:`echo`): a value
holding terminal control sequences (ESC, CSI, a carriage return, bidirectional
overrides) is shown escaped, never sent to the terminal. JSON output is unchanged.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = [
    "display_value",
    "echo",
    "json_option",
    "note",
    "print_json",
    "print_pairs",
    "print_table",
    "printable",
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


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI), the line and paragraph
# separators, and the bidirectional marks, embeddings, overrides and isolates.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029]
_CONTROLS += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPE_ALL = {code: _escape(code) for code in _CONTROLS}
_KEEP_LINES = {code: text for code, text in _ESCAPE_ALL.items() if code != 0x0A}


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as ``\\xNN`` or ``\\uNNNN``, so it
    can only print, never steer the terminal. ``keep_newlines`` keeps line feeds (for
    our own multi-line messages; a value's line feed is escaped)."""
    return text.translate(_KEEP_LINES if keep_newlines else _ESCAPE_ALL)


def echo(text: str = "", *, err: bool = False) -> None:
    """A line for people (stdout, or stderr with ``err``), control characters escaped."""
    click.echo(printable(text, keep_newlines=True), err=err)


def note(message: str) -> None:
    """A remark for the person at the terminal (stderr)."""
    echo(message, err=True)


def display_value(value: Any) -> str:
    """A field or metadata value as one line of text: strings as they are, anything
    else as JSON; control characters (line breaks included) escaped."""
    if isinstance(value, str):
        return printable(value)
    if value is None:
        return "-"
    return printable(json.dumps(value, ensure_ascii=False, sort_keys=True))


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
        echo(f"{indent}{_pad(name, width)}  {display_value(value)}".rstrip())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain table with a header row; columns padded to their widest cell."""
    cells = [[display_value(h) for h in headers]] + [
        [display_value(v) for v in row] for row in rows
    ]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        echo("  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip())
