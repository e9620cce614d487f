"""Asking before destructive work: ``--yes`` skips the question; without a terminal to
ask on, and without ``--yes``, nothing is done (a usage error, exit 2), so a script
never destroys anything by default."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["confirm_or_stop", "stdin_is_terminal", "yes_option"]

F = TypeVar("F", bound=Callable[..., Any])


def yes_option(command: F) -> F:
    """``--yes``: do not ask for confirmation (passed as ``yes``)."""
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(command)


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


def confirm_or_stop(question: str, *, yes: bool) -> None:
    """Go on when ``yes``; else ask on the terminal (``Aborted!``, exit 1, on no).

    Raises ``click.UsageError`` (exit 2) when there is no terminal to ask on."""
    if yes:
        return
    if not stdin_is_terminal():
        raise click.UsageError(
            "this command destroys data and there is no terminal to confirm on: "
            "pass --yes to go ahead"
        )
    click.confirm(question, abort=True, err=True)
