"""The keys package's error tree (DESIGN §8). Messages never contain key material."""

from __future__ import annotations

import errno

__all__ = [
    "DecryptionError",
    "InvalidKeyError",
    "KeysError",
    "KeystoreError",
    "OutputExistsError",
    "UnsupportedFormatError",
    "WeakParametersError",
    "WrongKeyError",
]


class KeysError(Exception):
    """Base of every error raised by ``keys``."""


class InvalidKeyError(KeysError, ValueError):
    """A key, keyfile or key parameter is malformed or unusable."""


class WrongKeyError(InvalidKeyError):
    """The passphrase or keyfile does not match the keystore's key-check value."""


class WeakParametersError(InvalidKeyError):
    """KDF parameters below the floor (or above the ceiling): refused, since a weakened
    header is an attack and an inflated one would exhaust the machine at unlock."""


class DecryptionError(KeysError):
    """Authenticated decryption failed: wrong key, wrong context, or altered bytes."""


class UnsupportedFormatError(DecryptionError):
    """The envelope names a format or algorithm this version does not know."""


class KeystoreError(KeysError):
    """The keystore file is missing, locked, corrupt, or from another vault."""


class OutputExistsError(KeysError, FileExistsError):
    """The file to write already exists (or is being written by another process) and
    overwriting was not asked for: nothing was written, the existing file is untouched.
    ``path`` is the file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.errno = errno.EEXIST
        self.path = path
