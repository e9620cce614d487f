"""Root-key derivation: Argon2id from a passphrase, or a 32-byte keyfile; key-check values."""

from __future__ import annotations

import hashlib
import hmac
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw

from .errors import InvalidKeyError, WeakParametersError, WrongKeyError
from .files import read_private_file, write_file
from .secret import SecretBytes

__all__ = [
    "CEILING",
    "FLOOR",
    "KEY_SIZE",
    "SALT_SIZE",
    "KdfParams",
    "check_ceiling",
    "check_floor",
    "check_key",
    "derive_root_key",
    "generate_keyfile",
    "key_check_value",
    "load_keyfile",
    "needs_rehash",
    "normalize_passphrase",
    "recommended_params",
]

KEY_SIZE = 32
SALT_SIZE = 16
_KEY_CHECK_LABEL = b"shredvault/key-check/v1"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters (memory in KiB), as stored in the keystore header."""

    time_cost: int
    memory_kib: int
    parallelism: int

    def to_dict(self) -> dict[str, int]:
        return {"t": self.time_cost, "m": self.memory_kib, "p": self.parallelism}

    @classmethod
    def from_dict(cls, raw: dict[str, int]) -> KdfParams:
        """From a header's ``{"t", "m", "p"}``: each an integer (not a bool, a float or
        a string of digits), else ValueError."""
        values = [raw["t"], raw["m"], raw["p"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError("KDF parameters are integers")
        return cls(time_cost=values[0], memory_kib=values[1], parallelism=values[2])


# RFC 9106 §4, second recommended option: t=3, m=64 MiB. p only splits the work into
# lanes; it does not lower the attacker's memory-time cost, so its floor is 1.
FLOOR = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=1)


# An edited header must not make an unlock exhaust the machine: no unlock needs more
# than 16 passes, 1 GiB or 16 lanes (the recommendation is 3 passes, 64 MiB, <= 4 lanes).
CEILING = KdfParams(time_cost=16, memory_kib=1024 * 1024, parallelism=16)


def recommended_params() -> KdfParams:
    """The floor with lanes tuned to this machine (at most 4, RFC 9106's choice)."""
    return KdfParams(FLOOR.time_cost, FLOOR.memory_kib, max(1, min(4, os.cpu_count() or 1)))


def check_floor(params: KdfParams) -> None:
    """Raise :class:`WeakParametersError` when any parameter is below :data:`FLOOR`."""
    if (
        params.time_cost < FLOOR.time_cost
        or params.memory_kib < FLOOR.memory_kib
        or params.parallelism < FLOOR.parallelism
    ):
        raise WeakParametersError(
            f"KDF parameters t={params.time_cost} m={params.memory_kib}KiB "
            f"p={params.parallelism} are below the floor t={FLOOR.time_cost} "
            f"m={FLOOR.memory_kib}KiB; refusing (a weakened header is treated as an attack)"
        )


def check_ceiling(params: KdfParams) -> None:
    """Raise :class:`WeakParametersError` (an unusable header, like a weakened one) when
    any parameter is above :data:`CEILING`, before any memory is asked for."""
    if (
        params.time_cost > CEILING.time_cost
        or params.memory_kib > CEILING.memory_kib
        or params.parallelism > CEILING.parallelism
    ):
        raise WeakParametersError(
            f"KDF parameters t={params.time_cost} m={params.memory_kib}KiB "
            f"p={params.parallelism} are above the ceiling t={CEILING.time_cost} "
            f"m={CEILING.memory_kib}KiB p={CEILING.parallelism}; refusing (an inflated "
            "header would exhaust memory or CPU at unlock)"
        )


def needs_rehash(params: KdfParams) -> bool:
    """True when the stored parameters are weaker than today's recommendation."""
    rec = recommended_params()
    return params.time_cost < rec.time_cost or params.memory_kib < rec.memory_kib


def derive_root_key(passphrase: bytes, salt: bytes, params: KdfParams) -> SecretBytes:
    """Argon2id(passphrase, salt) -> 32-byte root key. Refuses parameters below the floor."""
    if not isinstance(passphrase, bytes | bytearray):
        raise InvalidKeyError("passphrase must be bytes")
    if len(passphrase) == 0:
        raise InvalidKeyError("passphrase must not be empty")
    if len(salt) != SALT_SIZE:
        raise InvalidKeyError(f"KDF salt must be {SALT_SIZE} bytes")
    check_floor(params)
    check_ceiling(params)
    raw = hash_secret_raw(
        bytes(passphrase),
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_SIZE,
        type=Type.ID,
    )
    return SecretBytes(raw)


def key_check_value(key: SecretBytes) -> bytes:
    """HMAC-SHA256 of a fixed label under ``key``: proves a key without using it. The
    keystore applies it to the root key's key-check subkey (:func:`keys.root.key_check_for`;
    schema 1 applied it to the root key itself)."""
    return hmac.new(key.reveal(), _KEY_CHECK_LABEL, hashlib.sha256).digest()


def check_key(key: SecretBytes, expected: bytes) -> None:
    """Raise :class:`WrongKeyError` unless ``key`` matches ``expected`` (constant time)."""
    if not hmac.compare_digest(key_check_value(key), expected):
        raise WrongKeyError("wrong passphrase or keyfile")


def generate_keyfile(path: str | os.PathLike[str]) -> None:
    """Write 32 random bytes to a new file readable only by its owner (mode 0600,
    atomically). Raises :class:`~keys.errors.OutputExistsError` if ``path`` exists."""
    write_file(path, os.urandom(KEY_SIZE))


def load_keyfile(path: Path) -> SecretBytes:
    """Read a keyfile: a regular file of exactly 32 bytes, owned by this user and not
    accessible by group or others, checked and read through one open descriptor
    (:func:`keys.files.read_private_file`)."""
    data = read_private_file(path, limit=KEY_SIZE, what="keyfile")
    if len(data) != KEY_SIZE:
        raise InvalidKeyError(f"keyfile {path} must hold exactly {KEY_SIZE} bytes")
    return SecretBytes(data)


def normalize_passphrase(passphrase: bytes) -> bytes:
    """The passphrase as Argon2id takes it: its UTF-8 text in Unicode NFC, so the same
    words typed on keyboards that compose accents differently (``é`` as one code point
    or as ``e`` + combining accent) give the same key. Bytes that are not UTF-8 are
    taken as they are (docs/keys.md, "Passphrases")."""
    try:
        text = bytes(passphrase).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(passphrase)
    return unicodedata.normalize("NFC", text).encode("utf-8")
