"""Ciphertext tampering in data.db (DESIGN §4): every altered, truncated or moved record
blob fails to decrypt with DecryptionError (unknown format/alg bytes with
UnsupportedFormatError), no plaintext is returned, and other records still read."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shredvault import keys, vault
from shredvault.vault import Session, Vault

# Envelope layout: format(1) | alg(1) | u32 dek_version | 12-byte nonce | ct || 16-byte tag
FORMAT_AT, ALG_AT, VERSION_AT, NONCE_AT, HEADER = 0, 1, 2, 6, 18


@dataclass
class World:
    vault: Vault
    session: Session
    alice: str
    bob: str
    alice_1: str  # profile
    alice_2: str  # profile
    alice_note: str
    bob_1: str

    @property
    def db(self) -> Path:
        return self.vault.path / "data.db"


@pytest.fixture
def world(tmp_path: Path, keyfile: Path) -> Iterator[World]:
    v = Vault.create(tmp_path / "v", keyfile=keyfile)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    v.declare_kind("note", fields=["name"], purposes=["service"])
    s = v.admin()
    alice, bob = s.add_customer(), s.add_customer()
    a1, a2, an, b1 = s.put_many(
        [
            (alice, "profile", {"name": "Alice One"}),
            (alice, "profile", {"name": "Alice Two"}),
            (alice, "note", {"name": "Alice Note"}),
            (bob, "profile", {"name": "Bob One"}),
        ],
        purpose="service",
    )
    yield World(v, s, alice, bob, a1, a2, an, b1)
    v.close()


def read_blob(db: Path, rid: str) -> bytes:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT ciphertext FROM sv_records WHERE id = ?", (rid,)).fetchone()
        return bytes(row[0])
    finally:
        conn.close()


def write_blob(db: Path, rid: str, data: bytes) -> None:
    conn = sqlite3.connect(db, timeout=10)
    try:
        with conn:
            conn.execute("UPDATE sv_records SET ciphertext = ? WHERE id = ?", (data, rid))
    finally:
        conn.close()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def assert_unreadable(w: World, customer: str, rid: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        w.session.get(customer, rid, purpose="service")


def assert_others_read(w: World, *skip: str) -> None:
    expect = {
        w.alice_1: (w.alice, "Alice One"),
        w.alice_2: (w.alice, "Alice Two"),
        w.alice_note: (w.alice, "Alice Note"),
        w.bob_1: (w.bob, "Bob One"),
    }
    for rid, (cid, name) in expect.items():
        if rid not in skip:
            assert w.session.get(cid, rid, purpose="service").fields == {"name": name}


def test_decryption_error_is_reexported_by_vault() -> None:
    assert vault.DecryptionError is keys.DecryptionError
    assert vault.UnsupportedFormatError is keys.UnsupportedFormatError
    assert issubclass(vault.UnsupportedFormatError, vault.DecryptionError)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda n: NONCE_AT, id="nonce"),
        pytest.param(lambda n: HEADER, id="first-ciphertext-byte"),
        pytest.param(lambda n: n // 2 + HEADER // 2, id="middle"),
        pytest.param(lambda n: n - 1, id="last-tag-byte"),
        pytest.param(lambda n: VERSION_AT + 3, id="dek-version"),
    ],
)
def test_a_flipped_byte_in_a_record_raises_decryption_error(
    world: World, where: Callable[[int], int]
) -> None:
    original = read_blob(world.db, world.alice_1)
    write_blob(world.db, world.alice_1, flip(original, where(len(original))))
    with pytest.raises(vault.DecryptionError) as caught:
        world.session.get(world.alice, world.alice_1, purpose="service")
    assert isinstance(caught.value, keys.DecryptionError)
    assert "Alice" not in str(caught.value)
    assert_others_read(world, world.alice_1)


def test_a_ciphertext_copied_onto_another_customers_record_fails_to_decrypt(
    world: World,
) -> None:
    write_blob(world.db, world.bob_1, read_blob(world.db, world.alice_1))
    assert_unreadable(world, world.bob, world.bob_1, vault.DecryptionError)
    assert_others_read(world, world.bob_1)


def test_a_ciphertext_copied_onto_another_record_of_the_same_customer_fails(
    world: World,
) -> None:
    write_blob(world.db, world.alice_2, read_blob(world.db, world.alice_1))
    assert_unreadable(world, world.alice, world.alice_2, vault.DecryptionError)
    assert_others_read(world, world.alice_2)


def test_swapped_ciphertexts_of_one_customer_both_fail_to_decrypt(world: World) -> None:
    one, two = read_blob(world.db, world.alice_1), read_blob(world.db, world.alice_2)
    write_blob(world.db, world.alice_1, two)
    write_blob(world.db, world.alice_2, one)
    assert_unreadable(world, world.alice, world.alice_1, vault.DecryptionError)
    assert_unreadable(world, world.alice, world.alice_2, vault.DecryptionError)
    assert_others_read(world, world.alice_1, world.alice_2)


def test_a_record_relabelled_to_another_kind_fails_to_decrypt(world: World) -> None:
    conn = sqlite3.connect(world.db, timeout=10)
    with conn:
        conn.execute("UPDATE sv_records SET kind = 'note' WHERE id = ?", (world.alice_1,))
    conn.close()
    # The row fails its authenticator before anything is decrypted (vault/rowauth.py).
    assert_unreadable(world, world.alice, world.alice_1, vault.TamperError)
    assert_others_read(world, world.alice_1)


def test_a_record_moved_to_another_customer_row_fails_to_decrypt(world: World) -> None:
    # Re-parent the row itself: same record id and kind, another customer (and DEK).
    conn = sqlite3.connect(world.db, timeout=10)
    with conn:
        conn.execute(
            "UPDATE sv_records SET customer_id = ? WHERE id = ?", (world.bob, world.alice_1)
        )
    conn.close()
    assert_unreadable(world, world.bob, world.alice_1, vault.TamperError)
    assert_others_read(world, world.alice_1)


def test_a_ciphertext_copied_into_another_vault_fails_to_decrypt(
    world: World, tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "other", keyfile=keyfile) as other:
        other.declare_kind("profile", fields=["name"], purposes=["service"])
        s = other.admin()
        c = s.add_customer()
        rid = s.put(c, "profile", {"name": "Other"}, purpose="service")
        write_blob(other.path / "data.db", rid, read_blob(world.db, world.alice_1))
        with pytest.raises(vault.DecryptionError):
            s.get(c, rid, purpose="service")
    assert_others_read(world)


@pytest.mark.parametrize("keep", [HEADER + 16 - 1, HEADER + 5, HEADER, 5, 0])
def test_a_truncated_ciphertext_raises_decryption_error(world: World, keep: int) -> None:
    write_blob(world.db, world.alice_1, read_blob(world.db, world.alice_1)[:keep])
    assert_unreadable(world, world.alice, world.alice_1, vault.DecryptionError)
    assert_others_read(world, world.alice_1)


def test_a_ciphertext_missing_its_last_byte_raises_decryption_error(world: World) -> None:
    write_blob(world.db, world.alice_1, read_blob(world.db, world.alice_1)[:-1])
    assert_unreadable(world, world.alice, world.alice_1, vault.DecryptionError)
    assert_others_read(world, world.alice_1)


def test_an_extended_ciphertext_raises_decryption_error(world: World) -> None:
    write_blob(world.db, world.alice_1, read_blob(world.db, world.alice_1) + b"\x00")
    assert_unreadable(world, world.alice, world.alice_1, vault.DecryptionError)
    assert_others_read(world, world.alice_1)


@pytest.mark.parametrize(("at", "value"), [(FORMAT_AT, 0x02), (FORMAT_AT, 0x00), (ALG_AT, 0x02)])
def test_an_unknown_format_or_alg_byte_raises_unsupported_format_error(
    world: World, at: int, value: int
) -> None:
    original = read_blob(world.db, world.alice_1)
    write_blob(world.db, world.alice_1, original[:at] + bytes([value]) + original[at + 1 :])
    assert_unreadable(world, world.alice, world.alice_1, vault.UnsupportedFormatError)
    assert_others_read(world, world.alice_1)


def test_one_tampered_record_in_a_batch_returns_no_data_at_all(world: World) -> None:
    write_blob(world.db, world.alice_2, flip(read_blob(world.db, world.alice_2), HEADER))
    pairs = [(world.alice, world.alice_1), (world.alice, world.alice_2), (world.bob, world.bob_1)]
    with pytest.raises(vault.DecryptionError):
        world.session.get_many(pairs, purpose="service")
    with pytest.raises(vault.DecryptionError):
        world.session.list_records(world.alice, purpose="service")
    assert_others_read(world, world.alice_2)


def test_an_update_of_a_tampered_record_fails_and_leaves_it_as_it_was(world: World) -> None:
    tampered = flip(read_blob(world.db, world.alice_1), HEADER)
    write_blob(world.db, world.alice_1, tampered)
    with pytest.raises(vault.DecryptionError):
        world.session.update(world.alice, world.alice_1, {"name": "New"}, purpose="service")
    assert read_blob(world.db, world.alice_1) == tampered


def test_tampering_is_detected_with_keys_loaded_from_the_keystore_after_reopen(
    world: World, keyfile: Path
) -> None:
    world.vault.close()
    write_blob(world.db, world.alice_1, flip(read_blob(world.db, world.alice_1), HEADER))
    write_blob(world.db, world.bob_1, read_blob(world.db, world.alice_2))
    with Vault.open(world.vault.path, keyfile=keyfile) as reopened:
        world.vault, world.session = reopened, reopened.admin()
        assert_unreadable(world, world.alice, world.alice_1, vault.DecryptionError)
        assert_unreadable(world, world.bob, world.bob_1, vault.DecryptionError)
        assert_others_read(world, world.alice_1, world.bob_1)
