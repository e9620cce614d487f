"""Token verifiers computed by hand, from the root key and keys.db, with the formulas of
docs/keys.md: root --HKDF wrap--> wrap key --AES-GCM--> MAC seed --HKDF token-mac-->
token-MAC key; verifier = HMAC-SHA-256(token-MAC key, SHA-256(token)) in hex."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from contextlib import closing
from pathlib import Path

from shredvault.keys import Envelope, SecretBytes
from shredvault.keys.envelope import mac_seed_aad
from shredvault.keys.subkeys import ROOT_WRAP, ROW_AUTH, TOKEN_MAC, derive_subkey

__all__ = ["row_key_by_hand", "token_key_by_hand", "verifier_by_hand"]


def token_key_by_hand(keys_db: Path, root: SecretBytes, label: bytes = TOKEN_MAC) -> bytes:
    with closing(sqlite3.connect(f"file:{keys_db}?mode=ro", uri=True)) as conn:
        (vault_id,) = conn.execute("SELECT v FROM meta WHERE k = 'vault_id'").fetchone()
        (wrapped,) = conn.execute("SELECT wrapped FROM mac_seed WHERE id = 1").fetchone()
    wrap = Envelope(derive_subkey(root, ROOT_WRAP, vault_id), 0)
    seed = wrap.open(bytes(wrapped), mac_seed_aad(vault_id))
    return derive_subkey(SecretBytes(seed), label, vault_id).reveal()


def row_key_by_hand(keys_db: Path, root: SecretBytes) -> bytes:
    """The row-auth key (docs/rows.md), from the keystore file and the root key."""
    return token_key_by_hand(keys_db, root, ROW_AUTH)


def verifier_by_hand(keys_db: Path, root: SecretBytes, token: str) -> str:
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.new(token_key_by_hand(keys_db, root), digest, hashlib.sha256).hexdigest()
