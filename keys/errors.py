"""The keys package's error tree (DESIGN §8). Messages never contain key material."""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "InvalidKeyError",
    "KeysError",
    "KeystoreError",
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
    """KDF parameters below the floor: refused, since a weakened header is an attack."""


class DecryptionError(KeysError):
    """Authenticated decryption failed: wrong key, wrong context, or altered bytes."""


class UnsupportedFormatError(DecryptionError):
    """The envelope names a format or algorithm this version does not know."""


class KeystoreError(KeysError):
    """The keystore file is missing, locked, corrupt, or from another vault."""
