"""Vaults in the format from before key separation (keystore and data store schema 1,
as the code up to commit f03c745 wrote them), made here with that code's formulas:

* keystore: ``key_check = HMAC-SHA256(root, "shredvault/key-check/v1")``; every KEK
  epoch and signing seed sealed under the root key itself (``Envelope(root, 0)``, AAD
  ``kek_aad`` / ``signing_seed_aad``); no ``mac_seed`` table; ``schema_version = 1``;
* data store: ``sv_principals.token_hash = SHA-256(token)`` in hex; ``schema_version = 1``.

:func:`make_legacy` takes a closed vault made by today's code and rewrites both stores
that way (the rows, log and checkpoints are unchanged by the upgrade, so they are
reused as they are), then rebuilds keys.db so no byte of the new format stays in it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from shredvault.keys import (
    Envelope,
    KeyRing,
    KeyStore,
    SecretBytes,
    derive_root_key,
    kek_aad,
    signing_seed_aad,
)
from shredvault.keys.envelope import record_aad_suffix
from shredvault.keys.kdf import KdfParams
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey

__all__ = [
    "LEGACY_KEY_CHECK_LABEL",
    "LegacyBlobs",
    "data_engine",
    "keystore_meta",
    "legacy_key_check",
    "make_legacy",
    "passphrase_root",
    "sha256_hex",
    "strip_row_auth",
]

LEGACY_KEY_CHECK_LABEL = b"shredvault/key-check/v1"


@dataclass(frozen=True)
class LegacyBlobs:
    """What the legacy keystore held, to look for once it is upgraded."""

    wrapped: dict[str, bytes]  # "epoch 1", "seed 1": sealed under the root key itself
    raw: dict[str, bytes]  # the same keys unwrapped
    key_check: bytes


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def legacy_key_check(root: SecretBytes) -> bytes:
    return hmac.new(root.reveal(), LEGACY_KEY_CHECK_LABEL, hashlib.sha256).digest()


def keystore_meta(keys_db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(f"file:{keys_db}?mode=ro", uri=True)) as conn:
        return {str(k): str(v) for k, v in conn.execute("SELECT k, v FROM meta")}


def passphrase_root(keys_db: Path, passphrase: bytes) -> SecretBytes:
    """The root key of a passphrase vault, derived from its header (one Argon2id)."""
    meta = keystore_meta(keys_db)
    params = KdfParams.from_dict(json.loads(meta["kdf"]))
    return derive_root_key(passphrase, bytes.fromhex(meta["salt"]), params)


def data_engine(vault_dir: Path, data_url: str | None) -> Engine:
    """An engine on a vault's data store (its data.db, or the PostgreSQL URL)."""
    return create_engine(data_url or f"sqlite:///{vault_dir / 'data.db'}")


def make_legacy(
    vault_dir: Path, root: SecretBytes, tokens: dict[str, str], data_url: str | None = None
) -> LegacyBlobs:
    """Rewrite a closed vault's stores into the schema-1 format. ``tokens``: every
    principal's token by name (their rows get the plain SHA-256 the old code stored)."""
    strip_row_auth(vault_dir, root, data_url)
    blobs = _legacy_keystore(vault_dir / "keys.db", root)
    engine = data_engine(vault_dir, data_url)
    try:
        with engine.begin() as conn:
            for name, token in tokens.items():
                conn.execute(
                    text("UPDATE sv_principals SET token_hash = :h WHERE name = :n"),
                    {"h": sha256_hex(token), "n": name},
                )
            conn.execute(text("UPDATE sv_meta SET v = '1' WHERE k = 'schema_version'"))
    finally:
        engine.dispose()
    return blobs


_AUTH_TABLES = ("sv_kinds", "sv_roles", "sv_principals", "sv_customers", "sv_records")


