"""The offline verify commands' trust root: ``--trust-embedded-key`` and the word a
result is printed under (``valid``, ``self-asserted``, ``NOT VERIFIED``, ``INVALID``).

A file checked only under the key it names itself proves nothing about who made it,
so without ``--pubkey`` (or an anchor, or the opt-in flag) a verify command exits 7
(``NoTrustedKeyError``) and never prints "valid".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..vault import NoTrustedKeyError, VerificationError

__all__ = [
    "NO_TRUSTED_KEY",
    "PINNED",
    "SELF_ASSERTED",
    "fail_unless_ok",
    "problem",
    "trust_embedded_option",
    "verdict",
]

F = TypeVar("F", bound=Callable[..., Any])

#: the reports' reason and trust words (vault/trust.py)
NO_TRUSTED_KEY = "no trusted key"
PINNED = "pinned"
SELF_ASSERTED = "self-asserted"


def trust_embedded_option(command: F) -> F:
    """``--trust-embedded-key``: accept the key the file names itself (the result is
    then reported as self-asserted, never as valid). Passed as ``trust_embedded_key``."""
    return click.option(
        "--trust-embedded-key",
        "trust_embedded_key",
        is_flag=True,
        help="Without --pubkey, check against the key the file names itself; the result "
        "is then only self-asserted (anyone can sign a file with a key of their own).",
    )(command)


def verdict(ok: bool, reason: str | None, trust: str | None) -> str:
    """The word a human result is printed under."""
    if ok:
        return SELF_ASSERTED if trust == SELF_ASSERTED else "valid"
    return "NOT VERIFIED" if reason == NO_TRUSTED_KEY else "INVALID"


def problem(reason: str | None, message: str) -> str:
    """The indented line under a failed result: ``reason: message``, or the message
    alone where it already says it is not verified."""
    return f"  {message}" if reason == NO_TRUSTED_KEY else f"  {reason}: {message}"


def fail_unless_ok(
    ok: bool,
    reason: str | None,
    message: str,
    what: str,
    *,
    option: str = "--pubkey FILE",
    **extra: Any,
) -> None:
    """Raise the error a failed check ends the command with: NoTrustedKeyError (exit 7)
    when only a trust root was missing, else VerificationError (exit 5)."""
    if ok:
        return
    if reason == NO_TRUSTED_KEY:
        raise NoTrustedKeyError(
            f"{what}: {message} with {option}, or pass --trust-embedded-key to accept it "
            "as self-asserted"
        )
    where = f" at seq {extra['seq']}" if extra.get("seq") is not None else ""
    raise VerificationError(
        f"{what} fails verification: {reason}{where}", reason=reason or "invalid", **extra
    )
