"""The blind-index key: keyed hashes of searchable fields' values (issue 21, item 2).

``HMAC-SHA-256(index key, message)``, where the index key derives from the vault's MAC
seed (:mod:`keys.subkeys`, label ``shredvault/mac/blind-index/v1``): one key per vault,
the same for every customer (a search spans customers), kept when the passphrase or
keyfile changes. What a message is (kind, field, normalized value) and how much of the
tag is kept is the vault's business (vault/blindindex.py, docs/search.md): this module
only tags bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from .errors import InvalidKeyError
from .secret import SecretBytes

__all__ = ["IndexKey"]


class IndexKey:
    """The blind-index key. Its repr is redacted and it cannot be pickled or copied."""

    __slots__ = ("_key",)

    def __init__(self, key: SecretBytes) -> None:
        if len(key) != 32:
            raise InvalidKeyError("a blind-index key must be 32 bytes")
        self._key = SecretBytes(key.reveal())

    def __repr__(self) -> str:
        return "<IndexKey HMAC-SHA-256, key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("blind-index keys cannot be pickled or copied")

    def tag(self, message: bytes) -> bytes:
        """The 32-byte HMAC-SHA-256 of ``message``."""
        return hmac.digest(self._key.reveal(), message, "sha256")

    def tagger(self) -> Callable[[bytes], bytes]:
        """:meth:`tag` for a batch: the HMAC keyed once (copied per message). Keep it
        for one batch only: it holds the keyed state."""
        base = crypto_hmac.HMAC(self._key.reveal(), hashes.SHA256())

        def tag(message: bytes) -> bytes:
            mac = base.copy()
            mac.update(message)
            return mac.finalize()

        return tag

    def wipe(self) -> None:
        """Overwrite the key (best effort)."""
        self._key.wipe()
