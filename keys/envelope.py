"""AEAD envelopes (DESIGN §4): versioned AES-256-GCM blobs bound to where they belong.

Layout, integers big-endian::

    0x01 format | 0x01 alg | u32 key_version | 12-byte nonce | ciphertext || 16-byte tag

The header is authenticated too: it is prepended to the caller's AAD, so a blob whose
version bytes were edited fails to open rather than being tried under another key.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionError, InvalidKeyError, UnsupportedFormatError
from .secret import SecretBytes

__all__ = [
    "ALG_AES256GCM",
    "FORMAT_V1",
    "HEADER_SIZE",
    "Envelope",
    "aad",
    "blob_key_version",
    "dek_aad",
    "fingerprint",
    "kek_aad",
    "mac_seed_aad",
    "record_aad",
    "record_aad_prefix",
    "record_aad_suffix",
    "signing_seed_aad",
]

FORMAT_V1 = 0x01
ALG_AES256GCM = 0x01
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct(">BBI")
HEADER_SIZE = _HEADER.size + NONCE_SIZE
_U32 = struct.Struct(">I")
_VERSION_PART = struct.Struct(">II")  # length prefix (4) and the u32 version


def aad(*parts: bytes) -> bytes:
    """Concatenate parts, each prefixed by its u32 length, so no two tuples collide."""
    return b"".join(_U32.pack(len(p)) + p for p in parts)


def record_aad(
    vault_id: str,
    customer_id: str,
    record_id: str,
    kind: str,
    version: int,
    record_version: int | None = None,
) -> bytes:
    """AAD binding a record ciphertext to its vault, customer, record, kind and DEK
    version, and (records sealed from data schema 3 on, ``aad_v`` 2) the record's own
    version as one more u32 part; None for a record sealed before (``aad_v`` 1)."""
    parts = [
        b"shredvault/record/v1",
        vault_id.encode(),
        customer_id.encode(),
        record_id.encode(),
        kind.encode(),
        _U32.pack(version),
    ]
    if record_version is not None:
        parts.append(_U32.pack(record_version))
    return aad(*parts)


def record_aad_prefix(vault_id: str, customer_id: str) -> bytes:
    """The fixed leading part of :func:`record_aad` for one customer (hot paths cache it)."""
    return aad(b"shredvault/record/v1", vault_id.encode(), customer_id.encode())


def record_aad_suffix(
    prefix: bytes, record_id: str, kind: str, version: int, record_version: int | None = None
) -> bytes:
    """:func:`record_aad` from a cached :func:`record_aad_prefix`, plus (from data
    schema 3) the record's own version as one more length-prefixed u32, so an older
    ciphertext of the same record no longer opens as the current one. ``None``: the
    AAD of a record sealed before (``aad_v`` 1 in the data store)."""
    rid, knd = record_id.encode(), kind.encode()
    parts = [prefix, _U32.pack(len(rid)), rid, _U32.pack(len(knd)), knd]
    parts.append(_VERSION_PART.pack(4, version))
    if record_version is not None:
        parts.append(_VERSION_PART.pack(4, record_version))
    return b"".join(parts)


_DEK_LABEL = aad(b"shredvault/dek/v1")
_TWO_U32_PARTS = struct.Struct(">IIII")  # (4, version, 4, epoch): two length-prefixed u32s


def dek_aad(vault_id: str, customer_id: str, version: int, epoch: int) -> bytes:
    """AAD binding a wrapped DEK to its vault, customer, DEK version and KEK epoch."""
    vid, cid = vault_id.encode(), customer_id.encode()
    return b"".join(
        (
            _DEK_LABEL,
            _U32.pack(len(vid)),
            vid,
            _U32.pack(len(cid)),
            cid,
            _TWO_U32_PARTS.pack(4, version, 4, epoch),
        )
    )


def kek_aad(vault_id: str, epoch: int) -> bytes:
    """AAD binding a wrapped KEK to its vault and epoch."""
    return aad(b"shredvault/kek/v1", vault_id.encode(), _U32.pack(epoch))


def signing_seed_aad(vault_id: str, generation: int) -> bytes:
    """AAD binding the wrapped Ed25519 seed to its vault and generation."""
    return aad(b"shredvault/sign/v1", vault_id.encode(), _U32.pack(generation))


def mac_seed_aad(vault_id: str) -> bytes:
    """AAD binding the wrapped MAC seed (keys/subkeys.py) to its vault."""
    return aad(b"shredvault/mac-seed/v1", vault_id.encode())


def blob_key_version(blob: bytes) -> int:
    """The key version named in a blob's header; checks format and algorithm bytes."""
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        raise DecryptionError("ciphertext is truncated")
    fmt, alg, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1:
        raise UnsupportedFormatError(f"unknown envelope format byte 0x{fmt:02x}")
    if alg != ALG_AES256GCM:
        raise UnsupportedFormatError(f"unknown envelope algorithm byte 0x{alg:02x}")
    return int(version)


def fingerprint(wrapped: bytes) -> str:
    """SHA-256 hex of a wrapped key: names a key in logs and receipts without revealing it."""
    return hashlib.sha256(wrapped).hexdigest()


class Envelope:
    """AES-256-GCM under one key and key version: seals and opens envelope blobs."""

    __slots__ = ("_aead", "_header", "version")

    def __init__(self, key: SecretBytes, version: int) -> None:
        if len(key) != 32:
            raise InvalidKeyError("an envelope key must be 32 bytes")
        if not 0 <= version < 2**32:
            raise InvalidKeyError("key version must fit in u32")
        self._aead = AESGCM(key.reveal())
        self.version = version
        self._header = _HEADER.pack(FORMAT_V1, ALG_AES256GCM, version)

    def __repr__(self) -> str:
        return f"<Envelope AES-256-GCM version={self.version}, key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("envelope keys cannot be pickled")

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``context`` (an :func:`aad` value)."""
        return self.seal_many([plaintext], [context])[0]

    def seal_many(self, plaintexts: Sequence[bytes], contexts: Sequence[bytes]) -> list[bytes]:
        """Encrypt a batch; nonces for the whole batch come from one ``os.urandom`` call."""
        n = len(plaintexts)
        if len(contexts) != n:
            raise ValueError("seal_many needs one context per plaintext")
        nonces = os.urandom(NONCE_SIZE * n)
        header = self._header
        encrypt = self._aead.encrypt
        out = []
        for i in range(n):
            nonce = nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            head = header + nonce
            out.append(head + encrypt(nonce, plaintexts[i], head + contexts[i]))
        return out

    def open(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt a blob sealed under this key with the same ``context``.

        Raises :class:`UnsupportedFormatError` for unknown format/alg bytes and
        :class:`DecryptionError` for anything else that does not authenticate.
        """
        version = blob_key_version(blob)
        if version != self.version:
            raise DecryptionError("ciphertext was sealed under another key version")
        head = blob[:HEADER_SIZE]
        try:
            return self._aead.decrypt(head[_HEADER.size :], blob[HEADER_SIZE:], head + context)
        except InvalidTag:
            raise DecryptionError(
                "ciphertext failed authentication (altered, truncated, or moved)"
            ) from None
