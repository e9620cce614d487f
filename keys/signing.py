"""Ed25519 signing (PyNaCl) for checkpoints, receipts and manifests."""

from __future__ import annotations

from typing import NoReturn

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import InvalidKeyError
from .secret import SecretBytes

__all__ = ["PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "Signer", "verify_signature"]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class Signer:
    """Signs messages with an Ed25519 key built from a 32-byte seed."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: SecretBytes) -> None:
        if len(seed) != 32:
            raise InvalidKeyError("an Ed25519 seed must be 32 bytes")
        self._key = SigningKey(seed.reveal())
        self.public_key: bytes = bytes(self._key.verify_key)

    def __repr__(self) -> str:
        return f"<Signer public_key={self.public_key.hex()[:16]}..., seed redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("signing keys cannot be pickled")

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return bytes(self._key.sign(message).signature)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True