def strip_row_auth(vault_dir: Path, root: SecretBytes, data_url: str | None = None) -> None:
    """Rewrite a closed vault made by today's code into data schema 2, as the code before
    authenticated rows wrote it: records re-sealed with the AAD without their version,
    no ``seq``/``auth``/``aad_v`` columns, no log ``target`` column or its index, data
    ``schema_version = 2``, and no row-auth mark in the keystore."""
    keys_db = vault_dir / "keys.db"
    store = KeyStore.open(keys_db)
    ring = KeyRing(store, SecretBytes(root.reveal()), store.header())
    engine = data_engine(vault_dir, data_url)
    try:
        with engine.begin() as conn:
            columns = "id, customer_id, kind, version, dek_version, ciphertext"
            rows = conn.execute(text(f"SELECT {columns} FROM sv_records WHERE aad_v = 2")).all()
            for rid, cid, kind, version, dv, blob in rows:
                ck = ring.customer_keys([cid])[cid]
                env = ck.versions[int(dv)]
                now = record_aad_suffix(ck.record_prefix, rid, kind, int(dv), int(version))
                before = record_aad_suffix(ck.record_prefix, rid, kind, int(dv))
                resealed = env.seal(env.open(bytes(blob), now), before)
                conn.execute(
                    text("UPDATE sv_records SET ciphertext = :c WHERE id = :i"),
                    {"c": resealed, "i": rid},
                )
            conn.execute(text("DROP INDEX ix_sv_log_target"))
            conn.execute(text("ALTER TABLE sv_log DROP COLUMN target"))
            conn.execute(text("ALTER TABLE sv_records DROP COLUMN aad_v"))
            for table in _AUTH_TABLES:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN seq"))
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN auth"))
            conn.execute(text("UPDATE sv_meta SET v = '2' WHERE k = 'schema_version'"))
    finally:
        engine.dispose()
        ring.close()
    with closing(sqlite3.connect(keys_db)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE k = 'data_rows_authenticated'")


def _legacy_keystore(keys_db: Path, root: SecretBytes) -> LegacyBlobs:
    with closing(sqlite3.connect(keys_db, isolation_level=None)) as conn:
        conn.execute("PRAGMA secure_delete=ON")
        (vault_id,) = conn.execute("SELECT v FROM meta WHERE k = 'vault_id'").fetchone()
        (schema,) = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        assert schema == "2", "make_legacy rewrites a keystore made by today's code"
        today = Envelope(derive_subkey(root, ROOT_WRAP, vault_id), 0)
        old = Envelope(root, 0)
        wrapped: dict[str, bytes] = {}
        raw: dict[str, bytes] = {}
        conn.execute("BEGIN IMMEDIATE")
        for epoch, blob in conn.execute("SELECT epoch, wrapped FROM kek_epochs").fetchall():
            context = kek_aad(vault_id, int(epoch))
            raw[f"epoch {epoch}"] = today.open(bytes(blob), context)
            wrapped[f"epoch {epoch}"] = old.seal(raw[f"epoch {epoch}"], context)
            conn.execute(
                "UPDATE kek_epochs SET wrapped = ? WHERE epoch = ?",
                (wrapped[f"epoch {epoch}"], epoch),
            )
        for gen, blob in conn.execute("SELECT generation, wrapped FROM signing").fetchall():
            context = signing_seed_aad(vault_id, int(gen))
            raw[f"seed {gen}"] = today.open(bytes(blob), context)
            wrapped[f"seed {gen}"] = old.seal(raw[f"seed {gen}"], context)
            conn.execute(
                "UPDATE signing SET wrapped = ? WHERE generation = ?", (wrapped[f"seed {gen}"], gen)
            )
        conn.execute("DROP TABLE mac_seed")
        key_check = legacy_key_check(root)
        conn.execute("UPDATE meta SET v = ? WHERE k = 'key_check'", (key_check.hex(),))
        conn.execute("UPDATE meta SET v = '1' WHERE k = 'schema_version'")
        conn.execute("COMMIT")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return LegacyBlobs(wrapped, raw, key_check)
