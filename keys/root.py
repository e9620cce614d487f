"""The root key of a keystore (DESIGN §3): chosen when the keystore is made or its
secret changes, derived again at every unlock from what the header stores.

:mod:`keys.kdf` holds the primitives (Argon2id, key-check values); this module applies
them to a keystore header: which secret a vault takes, its salt and KDF parameters,
the floor that refuses a weakened header, and what the root key gives under the
keystore's schema (:class:`RootKeys`): since schema 2 a wrap subkey and a key-check
subkey (:mod:`keys.subkeys`); in schema 1 the root key itself did both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NoReturn

from .envelope import Envelope
from .errors import InvalidKeyError, KeystoreError
from .kdf import (
    SALT_SIZE,
    KdfParams,
    check_ceiling,
    check_floor,
    check_key,
    derive_root_key,
    key_check_value,
    normalize_passphrase,
    recommended_params,
)
from .secret import SecretBytes
from .store import SCHEMA_VERSION, KeystoreHeader
from .subkeys import KEY_CHECK, ROOT_WRAP, derive_subkey

__all__ = [
    "LEGACY_SCHEMA",
    "ROOT_VERSION",
    "NewRoot",
    "RootKeys",
    "key_check_for",
    "new_root",
    "stored_kdf_params",
    "unlock_root",
]

ROOT_VERSION = 0  # the root key has no versions; wrapped KEKs and seeds name version 0
LEGACY_SCHEMA = 1  # keys.db before key separation: the root key wrapped and was checked


def key_check_for(root: SecretBytes, vault_id: str, schema: int) -> bytes:
    """The key-check value of ``root`` as a keystore of ``schema`` stores it: HMAC of a
    fixed label under the key-check subkey (schema 2), or under the root key itself
    (schema 1). :class:`KeystoreError` for a schema this code does not know."""
    checking = _key_check_key(root, vault_id, schema)
    try:
        return key_check_value(checking)
    finally:
        if checking is not root:
            checking.wipe()


def _key_check_key(root: SecretBytes, vault_id: str, schema: int) -> SecretBytes:
    if schema == LEGACY_SCHEMA:
        return root
    if schema == SCHEMA_VERSION:
        return derive_subkey(root, KEY_CHECK, vault_id)
    raise KeystoreError(f"unknown keystore schema version {schema}")


class RootKeys:
    """What an unlocked root key gives under one keystore schema: the key that wraps
    the KEK epochs, signing seeds and MAC seed, and the key-check value. The root key
    itself is not kept (in schema 1 the wrapping key *is* the root key)."""

    __slots__ = ("key_check", "schema", "wrap")

    def __init__(self, root: SecretBytes, vault_id: str, schema: int) -> None:
        self.schema = schema
        self.key_check = key_check_for(root, vault_id, schema)
        if schema == LEGACY_SCHEMA:
            self.wrap = Envelope(root, ROOT_VERSION)
        else:
            wrap_key = derive_subkey(root, ROOT_WRAP, vault_id)
            self.wrap = Envelope(wrap_key, ROOT_VERSION)
            wrap_key.wipe()

    def __repr__(self) -> str:
        return f"<RootKeys schema={self.schema}, keys redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("root keys cannot be pickled")


@dataclass(frozen=True, slots=True)
class NewRoot:
    """A fresh root key and the header fields that let the same secret derive it again."""

    root: SecretBytes
    key_source: str  # "passphrase" | "keyfile"
    kdf: str  # JSON text of KdfParams.to_dict(), empty for a keyfile
    salt: bytes  # empty for a keyfile

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("root keys cannot be pickled")


def new_root(
    passphrase: bytes | None, keyfile_key: SecretBytes | None, params: KdfParams | None
) -> NewRoot:
    """The root key for exactly one of a passphrase (Argon2id under a new random salt,
    ``params`` or today's recommendation) or a keyfile key.

    Raises :class:`~keys.errors.InvalidKeyError` unless exactly one is given, or for an
    empty passphrase; :class:`~keys.errors.WeakParametersError` below the floor.
    """
    if (passphrase is None) == (keyfile_key is None):
        raise InvalidKeyError("give exactly one of a passphrase or a keyfile key")
    if passphrase is not None:
        params = params or recommended_params()
        salt = os.urandom(SALT_SIZE)
        root = derive_root_key(normalize_passphrase(passphrase), salt, params)
        return NewRoot(root, "passphrase", json.dumps(params.to_dict(), sort_keys=True), salt)
    assert keyfile_key is not None
    return NewRoot(keyfile_key, "keyfile", "", b"")


def unlock_root(
    header: KeystoreHeader, passphrase: bytes | None, keyfile_key: SecretBytes | None
) -> SecretBytes:
    """Derive the root key the header names and check it against the key-check value,
    computed as the header's schema says (:func:`key_check_for`), in constant time.

    Raises :class:`~keys.errors.WrongKeyError` for a wrong passphrase or keyfile,
    :class:`~keys.errors.WeakParametersError` for a header below the KDF floor,
    :class:`~keys.errors.InvalidKeyError` when the other kind of secret is given.
    """
    root = _derive(header, passphrase, keyfile_key)
    checking = _key_check_key(root, header.vault_id, header.schema_version)
    try:
        check_key(checking, header.key_check)
    finally:
        if checking is not root:
            checking.wipe()
    return root


def _derive(
    header: KeystoreHeader, passphrase: bytes | None, keyfile_key: SecretBytes | None
) -> SecretBytes:
    if header.key_source == "passphrase":
        if passphrase is None:
            raise InvalidKeyError("this vault is unlocked with a passphrase")
        params = stored_kdf_params(header)
        check_floor(params)
        check_ceiling(params)
        return derive_root_key(passphrase, header.salt, params)
    if header.key_source == "keyfile":
        if keyfile_key is None:
            raise InvalidKeyError("this vault is unlocked with a keyfile")
        return keyfile_key
    raise KeystoreError(f"unknown key source {header.key_source!r} in keystore header")


def stored_kdf_params(header: KeystoreHeader) -> KdfParams:
    """The KDF parameters of a passphrase vault's header; :class:`KeystoreError` if damaged."""
    try:
        return KdfParams.from_dict(json.loads(header.kdf))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise KeystoreError("the keystore header holds damaged KDF parameters") from None
