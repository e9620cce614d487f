"""Root keys (DESIGN §3): Argon2id derivation, the KDF floor, key-check values, keyfiles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw

from shredvault.keys import (
    FLOOR,
    InvalidKeyError,
    KdfParams,
    KeysError,
    SecretBytes,
    WeakParametersError,
    WrongKeyError,
    derive_root_key,
    generate_keyfile,
    load_keyfile,
    needs_rehash,
    recommended_params,
)
from shredvault.keys.kdf import check_floor, check_key, key_check_value

PASSPHRASE = b"correct horse battery staple"
SALT = bytes(range(16))
OTHER_SALT = bytes(range(16, 32))
# The key-check label is part of the keystore format: changing it locks out every vault.
KEY_CHECK_LABEL = b"shredvault/key-check/v1"


def assert_reveals_nothing(text: str, secret: bytes) -> None:
    """No usual rendering of ``secret`` (or of its first 8 bytes) appears in ``text``."""
    for candidate in (secret, secret[:8]):
        if not candidate:
            continue
        assert candidate.hex() not in text.lower()
        assert repr(candidate)[2:-1] not in text
        assert candidate.decode("latin-1") not in text
        assert base64.b64encode(candidate).decode() not in text


@pytest.fixture(scope="module")
def floor_root() -> SecretBytes:
    """The root key of PASSPHRASE and SALT at the floor (one ~0.2 s derivation, shared)."""
    return derive_root_key(PASSPHRASE, SALT, FLOOR)


# -- derivation ----------------------------------------------------------------------


def test_derive_root_key_returns_32_bytes(floor_root: SecretBytes) -> None:
    assert len(floor_root) == 32


def test_derive_root_key_is_deterministic_for_same_passphrase_salt_and_params(
    floor_root: SecretBytes,
) -> None:
    assert derive_root_key(PASSPHRASE, SALT, FLOOR) == floor_root


def test_derive_root_key_is_argon2id_with_the_stored_parameters(floor_root: SecretBytes) -> None:
    expected = hash_secret_raw(
        PASSPHRASE,
        SALT,
        time_cost=FLOOR.time_cost,
        memory_cost=FLOOR.memory_kib,
        parallelism=FLOOR.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    assert floor_root.reveal() == expected


def test_derive_root_key_differs_by_salt(floor_root: SecretBytes) -> None:
    assert derive_root_key(PASSPHRASE, OTHER_SALT, FLOOR) != floor_root


def test_derive_root_key_differs_by_passphrase(floor_root: SecretBytes) -> None:
    assert derive_root_key(PASSPHRASE + b"!", SALT, FLOOR) != floor_root


def test_derive_root_key_differs_by_parameters(floor_root: SecretBytes) -> None:
    stronger = KdfParams(FLOOR.time_cost + 1, FLOOR.memory_kib, FLOOR.parallelism)
    assert derive_root_key(PASSPHRASE, SALT, stronger) != floor_root


def test_derive_root_key_refuses_an_empty_passphrase() -> None:
    with pytest.raises(InvalidKeyError, match="empty"):
        derive_root_key(b"", SALT, FLOOR)


def test_derive_root_key_refuses_a_text_passphrase() -> None:
    with pytest.raises(InvalidKeyError):
        derive_root_key("correct horse", SALT, FLOOR)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 8, 15, 17, 32])
def test_derive_root_key_refuses_a_salt_that_is_not_16_bytes(size: int) -> None:
    with pytest.raises(InvalidKeyError, match="salt"):
        derive_root_key(PASSPHRASE, bytes(size), FLOOR)


# -- the floor -----------------------------------------------------------------------

BELOW_FLOOR = [
    pytest.param(KdfParams(2, 65536, 1), id="t=2"),
    pytest.param(KdfParams(3, 65535, 1), id="m=65535KiB"),
    pytest.param(KdfParams(3, 65536, 0), id="p=0"),
    pytest.param(KdfParams(1, 4 * 65536, 4), id="t=1-with-more-memory"),
    pytest.param(KdfParams(10, 32768, 4), id="m=32MiB-with-more-passes"),
    pytest.param(KdfParams(0, 0, 0), id="all-zero"),
]


def test_floor_is_rfc_9106_second_profile() -> None:
    assert KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=1) == FLOOR


@pytest.mark.parametrize("params", BELOW_FLOOR)
def test_check_floor_refuses_parameters_below_the_floor(params: KdfParams) -> None:
    with pytest.raises(WeakParametersError, match="below the floor"):
        check_floor(params)


@pytest.mark.parametrize(
    "params",
    [FLOOR, KdfParams(3, 65536, 4), KdfParams(4, 2 * 65536, 1)],
    ids=["floor", "floor-with-4-lanes", "stronger"],
)
def test_check_floor_accepts_parameters_at_or_above_the_floor(params: KdfParams) -> None:
    check_floor(params)  # raises if refused


@pytest.mark.parametrize("params", BELOW_FLOOR)
def test_derive_root_key_refuses_parameters_below_the_floor(params: KdfParams) -> None:
    with pytest.raises(WeakParametersError):
        derive_root_key(PASSPHRASE, SALT, params)


def test_weak_parameters_error_is_an_invalid_key_error_and_a_value_error() -> None:
    assert issubclass(WeakParametersError, InvalidKeyError)
    assert issubclass(WeakParametersError, KeysError)
    assert issubclass(WeakParametersError, ValueError)


def test_recommended_params_meet_the_floor_with_one_to_four_lanes() -> None:
    params = recommended_params()
    check_floor(params)
    assert params.time_cost == FLOOR.time_cost
    assert params.memory_kib == FLOOR.memory_kib
    assert 1 <= params.parallelism <= 4


def test_kdf_params_survive_a_round_trip_through_their_header_dict() -> None:
    params = KdfParams(4, 131072, 2)
    assert params.to_dict() == {"t": 4, "m": 131072, "p": 2}
    assert KdfParams.from_dict(params.to_dict()) == params


# -- rehash --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [FLOOR, recommended_params(), KdfParams(4, 2 * 65536, 1)],
    ids=["floor", "recommended", "stronger"],
)
def test_needs_rehash_is_false_for_parameters_at_least_as_strong_as_recommended(
    params: KdfParams,
) -> None:
    assert needs_rehash(params) is False


@pytest.mark.parametrize(
    "params",
    [KdfParams(2, 65536, 4), KdfParams(3, 32768, 4), KdfParams(1, 1024, 1)],
    ids=["fewer-passes", "less-memory", "both"],
)
def test_needs_rehash_is_true_for_parameters_weaker_than_recommended(params: KdfParams) -> None:
    assert needs_rehash(params) is True


# -- key-check values ----------------------------------------------------------------


def test_key_check_value_is_hmac_sha256_of_the_fixed_label_under_the_key() -> None:
    key = bytes(range(32))
    expected = hmac.new(key, KEY_CHECK_LABEL, hashlib.sha256).digest()
    assert key_check_value(SecretBytes(key)) == expected


def test_key_check_value_differs_between_keys() -> None:
    assert key_check_value(SecretBytes(bytes(32))) != key_check_value(
        SecretBytes(bytes(31) + b"\1")
    )


def test_check_key_accepts_the_key_that_made_the_check_value() -> None:
    key = SecretBytes(os.urandom(32))
    check_key(key, key_check_value(key))  # raises if refused


def test_check_key_raises_wrong_key_error_for_another_key() -> None:
    right, wrong = SecretBytes(os.urandom(32)), SecretBytes(os.urandom(32))
    with pytest.raises(WrongKeyError):
        check_key(wrong, key_check_value(right))


@pytest.mark.parametrize("expected", [b"", bytes(32), bytes(31)], ids=["empty", "zeros", "short"])
def test_check_key_raises_wrong_key_error_for_a_damaged_check_value(expected: bytes) -> None:
    with pytest.raises(WrongKeyError):
        check_key(SecretBytes(os.urandom(32)), expected)


def test_wrong_key_error_message_holds_neither_key() -> None:
    right, wrong = os.urandom(32), os.urandom(32)
    with pytest.raises(WrongKeyError) as caught:
        check_key(SecretBytes(wrong), key_check_value(SecretBytes(right)))
    assert_reveals_nothing(str(caught.value), right)
    assert_reveals_nothing(str(caught.value), wrong)


def test_check_key_compares_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time_compare = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((bytes(a), bytes(b)))
        return constant_time_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    key = SecretBytes(os.urandom(32))
    check_key(key, key_check_value(key))
    assert compared == [(key_check_value(key), key_check_value(key))]


def test_wrong_key_error_is_an_invalid_key_error() -> None:
    assert issubclass(WrongKeyError, InvalidKeyError)
    assert issubclass(WrongKeyError, KeysError)


# -- keyfiles ------------------------------------------------------------------------


def test_generate_keyfile_writes_32_bytes_readable_only_by_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32


def test_generate_keyfile_writes_fresh_random_bytes_each_time(tmp_path: Path) -> None:
    generate_keyfile(tmp_path / "a.key")
    generate_keyfile(tmp_path / "b.key")
    assert (tmp_path / "a.key").read_bytes() != (tmp_path / "b.key").read_bytes()


def test_generate_keyfile_refuses_to_overwrite_an_existing_keyfile(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keyfile(path)
    assert path.read_bytes() == before


def test_generate_keyfile_refuses_to_overwrite_any_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a key, but precious")
    with pytest.raises(FileExistsError):
        generate_keyfile(path)
    assert path.read_bytes() == b"not a key, but precious"


def test_load_keyfile_returns_the_generated_bytes(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    assert load_keyfile(path).reveal() == path.read_bytes()


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700], ids=oct)
def test_load_keyfile_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    path.chmod(mode)
    assert len(load_keyfile(path)) == 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610], ids=oct)
def test_load_keyfile_refuses_a_file_group_or_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    key = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(InvalidKeyError) as caught:
        load_keyfile(path)
    message = str(caught.value)
    assert str(path) in message
    assert_reveals_nothing(message, key)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_keyfile_refuses_a_file_of_the_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "vault.key"
    content = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    with pytest.raises(InvalidKeyError) as caught:
        load_keyfile(path)
    message = str(caught.value)
    assert str(path) in message
    assert_reveals_nothing(message, content)


def test_load_keyfile_refuses_a_missing_file_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(InvalidKeyError, match=re.escape(str(path))):
        load_keyfile(path)


# -- keyfiles: owner, type and one file descriptor (issue 18 item 6) ----------------------


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to chown")
def test_a_keyfile_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.key"
    generate_keyfile(path)
    os.chown(path, 12345, 12345)
    with pytest.raises(InvalidKeyError, match="belongs to another user"):
        load_keyfile(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_keyfile_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(InvalidKeyError, match="not a regular file"):
        load_keyfile(path)


def test_a_keyfile_of_the_wrong_size_or_a_directory_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(InvalidKeyError, match="exactly 32 bytes"):
        load_keyfile(short)
    longer = tmp_path / "long.key"
    longer.write_bytes(b"x" * 33)
    longer.chmod(0o600)
    with pytest.raises(InvalidKeyError, match="exactly 32 bytes"):
        load_keyfile(longer)
    with pytest.raises(InvalidKeyError):
        load_keyfile(tmp_path)
