"""Key separation (issue 16): no key is used for two things. The root key only gives
subkeys, HKDF-SHA-256 with a registered label bound to the vault id: one wraps the KEK
epochs, signing seeds and MAC seed, one makes the key-check value. Token verifiers are
MACs under a subkey of the MAC seed, which survives a change of passphrase or keyfile.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shredvault.keys import (
    DecryptionError,
    Envelope,
    InvalidKeyError,
    KeyRing,
    KeyStore,
    KeystoreError,
    SecretBytes,
    generate_keyfile,
    kek_aad,
    load_keyfile,
)
from shredvault.keys.envelope import mac_seed_aad, signing_seed_aad
from shredvault.keys.store import SCHEMA_VERSION
from shredvault.keys.subkeys import (
    BLIND_INDEX,
    KEY_CHECK,
    LABELS,
    RESERVED,
    ROOT_WRAP,
    ROW_AUTH,
    TOKEN_MAC,
    derive_subkey,
)
from shredvault.keys.tokenmac import TokenMac

from verifiers import token_key_by_hand, verifier_by_hand

ROOT = SecretBytes(bytes(range(32)))
OTHER_ROOT = SecretBytes(bytes(range(32, 64)))
VAULT = "vlt_subkeys"
OTHER_VAULT = "vlt_another"
CREATED = "2026-01-01T00:00:00.000000Z"
USED = sorted(LABELS.keys() - RESERVED)
# The key-check label is part of the keystore format (tests/test_keys_kdf.py).
KEY_CHECK_MESSAGE = b"shredvault/key-check/v1"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "keys.md"


def hkdf_by_hand(source: bytes, label: bytes, vault_id: str) -> bytes:
    """RFC 5869 HKDF-SHA-256, no salt, info = u32-length-prefixed label and vault id."""
    info = b"".join(len(p).to_bytes(4, "big") + p for p in (label, vault_id.encode()))
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(source)


# -- the derivation --------------------------------------------------------------------


@pytest.mark.parametrize("label", USED, ids=lambda b: b.decode())
def test_a_subkey_is_hkdf_sha256_of_its_source_under_label_and_vault_id(label: bytes) -> None:
    assert derive_subkey(ROOT, label, VAULT).reveal() == hkdf_by_hand(ROOT.reveal(), label, VAULT)


@pytest.mark.parametrize("label", USED, ids=lambda b: b.decode())
def test_a_subkey_is_deterministic_for_one_source_label_and_vault(label: bytes) -> None:
    assert derive_subkey(ROOT, label, VAULT) == derive_subkey(
        SecretBytes(ROOT.reveal()), label, VAULT
    )


def test_distinct_labels_give_distinct_keys_none_of_them_the_source() -> None:
    keys = {label: derive_subkey(ROOT, label, VAULT).reveal() for label in USED}
    assert len(set(keys.values())) == len(USED)
    assert ROOT.reveal() not in keys.values()


def test_the_key_check_key_and_the_wrap_key_differ() -> None:
    assert derive_subkey(ROOT, KEY_CHECK, VAULT) != derive_subkey(ROOT, ROOT_WRAP, VAULT)


@pytest.mark.parametrize("label", USED, ids=lambda b: b.decode())
def test_subkeys_differ_between_roots(label: bytes) -> None:
    assert derive_subkey(ROOT, label, VAULT) != derive_subkey(OTHER_ROOT, label, VAULT)


@pytest.mark.parametrize("label", USED, ids=lambda b: b.decode())
def test_subkeys_differ_between_vaults_that_share_a_keyfile(label: bytes) -> None:
    assert derive_subkey(ROOT, label, VAULT) != derive_subkey(ROOT, label, OTHER_VAULT)


def test_an_unregistered_label_is_refused() -> None:
    with pytest.raises(InvalidKeyError, match="unregistered"):
        derive_subkey(ROOT, b"shredvault/root/something-else/v1", VAULT)


def test_the_blind_index_label_is_in_use_no_longer_reserved() -> None:
    assert BLIND_INDEX in USED
    assert derive_subkey(ROOT, BLIND_INDEX, VAULT).reveal() == hkdf_by_hand(
        ROOT.reveal(), BLIND_INDEX, VAULT
    )


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_source_that_is_not_32_bytes_is_refused(size: int) -> None:
    with pytest.raises(InvalidKeyError):
        derive_subkey(SecretBytes(bytes(size)), ROOT_WRAP, VAULT)


# -- the registry ------------------------------------------------------------------------


def test_every_label_is_versioned_and_names_the_key_it_derives_from() -> None:
    assert set(LABELS) == {ROOT_WRAP, KEY_CHECK, TOKEN_MAC, ROW_AUTH, BLIND_INDEX}
    assert frozenset() == RESERVED
    for label in LABELS:
        assert re.fullmatch(rb"shredvault/(root|mac)/[a-z-]+/v1", label), label
    assert {lb for lb in LABELS if lb.startswith(b"shredvault/root/")} == {ROOT_WRAP, KEY_CHECK}


def test_no_label_is_a_prefix_of_another() -> None:
    for a, b in itertools.permutations(LABELS, 2):
        assert not b.startswith(a)


@pytest.mark.parametrize("label", sorted(LABELS), ids=lambda b: b.decode())
def test_every_label_is_documented_in_docs_keys_md(label: bytes) -> None:
    assert f"`{label.decode()}`" in DOCS.read_text("utf-8")


# -- a keystore made today ----------------------------------------------------------------


@pytest.fixture
def keyfile_key(tmp_path: Path) -> SecretBytes:
    generate_keyfile(tmp_path / "vault.key")
    return load_keyfile(tmp_path / "vault.key")


@pytest.fixture
def ring(tmp_path: Path, keyfile_key: SecretBytes) -> Iterator[KeyRing]:
    ring = KeyRing.create(tmp_path / "keys.db", VAULT, created=CREATED, keyfile_key=keyfile_key)
    yield ring
    ring.close()


def test_a_new_keystore_has_schema_2(ring: KeyRing) -> None:
    assert SCHEMA_VERSION == 2
    assert ring.store.header().schema_version == 2
    assert not ring.upgrade_due


def test_a_new_keystore_stores_the_key_check_value_of_the_check_subkey(
    ring: KeyRing, keyfile_key: SecretBytes
) -> None:
    stored = ring.store.header().key_check
    check_key = derive_subkey(keyfile_key, KEY_CHECK, VAULT).reveal()
    assert stored == hmac.new(check_key, KEY_CHECK_MESSAGE, hashlib.sha256).digest()
    for other in (keyfile_key.reveal(), derive_subkey(keyfile_key, ROOT_WRAP, VAULT).reveal()):
        assert stored != hmac.new(other, KEY_CHECK_MESSAGE, hashlib.sha256).digest()


def test_a_new_keystore_wraps_under_the_wrap_subkey_and_under_no_other_key(
    ring: KeyRing, keyfile_key: SecretBytes
) -> None:
    wrap = Envelope(derive_subkey(keyfile_key, ROOT_WRAP, VAULT), 0)
    generation, seed, _public = ring.store.signing_seed()
    mac_seed = ring.store.mac_seed()
    assert mac_seed is not None
    blobs = [
        (ring.store.epochs()[1], kek_aad(VAULT, 1)),
        (seed, signing_seed_aad(VAULT, generation)),
        (mac_seed, mac_seed_aad(VAULT)),
    ]
    for blob, context in blobs:
        assert len(wrap.open(blob, context)) == 32
        for other in (keyfile_key, derive_subkey(keyfile_key, KEY_CHECK, VAULT)):
            with pytest.raises(DecryptionError):
                Envelope(other, 0).open(blob, context)


def test_token_verifier_is_hmac_sha256_of_the_token_digest_under_the_token_key(
    ring: KeyRing, keyfile_key: SecretBytes, tmp_path: Path
) -> None:
    token = "svp_0123456789ab_" + "x" * 43
    expected = verifier_by_hand(tmp_path / "keys.db", keyfile_key, token)
    assert ring.token_mac(token) == expected
    assert ring.token_mac_of_digest(hashlib.sha256(token.encode()).digest()) == expected
    assert ring.token_matches(token, expected)
    assert not ring.token_matches(token + "x", expected)


def test_the_token_key_is_none_of_the_root_keys(
    ring: KeyRing, keyfile_key: SecretBytes, tmp_path: Path
) -> None:
    token_key = token_key_by_hand(tmp_path / "keys.db", keyfile_key)
    root_keys = [derive_subkey(keyfile_key, lb, VAULT).reveal() for lb in (ROOT_WRAP, KEY_CHECK)]
    assert token_key not in [keyfile_key.reveal(), *root_keys]
    assert token_key != derive_subkey(keyfile_key, TOKEN_MAC, VAULT).reveal()  # not from the root


def test_two_vaults_sharing_a_keyfile_make_different_token_verifiers(
    ring: KeyRing, keyfile_key: SecretBytes, tmp_path: Path
) -> None:
    other = KeyRing.create(
        tmp_path / "other.db", OTHER_VAULT, created=CREATED, keyfile_key=keyfile_key
    )
    try:
        assert other.token_mac("svp_0123456789ab_secret") != ring.token_mac(
            "svp_0123456789ab_secret"
        )
    finally:
        other.close()


def test_a_changed_keyfile_keeps_every_token_verifier(
    ring: KeyRing, keyfile_key: SecretBytes, tmp_path: Path
) -> None:
    before = ring.token_mac("svp_0123456789ab_secret")
    old_check = ring.store.header().key_check
    new_key = SecretBytes(os.urandom(32))
    ring.change_root(keyfile_key=new_key)
    assert ring.store.header().key_check != old_check
    assert ring.token_mac("svp_0123456789ab_secret") == before
    ring.close()
    again = KeyRing.unlock(KeyStore.open(tmp_path / "keys.db"), keyfile_key=new_key)
    try:
        assert again.token_mac("svp_0123456789ab_secret") == before
    finally:
        again.close()


def test_a_keystore_that_lost_its_mac_seed_does_not_unlock(
    ring: KeyRing, keyfile_key: SecretBytes, tmp_path: Path
) -> None:
    ring.close()
    with closing(sqlite3.connect(tmp_path / "keys.db")) as conn:
        conn.execute("DELETE FROM mac_seed")
        conn.commit()
    store = KeyStore.open(tmp_path / "keys.db")
    try:
        with pytest.raises(KeystoreError, match="MAC seed"):
            KeyRing.unlock(store, keyfile_key=keyfile_key)
    finally:
        store.close()


# -- the token-MAC holder --------------------------------------------------------------


def test_a_damaged_stored_verifier_is_a_mismatch_not_an_error() -> None:
    tokens = TokenMac(SecretBytes(bytes(32)))
    for stored in ("", "é" * 64, "\ud800", "0" * 64, tokens.of_token("a").upper()):
        assert tokens.matches("a", stored) is False


def test_any_text_token_gets_a_verifier() -> None:
    tokens = TokenMac(SecretBytes(bytes(32)))
    for token in ("", "x" * 10_000, "\ud800", "ünïcödé"):
        assert len(tokens.of_token(token)) == 64


def test_a_key_ring_that_forgot_its_keys_makes_no_verifier(ring: KeyRing) -> None:
    ring.destroy_all_keys(record_as="test_destroyed")  # decommission's first step
    with pytest.raises(KeystoreError, match="forgotten"):
        ring.token_mac("svp_0123456789ab_secret")
    # The MAC seed stays until the signing seed goes, so an unfinished decommission
    # can still unlock the keystore.
    assert ring.store.mac_seed() is not None
