"""Sealing to a recipient (business handover): X25519 key pairs, passphrase-protected key
files, a SealedBox for one package key, and AES-256-GCM under that key.

Key files (UTF-8 JSON, one object, sorted keys)::

    OUT.pub  {"alg":"x25519","fingerprint":"<hex>","format":"shredvault-handover-public-key",
              "public_key":"<hex>","v":1}
    OUT.key  {"alg":"x25519","fingerprint":"<hex>","format":"shredvault-handover-private-key",
              "kdf":{"alg":"argon2id","m":KiB,"p":lanes,"salt":"<hex 16 bytes>","t":passes},
              "public_key":"<hex>","sealed":"<hex: 24-byte nonce | SecretBox ciphertext>","v":1}

The private key is sealed with ``nacl.secret.SecretBox`` under Argon2id(passphrase,
salt) (version 0x13, the passphrase's UTF-8 bytes, 32-byte output); the KDF parameters
sit in the file and are refused below :data:`keys.kdf.FLOOR`. New files use
:data:`HANDOVER_PARAMS` (one lane, so libsodium's ``crypto_pwhash`` opens them); files
written with more lanes still open.
The fingerprint is ``SHA-256(b"shredvault/handover-key/v1" || public key)``, hex.
This module knows nothing of customers or vaults: callers bind their context in AAD.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox

from .errors import DecryptionError, InvalidKeyError, WrongKeyError
from .files import check_absent, write_file
from .kdf import SALT_SIZE, KdfParams, derive_root_key, normalize_passphrase
from .secret import SecretBytes

__all__ = [
    "HANDOVER_PARAMS",
    "PACKAGE_KEY_SIZE",
    "PRIVATE_FORMAT",
    "PUBLIC_FORMAT",
    "HandoverKey",
    "PackageCipher",
    "dump_key_document",
    "generate_handover_key",
    "handover_fingerprint",
    "load_handover_key",
    "load_handover_public_key",
    "parse_handover_public_key",
    "private_key_document",
    "public_key_document",
    "seal_package_key",
    "write_handover_key",
]

PUBLIC_FORMAT = "shredvault-handover-public-key"
PRIVATE_FORMAT = "shredvault-handover-private-key"
PACKAGE_KEY_SIZE = 32
NONCE_SIZE = 12
NONCE_24 = 24  # SecretBox (XSalsa20-Poly1305) nonce of the private key file
_FINGERPRINT_LABEL = b"shredvault/handover-key/v1"
_MAX_KEY_FILE = 16 * 1024

#: Argon2id cost of new handover key files: libsodium's ``crypto_pwhash`` "moderate"
#: preset (opslimit 3, memlimit 256 MiB). One lane, because ``crypto_pwhash`` computes
#: only p = 1 and an acquirer may open the file with libsodium; four times the vault's
#: 64 MiB floor, so a guess costs an attacker more than a vault passphrase guess does
#: (lanes never changed that cost, only the wall time of one derivation).
HANDOVER_PARAMS = KdfParams(time_cost=3, memory_kib=256 * 1024, parallelism=1)


def handover_fingerprint(public_key: bytes) -> str:
    """The fingerprint that names an X25519 public key in manifests and on screens."""
    return hashlib.sha256(_FINGERPRINT_LABEL + bytes(public_key)).hexdigest()


class HandoverKey:
    """An X25519 private key (the acquirer's). Redacted repr; refuses pickling."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        self.public_key: bytes = bytes(key.public_key)

    @property
    def fingerprint(self) -> str:
        return handover_fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"<HandoverKey fingerprint={self.fingerprint[:16]}..., private key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("private keys cannot be pickled")

    def open_package_key(self, sealed: bytes) -> SecretBytes:
        """Unseal a package key sealed to this key; :class:`DecryptionError` if the box
        was sealed to another key or altered."""
        try:
            raw = SealedBox(self._key).decrypt(bytes(sealed))
        except (CryptoError, ValueError, TypeError):
            raise DecryptionError(
                "the package key is not sealed to this key (or altered)"
            ) from None
        if len(raw) != PACKAGE_KEY_SIZE:
            raise DecryptionError("the sealed package key has the wrong size")
        return SecretBytes(raw)


def generate_handover_key() -> HandoverKey:
    """A fresh random X25519 key pair."""
    return HandoverKey(PrivateKey.generate())


def seal_package_key(recipient_public_key: bytes, package_key: SecretBytes) -> bytes:
    """``package_key`` sealed (anonymous sender) to the recipient's X25519 public key."""
    if len(recipient_public_key) != 32:
        raise InvalidKeyError("an X25519 public key is 32 bytes")
    return bytes(SealedBox(PublicKey(bytes(recipient_public_key))).encrypt(package_key.reveal()))


class PackageCipher:
    """AES-256-GCM under a package key: ``nonce(12) || ciphertext || tag(16)``."""

    __slots__ = ("_aead",)

    def __init__(self, key: SecretBytes) -> None:
        if len(key) != PACKAGE_KEY_SIZE:
            raise InvalidKeyError("a package key is 32 bytes")
        self._aead = AESGCM(key.reveal())

    def __repr__(self) -> str:
        return "<PackageCipher AES-256-GCM, key redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("package keys cannot be pickled")

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt; :class:`DecryptionError` when altered, truncated or moved."""
        if len(blob) < NONCE_SIZE + 16:
            raise DecryptionError("sealed record is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], context)
        except InvalidTag:
            raise DecryptionError(
                "sealed record failed authentication (altered or moved)"
            ) from None


# -- key files --------------------------------------------------------------------------------


def dump_key_document(document: dict[str, Any]) -> bytes:
    """A key file's bytes: the object as indented JSON with sorted keys, and a newline."""
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")


def write_handover_key(
    stem: Path, passphrase: bytes, *, params: KdfParams | None = None
) -> tuple[Path, Path, str]:
    """Generate a key pair; write ``stem.pub`` and ``stem.key`` (the private key sealed
    under Argon2id(passphrase)), both 0600 like every file shredvault writes. Refuses
    to overwrite either file (:class:`~keys.errors.OutputExistsError`, checked before
    the slow key derivation); on failure leaves neither. Returns both paths and the
    fingerprint."""
    pub_path = stem.with_name(stem.name + ".pub")
    key_path = stem.with_name(stem.name + ".key")
    for path in (pub_path, key_path):
        check_absent(path)
    key = generate_handover_key()
    private_doc = private_key_document(
        key,
        normalize_passphrase(passphrase),
        params or HANDOVER_PARAMS,
        os.urandom(SALT_SIZE),
        os.urandom(NONCE_24),
    )
    write_file(key_path, dump_key_document(private_doc))
    try:
        write_file(pub_path, dump_key_document(public_key_document(key.public_key)))
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return pub_path, key_path, key.fingerprint


def public_key_document(public_key: bytes) -> dict[str, Any]:
    """The ``OUT.pub`` object for an X25519 public key."""
    return {
        "alg": "x25519",
        "fingerprint": handover_fingerprint(public_key),
        "format": PUBLIC_FORMAT,
        "public_key": public_key.hex(),
        "v": 1,
    }


def private_key_document(
    key: HandoverKey, passphrase: bytes, kdf: KdfParams, salt: bytes, nonce: bytes
) -> dict[str, Any]:
    """The ``OUT.key`` object for ``key``: sealed with SecretBox (``nonce``, 24 random
    bytes) under Argon2id(passphrase, ``salt``, ``kdf``). Callers pass fresh random
    salt and nonce; the docs' worked example passes fixed ones."""
    if len(nonce) != NONCE_24:
        raise InvalidKeyError(f"a SecretBox nonce is {NONCE_24} bytes")
    wrapping = derive_root_key(passphrase, salt, kdf)
    try:
        sealed = bytes(SecretBox(wrapping.reveal()).encrypt(bytes(key._key), nonce))
    finally:
        wrapping.wipe()
    return {
        "alg": "x25519",
        "fingerprint": key.fingerprint,
        "format": PRIVATE_FORMAT,
        "kdf": {"alg": "argon2id", **kdf.to_dict(), "salt": salt.hex()},
        "public_key": key.public_key.hex(),
        "sealed": sealed.hex(),
        "v": 1,
    }


def _read_document(path: Path, fmt: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_KEY_FILE + 1)
    except OSError as error:
        raise InvalidKeyError(f"cannot read {path}: {error.strerror}") from None
    try:
        if len(raw) > _MAX_KEY_FILE:
            raise ValueError("too large")
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != fmt:
            raise ValueError("wrong format")
    except (ValueError, RecursionError):  # RecursionError: nesting thousands deep
        raise InvalidKeyError(f"{path} is not a {fmt} file") from None
    if document.get("v") != 1 or document.get("alg") != "x25519":
        raise InvalidKeyError(f"{path}: unsupported version or algorithm")
    return document


def parse_handover_public_key(document: dict[str, Any]) -> bytes:
    """The 32-byte key of a public-key document; checks its fingerprint."""
    try:
        key = bytes.fromhex(str(document["public_key"]))
    except (KeyError, ValueError):
        raise InvalidKeyError("the public key file holds no valid key") from None
    if len(key) != 32:
        raise InvalidKeyError("an X25519 public key is 32 bytes")
    if document.get("fingerprint") != handover_fingerprint(key):
        raise InvalidKeyError("the public key does not match its fingerprint (altered file)")
    return key


def load_handover_public_key(path: Path) -> bytes:
    """Read ``OUT.pub``; :class:`InvalidKeyError` if it is not one or was altered."""
    return parse_handover_public_key(_read_document(path, PUBLIC_FORMAT))


def load_handover_key(path: Path, passphrase: bytes) -> HandoverKey:
    """Read and unseal ``OUT.key``.

    Raises :class:`WrongKeyError` (wrong passphrase, or an altered file),
    :class:`~keys.WeakParametersError` (KDF parameters below the floor) or
    :class:`InvalidKeyError` (not a key file)."""
    document = _read_document(path, PRIVATE_FORMAT)
    try:
        kdf = document["kdf"]
        if kdf.get("alg") != "argon2id":
            raise ValueError("not argon2id")
        params = KdfParams.from_dict(kdf)
        salt = bytes.fromhex(str(kdf["salt"]))
        sealed = bytes.fromhex(str(document["sealed"]))
        public = parse_handover_public_key(document)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidKeyError(f"{path} is a damaged private key file") from None
    # New files are sealed under the NFC form; older ones under the bytes as given.
    normalized = normalize_passphrase(passphrase)
    forms = [normalized] if normalized == bytes(passphrase) else [normalized, bytes(passphrase)]
    raw: bytes | None = None
    for form in forms:
        wrapping = derive_root_key(form, salt, params)  # refuses a weakened header
        try:
            raw = SecretBox(wrapping.reveal()).decrypt(sealed)
            break
        except (CryptoError, ValueError):
            continue
        finally:
            wrapping.wipe()
    if raw is None:
        raise WrongKeyError("wrong passphrase for the handover key (or an altered key file)")
    key = HandoverKey(PrivateKey(raw))
    if key.public_key != public:
        raise InvalidKeyError(f"{path}: the private key does not match its public key")
    return key
