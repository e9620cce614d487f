"""Handover key files open with libsodium (issue 20 item 2): a key file made with the
default settings is unsealed here by libsodium's ``crypto_pwhash`` (PyNaCl's
``nacl.pwhash.argon2id.kdf``) and ``crypto_secretbox``, from docs/handover.md alone, with
no shredvault code; files written before (one lane per core) still open."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.pwhash
import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey
from nacl.secret import SecretBox

from shredvault.keys import KdfParams
from shredvault.keys.sealed import HANDOVER_PARAMS
from shredvault.vault import UnlockError, handover_keygen, open_handover_key

# Non-ASCII on purpose: the passphrase is hashed as its UTF-8 bytes.
PASSPHRASE = "Grüße aus Łódź, 4471 🔑"


def _libsodium_open(key_file: Path, passphrase: str) -> tuple[bytes, bytes]:
    """(private, public) key bytes, the way an acquirer using libsodium would."""
    doc = json.loads(key_file.read_text("utf-8"))
    kdf = doc["kdf"]
    assert (kdf["alg"], kdf["p"]) == ("argon2id", 1)
    wrapping = nacl.pwhash.argon2id.kdf(
        32,
        passphrase.encode("utf-8"),
        bytes.fromhex(kdf["salt"]),
        opslimit=kdf["t"],
        memlimit=kdf["m"] * 1024,
    )
    sealed = bytes.fromhex(doc["sealed"])
    private = SecretBox(wrapping).decrypt(sealed[24:], sealed[:24])
    public = bytes(PrivateKey(private).public_key)
    return private, public


def test_a_default_key_file_opens_with_libsodiums_crypto_pwhash(tmp_path: Path) -> None:
    pub_path, key_path, fingerprint = handover_keygen(tmp_path / "buyer", PASSPHRASE.encode())
    doc = json.loads(key_path.read_text("utf-8"))
    assert doc["kdf"]["t"] == HANDOVER_PARAMS.time_cost == nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    assert doc["kdf"]["m"] * 1024 == nacl.pwhash.argon2id.MEMLIMIT_MODERATE
    private, public = _libsodium_open(key_path, PASSPHRASE)
    assert len(private) == 32
    assert public.hex() == doc["public_key"] == json.loads(pub_path.read_text())["public_key"]
    # The fingerprint is over the raw 32 key bytes, not their hex.
    assert hashlib.sha256(b"shredvault/handover-key/v1" + public).hexdigest() == fingerprint
    assert doc["fingerprint"] == fingerprint
    opened = open_handover_key(key_path, PASSPHRASE.encode())
    assert opened.public_key == public
    # A wrong passphrase fails libsodium's tag check the same way.
    with pytest.raises(CryptoError):
        _libsodium_open(key_path, PASSPHRASE + "x")


def test_an_older_key_file_with_one_lane_per_core_still_opens(tmp_path: Path) -> None:
    old = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=4)
    _pub, key_path, fingerprint = handover_keygen(tmp_path / "old", b"older file", params=old)
    assert json.loads(key_path.read_text())["kdf"]["p"] == 4
    assert open_handover_key(key_path, b"older file").fingerprint == fingerprint
    with pytest.raises(UnlockError):
        open_handover_key(key_path, b"older filE")
