"""Running the click CLI in-process against one vault, with a clean environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from shredvault.cli.main import cli

__all__ = ["Run", "make_run"]

Run = Callable[..., Result]


def make_run(root: Path, keyfile: Path | None) -> Run:
    """``run(*args, input=None, **env)``: the CLI on the vault at ``root`` unlocked with
    ``keyfile``; ``env`` overrides (None removes a variable)."""
    runner = CliRunner()
    base = {
        "SHREDVAULT_VAULT": str(root),
        "SHREDVAULT_KEYFILE": str(keyfile) if keyfile else None,
        "SHREDVAULT_PASSPHRASE": None,
        "SHREDVAULT_DATA_URL": None,
        "SHREDVAULT_TOKEN": None,
    }

    def run(*args: str, input: str | None = None, **env: str | None) -> Result:
        return runner.invoke(
            cli, list(args), input=input, env={**base, **env}, catch_exceptions=False
        )

    return run
