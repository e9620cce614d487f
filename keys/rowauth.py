"""The row-authentication key: MACs over the data store's rows (issue 16, item 2).

``HMAC-SHA-256(row-auth key, message)``, where the row-auth key derives from the
vault's MAC seed (:mod:`keys.subkeys`, label ``shredvault/mac/row-auth/v1``), so it
survives a change of passphrase or keyfile, and nobody who can only write the data
store can make a tag. What a message is (a row's canonical encoding) is the vault's
business (vault/rowauth.py, docs/rows.md): this module only tags bytes and checks tags
in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from .errors import InvalidKeyError
from .secret import SecretBytes

__all__ = ["TAG_SIZE", "RowAuth"]

TAG_SIZE = 32


class RowAuth:
    """The row-auth key. Its repr is redacted and it cannot be pickled or copied."""

    __slots__ = ("_key",)

    def __init__(self, key: SecretBytes) -> None:
        if len(key) != 32:
            raise InvalidKeyError("a row-auth key must be 32 bytes")
        self._key = SecretBytes(key.reveal())

    def __repr__(self) -> str:
        return "<RowAuth HMAC-SHA-256, key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("row-auth keys cannot be pickled or copied")

    def tag(self, message: bytes) -> bytes:
        """The 32-byte tag of ``message``."""
        return hmac.digest(self._key.reveal(), message, "sha256")

    def tag_hex(self, message: bytes) -> str:
        """:meth:`tag` as 64 lowercase hex digits (what the data store holds)."""
        return hmac.digest(self._key.reveal(), message, "sha256").hex()

    def check(self, message: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is the tag of ``message`` (constant time)."""
        return hmac.compare_digest(self.tag(message), tag)

    def check_hex(self, message: bytes, stored: object) -> bool:
        """Whether a stored hex tag (any value a tampered row may hold) is the tag of
        ``message``, compared in constant time; a non-text or non-ASCII value is a
        mismatch."""
        if not isinstance(stored, str):
            return False
        presented = hmac.digest(self._key.reveal(), message, "sha256").hex()
        try:
            return hmac.compare_digest(presented, stored)
        except TypeError:  # non-ASCII text
            return False

    def hex_checker(self) -> Callable[[bytes, object], bool]:
        """:meth:`check_hex` for a batch of rows: the HMAC-SHA-256 state keyed once
        (``cryptography``'s HMAC, copied per message), about a quarter of the cost of
        keying it per row. Keep it for one batch only: it holds the keyed state."""
        base = crypto_hmac.HMAC(self._key.reveal(), hashes.SHA256())

        def check(message: bytes, stored: object) -> bool:
            if not isinstance(stored, str):
                return False
            mac = base.copy()
            mac.update(message)
            try:
                return hmac.compare_digest(mac.finalize().hex(), stored)
            except TypeError:  # non-ASCII text
                return False

        return check

    def hex_tagger(self) -> Callable[[bytes], str]:
        """:meth:`tag_hex` for a batch of rows (keyed once, as :meth:`hex_checker`)."""
        base = crypto_hmac.HMAC(self._key.reveal(), hashes.SHA256())

        def tag(message: bytes) -> str:
            mac = base.copy()
            mac.update(message)
            return mac.finalize().hex()

        return tag

    def wipe(self) -> None:
        """Overwrite the key (best effort)."""
        self._key.wipe()
