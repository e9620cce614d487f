"""The vault's door to the one file writer (``keys/files.py``, contract in docs/files.md).

Its refusal to overwrite becomes the vault's :class:`~.errors.OutputExistsError` (a
``StorageError`` and still a ``FileExistsError``) through :func:`.errors.keys_errors`,
the one keys→vault error mapping. Other ``OSError``s pass through, naming the file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..keys import files as writer
from ..keys import kdf
from .errors import keys_errors

__all__ = [
    "PartialFile",
    "check_absent",
    "create_empty",
    "create_file",
    "generate_keyfile",
    "move_into_place",
    "write_file",
]


class PartialFile(writer.PartialFile):
    """:class:`keys.files.PartialFile` raising the vault's OutputExistsError: a file
    written under a temporary name, at ``target`` only once :meth:`publish` succeeds."""

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        with keys_errors():
            super().__init__(target, overwrite=overwrite)

    def publish(self) -> None:
        with keys_errors():
            super().publish()


@contextmanager
def create_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Write a file in chunks (0600, fsynced, published atomically when the block ends
    normally; nothing at ``path`` if it raises). Raises OutputExistsError if ``path``
    exists and ``overwrite`` is false; OSError for the file system."""
    with keys_errors(), writer.create_file(path, overwrite=overwrite) as handle:
        yield handle


def write_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` as the file ``path`` (0600, fsynced, published atomically). Raises
    OutputExistsError if ``path`` exists and ``overwrite`` is false; OSError for the
    file system. On failure ``path`` is as it was."""
    with keys_errors():
        writer.write_file(path, data, overwrite=overwrite)


def check_absent(path: str | os.PathLike[str]) -> None:
    """Refuse early (OutputExistsError) a path where something already is, before slow
    work; the write itself still refuses atomically."""
    with keys_errors():
        writer.check_absent(path)


def create_empty(path: str | os.PathLike[str]) -> None:
    """An empty 0600 file, created exclusively and durably, for SQLite to fill. Raises
    OutputExistsError if anything is at ``path``."""
    with keys_errors():
        writer.create_empty(path)


def move_into_place(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Give a complete file written by the writer the name ``target`` atomically and
    durably. Raises OutputExistsError if ``target`` exists and ``overwrite`` is false."""
    with keys_errors():
        writer.move_into_place(source, target, overwrite=overwrite)


def generate_keyfile(path: str | os.PathLike[str]) -> None:
    """Write a new keyfile: 32 random bytes, 0600. Raises OutputExistsError if ``path``
    exists."""
    with keys_errors():
        kdf.generate_keyfile(path)
