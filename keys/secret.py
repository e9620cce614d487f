"""A holder for secret bytes that will not show itself in reprs, logs or pickles."""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["SecretBytes"]


class SecretBytes:
    """Secret key material in a mutable buffer that can be wiped.

    ``repr`` is redacted, pickling and copying by reduction are refused, and equality
    is constant-time. Call :meth:`reveal` only at the point of use (a cipher's key).
    """

    __slots__ = ("_buf",)

    def __init__(self, data: bytes | bytearray) -> None:
        self._buf = bytearray(data)

    def reveal(self) -> bytes:
        """The secret as ``bytes``, for handing to a primitive."""
        return bytes(self._buf)

    def wipe(self) -> None:
        """Overwrite the buffer with zeros (best effort: Python may hold copies)."""
        for i in range(len(self._buf)):
            self._buf[i] = 0

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"<SecretBytes {len(self._buf)} bytes, redacted>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._buf, other._buf)

    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("secret key material cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("secret key material cannot be pickled or copied")
