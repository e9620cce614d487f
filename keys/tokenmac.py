"""Stored verifiers of bearer tokens: the one place they are computed and compared.

A principal's token is shown once; the data store keeps only its verifier,
``HMAC-SHA-256(token-MAC key, SHA-256(token as UTF-8))`` in hex, where the token-MAC key
derives from the vault's MAC seed (:mod:`keys.subkeys`). Whoever can write the data
store but does not hold the keystore's secret cannot make a row that a token of their
choosing satisfies. The inner SHA-256 is there so that a verifier stored before key
separation (the plain SHA-256 hex) is upgraded without the token: the MAC of that digest.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NoReturn

from .errors import InvalidKeyError
from .secret import SecretBytes

__all__ = ["DIGEST_SIZE", "TokenMac"]

DIGEST_SIZE = 32


class TokenMac:
    """The token-MAC key: makes and checks token verifiers. Its repr is redacted and
    it cannot be pickled or copied."""

    __slots__ = ("_key",)

    def __init__(self, key: SecretBytes) -> None:
        if len(key) != 32:
            raise InvalidKeyError("a token-MAC key must be 32 bytes")
        self._key = SecretBytes(key.reveal())

    def __repr__(self) -> str:
        return "<TokenMac HMAC-SHA-256, key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("token-MAC keys cannot be pickled or copied")

    def of_digest(self, digest: bytes) -> str:
        """The verifier (hex) of a token whose SHA-256 is ``digest``."""
        if len(digest) != DIGEST_SIZE:
            raise InvalidKeyError(f"a token digest must be {DIGEST_SIZE} bytes")
        return hmac.new(self._key.reveal(), digest, hashlib.sha256).hexdigest()

    def of_token(self, token: str) -> str:
        """The verifier (hex) to store for ``token``."""
        # surrogatepass: any str a caller passes is hashed, none raises
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return self.of_digest(digest)

    def matches(self, token: str, stored: str) -> bool:
        """Whether ``token`` satisfies the ``stored`` verifier, compared in constant time
        (as bytes, so a damaged non-ASCII value is a mismatch, not an error)."""
        presented = self.of_token(token).encode("ascii")
        return hmac.compare_digest(presented, stored.encode("utf-8", "surrogatepass"))

    def wipe(self) -> None:
        """Overwrite the key (best effort); afterwards no verifier matches a real one."""
        self._key.wipe()
