"""AEAD envelopes (DESIGN §4): layout, authentication of every byte, context binding."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from shredvault.keys import (
    DecryptionError,
    Envelope,
    InvalidKeyError,
    KeysError,
    SecretBytes,
    UnsupportedFormatError,
    aad,
    dek_aad,
    kek_aad,
    record_aad,
    signing_seed_aad,
)
from shredvault.keys.envelope import blob_key_version

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VAULT = "vlt_7a3d"
CUSTOMER = "cus_aaaaaaaaaaaaaaaaaaaaaaaaaa"
RECORD = "rec_0001"
KIND = "contact"
HEADER = 1 + 1 + 4 + 12
TAG = 16


def envelope(version: int = 1, key: bytes = KEY) -> Envelope:
    return Envelope(SecretBytes(key), version)


def context() -> bytes:
    return record_aad(VAULT, CUSTOMER, RECORD, KIND, 1)


def flip(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    edited = bytearray(blob)
    edited[index] ^= mask
    return bytes(edited)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


# -- round trips ---------------------------------------------------------------------


def test_open_returns_what_seal_sealed() -> None:
    blob = envelope().seal(b'{"email":"ada@example.org"}', context())
    assert envelope().open(blob, context()) == b'{"email":"ada@example.org"}'


def test_empty_plaintext_seals_to_header_and_tag_only_and_opens() -> None:
    blob = envelope().seal(b"", context())
    assert len(blob) == HEADER + TAG
    assert envelope().open(blob, context()) == b""


@given(
    plaintext=st.binary(max_size=2048),
    context_bytes=st.binary(max_size=256),
    version=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_seal_then_open_round_trips_any_bytes_under_any_context_and_version(
    plaintext: bytes, context_bytes: bytes, version: int
) -> None:
    env = envelope(version)
    assert env.open(env.seal(plaintext, context_bytes), context_bytes) == plaintext


def test_sealing_the_same_plaintext_twice_gives_different_blobs() -> None:
    env = envelope()
    assert env.seal(b"same", context()) != env.seal(b"same", context())


# -- layout --------------------------------------------------------------------------


def test_blob_starts_with_format_1_alg_1_and_big_endian_u32_version() -> None:
    blob = envelope(0x01020304).seal(b"x" * 100, context())
    assert blob[0] == 0x01
    assert blob[1] == 0x01
    assert blob[2:6] == b"\x01\x02\x03\x04"


def test_blob_is_header_then_12_byte_nonce_then_ciphertext_and_16_byte_tag() -> None:
    for size in (0, 1, 100, 4096):
        blob = envelope().seal(b"p" * size, context())
        assert len(blob) == 1 + 1 + 4 + 12 + size + 16


def test_blob_is_aes_256_gcm_under_its_nonce_with_header_and_context_as_aad() -> None:
    plaintext = b"x" * 100
    blob = envelope(7).seal(plaintext, context())
    nonce, ciphertext_and_tag = blob[6:18], blob[18:]
    assert AESGCM(KEY).decrypt(nonce, ciphertext_and_tag, blob[:18] + context()) == plaintext


def test_blob_key_version_reads_the_version_from_the_header() -> None:
    assert blob_key_version(envelope(2**32 - 1).seal(b"x", context())) == 2**32 - 1


# -- tampering -----------------------------------------------------------------------

PLAINTEXT_20 = b"twenty bytes of data"
# offsets in a 20-byte plaintext blob: 0 fmt, 1 alg, 2-5 version, 6-17 nonce, 18-37 ct, 38-53 tag
FLIPPED_BYTES = [
    pytest.param(2, id="version-high"),
    pytest.param(5, id="version-low"),
    pytest.param(6, id="nonce-first"),
    pytest.param(17, id="nonce-last"),
    pytest.param(18, id="ciphertext-first"),
    pytest.param(37, id="ciphertext-last"),
    pytest.param(38, id="tag-first"),
    pytest.param(53, id="tag-last"),
]


@pytest.mark.parametrize("index", FLIPPED_BYTES)
def test_a_flipped_byte_raises_decryption_error(index: int) -> None:
    blob = envelope().seal(PLAINTEXT_20, context())
    assert len(blob) == 54
    with pytest.raises(DecryptionError):
        envelope().open(flip(blob, index), context())


@pytest.mark.parametrize("index", [0, 1], ids=["format", "alg"])
def test_a_flipped_format_or_alg_byte_raises_unsupported_format_error(index: int) -> None:
    blob = envelope().seal(PLAINTEXT_20, context())
    with pytest.raises(UnsupportedFormatError):
        envelope().open(flip(blob, index), context())


@given(
    index=st.integers(min_value=0, max_value=1), value=st.integers(0, 255).filter(lambda v: v != 1)
)
def test_any_unknown_format_or_alg_value_raises_unsupported_format_error(
    index: int, value: int
) -> None:
    edited = bytearray(envelope().seal(PLAINTEXT_20, context()))
    edited[index] = value
    with pytest.raises(UnsupportedFormatError):
        envelope().open(bytes(edited), context())


@given(data=st.data(), plaintext=st.binary(max_size=64))
def test_any_flipped_bits_anywhere_raise_decryption_error(
    data: st.DataObject, plaintext: bytes
) -> None:
    blob = envelope().seal(plaintext, context())
    index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    with pytest.raises(DecryptionError):
        envelope().open(flip(blob, index, mask), context())


def test_unsupported_format_error_is_a_decryption_error() -> None:
    assert issubclass(UnsupportedFormatError, DecryptionError)
    assert issubclass(DecryptionError, KeysError)


def test_an_edited_version_fails_even_under_an_envelope_of_that_version() -> None:
    blob = envelope(1).seal(PLAINTEXT_20, context())
    edited = blob[:2] + u32(2) + blob[6:]
    with pytest.raises(DecryptionError):
        envelope(2).open(edited, context())


def test_open_refuses_a_blob_sealed_under_another_key_version() -> None:
    blob = envelope(1).seal(PLAINTEXT_20, context())
    with pytest.raises(DecryptionError):
        envelope(2).open(blob, context())


def test_open_refuses_a_blob_sealed_under_another_key() -> None:
    blob = envelope(key=OTHER_KEY).seal(PLAINTEXT_20, context())
    with pytest.raises(DecryptionError):
        envelope().open(blob, context())


@given(data=st.data(), plaintext=st.binary(max_size=64))
def test_a_truncated_blob_raises_decryption_error(data: st.DataObject, plaintext: bytes) -> None:
    blob = envelope().seal(plaintext, context())
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="cut")
    with pytest.raises(DecryptionError):
        envelope().open(blob[:cut], context())


@pytest.mark.parametrize("cut", [0, 1, 5, 6, 17, 18, 33, 53])
def test_a_blob_cut_at_a_field_boundary_raises_decryption_error(cut: int) -> None:
    blob = envelope().seal(PLAINTEXT_20, context())
    with pytest.raises(DecryptionError):
        envelope().open(blob[:cut], context())


def test_a_blob_with_bytes_appended_raises_decryption_error() -> None:
    blob = envelope().seal(PLAINTEXT_20, context())
    with pytest.raises(DecryptionError):
        envelope().open(blob + b"\x00", context())


# -- context binding -----------------------------------------------------------------


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param(record_aad("vlt_other", CUSTOMER, RECORD, KIND, 1), id="other-vault"),
        pytest.param(
            record_aad(VAULT, "cus_bbbbbbbbbbbbbbbbbbbbbbbbbb", RECORD, KIND, 1),
            id="other-customer",
        ),
        pytest.param(record_aad(VAULT, CUSTOMER, "rec_0002", KIND, 1), id="other-record"),
        pytest.param(record_aad(VAULT, CUSTOMER, RECORD, "address", 1), id="other-kind"),
        pytest.param(record_aad(VAULT, CUSTOMER, RECORD, KIND, 2), id="other-dek-version"),
        pytest.param(b"", id="no-context"),
    ],
)
def test_a_record_opened_in_another_context_raises_decryption_error(moved: bytes) -> None:
    blob = envelope().seal(PLAINTEXT_20, context())
    with pytest.raises(DecryptionError):
        envelope().open(blob, moved)


def test_a_wrapped_kek_does_not_open_as_a_signing_seed() -> None:
    root = envelope(0)
    wrapped_kek = root.seal(b"k" * 32, kek_aad(VAULT, 1))
    with pytest.raises(DecryptionError):
        root.open(wrapped_kek, signing_seed_aad(VAULT, 1))


def test_a_wrapped_dek_does_not_open_under_another_kek_epoch() -> None:
    kek = envelope(1)
    wrapped = kek.seal(b"d" * 32, dek_aad(VAULT, CUSTOMER, 1, 1))
    with pytest.raises(DecryptionError):
        kek.open(wrapped, dek_aad(VAULT, CUSTOMER, 1, 2))


def test_record_aad_is_the_length_prefixed_label_ids_and_u32_version() -> None:
    expected = b"".join(
        u32(len(part)) + part
        for part in (
            b"shredvault/record/v1",
            VAULT.encode(),
            CUSTOMER.encode(),
            RECORD.encode(),
            KIND.encode(),
            u32(3),
        )
    )
    assert record_aad(VAULT, CUSTOMER, RECORD, KIND, 3) == expected


def test_dek_aad_is_the_length_prefixed_label_ids_version_and_epoch() -> None:
    expected = aad(b"shredvault/dek/v1", VAULT.encode(), CUSTOMER.encode(), u32(2), u32(5))
    assert dek_aad(VAULT, CUSTOMER, 2, 5) == expected


def test_kek_and_signing_seed_aads_carry_their_own_labels() -> None:
    assert kek_aad(VAULT, 4) == aad(b"shredvault/kek/v1", VAULT.encode(), u32(4))
    assert signing_seed_aad(VAULT, 4) == aad(b"shredvault/sign/v1", VAULT.encode(), u32(4))


# -- aad() ---------------------------------------------------------------------------


def test_aad_prefixes_each_part_with_its_u32_big_endian_length() -> None:
    assert aad(b"ab", b"", b"c") == b"\x00\x00\x00\x02ab\x00\x00\x00\x00\x00\x00\x00\x01c"


def test_aad_keeps_part_boundaries_so_ab_c_differs_from_a_bc() -> None:
    assert aad(b"ab", b"c") != aad(b"a", b"bc")


def test_aad_of_one_empty_part_differs_from_aad_of_none() -> None:
    assert aad(b"") != aad()


def parse_aad(encoded: bytes) -> tuple[bytes, ...]:
    parts = []
    offset = 0
    while offset < len(encoded):
        (length,) = struct.unpack_from(">I", encoded, offset)
        parts.append(encoded[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(encoded)
    return tuple(parts)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_aad_decodes_back_to_exactly_its_parts(parts: list[bytes]) -> None:
    assert parse_aad(aad(*parts)) == tuple(parts)


@given(st.lists(st.binary(max_size=6), max_size=4), st.lists(st.binary(max_size=6), max_size=4))
def test_aad_of_different_part_tuples_differs(left: list[bytes], right: list[bytes]) -> None:
    if left != right:
        assert aad(*left) != aad(*right)


# -- batches -------------------------------------------------------------------------


def test_seal_many_draws_a_distinct_nonce_for_every_blob() -> None:
    count = 2000
    blobs = envelope().seal_many([b"same"] * count, [context()] * count)
    assert len({blob[6:18] for blob in blobs}) == count


def test_seal_many_blobs_open_under_their_own_contexts() -> None:
    contexts = [record_aad(VAULT, CUSTOMER, f"rec_{i}", KIND, 1) for i in range(50)]
    plaintexts = [f"record {i}".encode() for i in range(50)]
    blobs = envelope().seal_many(plaintexts, contexts)
    assert [envelope().open(b, c) for b, c in zip(blobs, contexts, strict=True)] == plaintexts


def test_seal_many_binds_each_blob_to_its_own_context_only() -> None:
    contexts = [record_aad(VAULT, CUSTOMER, f"rec_{i}", KIND, 1) for i in range(2)]
    first, _second = envelope().seal_many([b"a", b"b"], contexts)
    with pytest.raises(DecryptionError):
        envelope().open(first, contexts[1])


def test_seal_many_of_nothing_is_nothing() -> None:
    assert envelope().seal_many([], []) == []


# -- construction --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_envelope_refuses_a_key_that_is_not_32_bytes(size: int) -> None:
    with pytest.raises(InvalidKeyError):
        Envelope(SecretBytes(bytes(size)), 1)


@pytest.mark.parametrize("version", [-1, 2**32])
def test_envelope_refuses_a_version_outside_u32(version: int) -> None:
    with pytest.raises(InvalidKeyError):
        Envelope(SecretBytes(KEY), version)
