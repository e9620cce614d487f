"""Subkeys, one per use, by HKDF-SHA-256 (RFC 5869): the registry of their labels.

No key is used for two things. The root key (Argon2id of the passphrase, or the
keyfile's bytes) only gives subkeys: one wraps what the root protects (KEK epochs,
signing seeds, the MAC seed), one makes the key-check value. The MAC seed (random,
wrapped under the root's wrap subkey, kept when the passphrase or keyfile changes)
gives the keys of MACs over what the data store holds, so those MACs stay valid across
a change of secret. Each subkey is ``HKDF-SHA-256(ikm=source key, salt=none,
info=aad(label, vault id), length=32)``: the vault id in ``info`` keeps one keyfile
used for two vaults from giving both the same subkeys.

A label is part of the keystore format: changing one locks out every vault (or
invalidates every token). A new use gets a new label here and in docs/keys.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .envelope import aad
from .errors import InvalidKeyError
from .secret import SecretBytes

__all__ = [
    "BLIND_INDEX",
    "KEY_CHECK",
    "LABELS",
    "RESERVED",
    "ROOT_WRAP",
    "ROW_AUTH",
    "SUBKEY_SIZE",
    "TOKEN_MAC",
    "derive_subkey",
]

SUBKEY_SIZE = 32

# From the root key (they change with the passphrase or keyfile).
ROOT_WRAP = b"shredvault/root/wrap/v1"
KEY_CHECK = b"shredvault/root/key-check/v1"
# From the MAC seed (they survive a change of passphrase or keyfile).
TOKEN_MAC = b"shredvault/mac/token-mac/v1"
ROW_AUTH = b"shredvault/mac/row-auth/v1"
BLIND_INDEX = b"shredvault/mac/blind-index/v1"

#: every label and its one use
LABELS: Mapping[bytes, str] = MappingProxyType(
    {
        ROOT_WRAP: "AES-256-GCM key wrapping the KEK epochs, signing seeds and MAC seed",
        KEY_CHECK: "HMAC key of the key-check value in the keystore header",
        TOKEN_MAC: "HMAC key of principals' stored token verifiers",
        ROW_AUTH: "HMAC key of the data store's row authenticators (vault/rowauth.py)",
        BLIND_INDEX: "HMAC key of the blind-index tags of searchable fields (vault/blindindex.py)",
    }
)

#: labels set aside for a later use: nothing derives them yet
RESERVED: frozenset[bytes] = frozenset()


def derive_subkey(source: SecretBytes, label: bytes, vault_id: str) -> SecretBytes:
    """The subkey of ``source`` (the root key or the MAC seed) for the use ``label``
    names, bound to ``vault_id``. Deterministic; distinct labels give independent keys.

    Raises :class:`InvalidKeyError` for a label not in :data:`LABELS`, a reserved one,
    or a source that is not 32 bytes.
    """
    if label not in LABELS:
        raise InvalidKeyError("unregistered subkey label (add it to keys/subkeys.py first)")
    if label in RESERVED:
        raise InvalidKeyError(f"subkey label {label.decode()} is reserved: nothing uses it yet")
    if len(source) != SUBKEY_SIZE:
        raise InvalidKeyError(f"a subkey source must be {SUBKEY_SIZE} bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=SUBKEY_SIZE,
        salt=None,
        info=aad(label, vault_id.encode()),
    )
    return SecretBytes(hkdf.derive(source.reveal()))
