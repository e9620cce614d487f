"""Key material holders (DESIGN §3): redacted reprs, no pickling or copying, wiping."""

from __future__ import annotations

import base64
import copy
import hmac
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shredvault.keys import (
    Envelope,
    KeyRing,
    SecretBytes,
    Signer,
    generate_keyfile,
    load_keyfile,
    record_aad,
)
from shredvault.keys.envelope import dek_aad, kek_aad, mac_seed_aad, signing_seed_aad
from shredvault.keys.epochs import KekEpochs
from shredvault.keys.root import LEGACY_SCHEMA, NewRoot, RootKeys
from shredvault.keys.store import SCHEMA_VERSION
from shredvault.keys.subkeys import KEY_CHECK, ROOT_WRAP, TOKEN_MAC, derive_subkey
from shredvault.keys.tokenmac import TokenMac

VAULT = "vlt_secrets"
CUSTOMER = "cus_aaaaaaaaaaaaaaaaaaaaaaaaaa"
CREATED = "2024-01-01T00:00:00.000000Z"
ROOT_KEY_VERSION = 0  # wrapped KEKs and signing seeds name version 0: the root has none
# Printable bytes, so a leak of the raw key as text would be visible too.
PRINTABLE_KEY = bytes(range(0x40, 0x60))


@dataclass
class Holder:
    """An object that holds key material, and the key bytes it must never show."""

    obj: object
    secrets: list[bytes]


def renderings(secret: bytes) -> list[str]:
    """The ways key bytes usually leak into text, for the key and its first 8 bytes."""
    out = []
    for part in (secret, secret[:8]):
        out += [
            part.hex(),
            part.hex().upper(),
            repr(part)[2:-1],
            part.decode("latin-1"),
            base64.b64encode(part).decode(),
        ]
    return out


@pytest.fixture
def keyfile_key(tmp_path: Path) -> SecretBytes:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    return load_keyfile(path)


@pytest.fixture
def ring(tmp_path: Path, keyfile_key: SecretBytes) -> Iterator[KeyRing]:
    ring = KeyRing.create(tmp_path / "keys.db", VAULT, created=CREATED, keyfile_key=keyfile_key)
    ring.create_customers([CUSTOMER], CREATED)
    yield ring
    ring.close()


def root_subkeys(root: SecretBytes) -> list[bytes]:
    """The root key and its wrap and key-check subkeys."""
    subkeys = [derive_subkey(root, label, VAULT).reveal() for label in (ROOT_WRAP, KEY_CHECK)]
    return [root.reveal(), *subkeys]


def ring_secrets(ring: KeyRing, root: SecretBytes) -> list[bytes]:
    """Root key and its subkeys, the MAC seed and its token-MAC subkey, every KEK, the
    signing seed and the customer's DEK, unwrapped by hand (the DEK last)."""
    unwrap_root = Envelope(derive_subkey(root, ROOT_WRAP, VAULT), ROOT_KEY_VERSION)
    wrapped_mac_seed = ring.store.mac_seed()
    assert wrapped_mac_seed is not None
    mac_seed = unwrap_root.open(wrapped_mac_seed, mac_seed_aad(VAULT))
    token_key = derive_subkey(SecretBytes(mac_seed), TOKEN_MAC, VAULT).reveal()
    keks = {
        epoch: unwrap_root.open(wrapped, kek_aad(VAULT, epoch))
        for epoch, wrapped in ring.store.epochs().items()
    }
    generation, wrapped_seed, _public = ring.store.signing_seed()
    seed = unwrap_root.open(wrapped_seed, signing_seed_aad(VAULT, generation))
    (row,) = ring.store.deks([CUSTOMER])
    dek = Envelope(SecretBytes(keks[row.epoch]), row.epoch).open(
        row.wrapped, dek_aad(VAULT, CUSTOMER, row.version, row.epoch)
    )
    return [*root_subkeys(root), mac_seed, token_key, *keks.values(), seed, dek]


HOLDERS: dict[str, Callable[[KeyRing, SecretBytes], Holder]] = {
    "SecretBytes": lambda ring, root: Holder(SecretBytes(PRINTABLE_KEY), [PRINTABLE_KEY]),
    "Envelope": lambda ring, root: Holder(Envelope(SecretBytes(PRINTABLE_KEY), 1), [PRINTABLE_KEY]),
    "Signer": lambda ring, root: Holder(Signer(SecretBytes(PRINTABLE_KEY)), [PRINTABLE_KEY]),
    "KeyRing": lambda ring, root: Holder(ring, ring_secrets(ring, root)),
    "CustomerKeys": lambda ring, root: Holder(
        ring.customer_keys([CUSTOMER])[CUSTOMER], ring_secrets(ring, root)[-1:]
    ),
    # what a KeyRing holds for its root key and KEK epochs, and a root key being chosen
    "KekEpochs": lambda ring, root: Holder(
        KekEpochs(ring.store, root, ring.store.header()), ring_secrets(ring, root)[:-1]
    ),
    "NewRoot": lambda ring, root: Holder(NewRoot(root, "keyfile", "", b""), [root.reveal()]),
    # what the root key gives (today, and before key separation), and the token-MAC key
    "RootKeys": lambda ring, root: Holder(
        RootKeys(root, VAULT, SCHEMA_VERSION), root_subkeys(root)
    ),
    "RootKeys-legacy": lambda ring, root: Holder(
        RootKeys(root, VAULT, LEGACY_SCHEMA), [root.reveal()]
    ),
    "TokenMac": lambda ring, root: Holder(TokenMac(SecretBytes(PRINTABLE_KEY)), [PRINTABLE_KEY]),
}


@pytest.fixture(params=sorted(HOLDERS))
def holder(request: pytest.FixtureRequest, ring: KeyRing, keyfile_key: SecretBytes) -> Holder:
    return HOLDERS[request.param](ring, keyfile_key)


# -- every holder --------------------------------------------------------------------


def test_repr_holds_no_key_bytes(holder: Holder) -> None:
    text = repr(holder.obj)
    for secret in holder.secrets:
        for rendering in renderings(secret):
            assert rendering not in text


def test_str_and_format_hold_no_key_bytes(holder: Holder) -> None:
    text = str(holder.obj) + f"{holder.obj}"
    for secret in holder.secrets:
        for rendering in renderings(secret):
            assert rendering not in text


def test_pickling_raises_type_error(holder: Holder) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(holder.obj)


def test_copy_raises_type_error(holder: Holder) -> None:
    with pytest.raises(TypeError):
        copy.copy(holder.obj)


def test_deepcopy_raises_type_error(holder: Holder) -> None:
    with pytest.raises(TypeError):
        copy.deepcopy(holder.obj)


# -- SecretBytes ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_secret_bytes_refuses_pickling_under_every_protocol(protocol: int) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(SecretBytes(PRINTABLE_KEY), protocol=protocol)


def test_secret_bytes_reveal_returns_the_bytes_it_was_given() -> None:
    assert SecretBytes(bytearray(PRINTABLE_KEY)).reveal() == PRINTABLE_KEY


def test_secret_bytes_cannot_be_turned_into_bytes_except_by_reveal() -> None:
    with pytest.raises(TypeError):
        bytes(SecretBytes(PRINTABLE_KEY))  # type: ignore[call-overload]


def test_secret_bytes_with_equal_contents_are_equal() -> None:
    assert SecretBytes(PRINTABLE_KEY) == SecretBytes(bytearray(PRINTABLE_KEY))


@pytest.mark.parametrize("index", [0, 15, 31], ids=["first", "middle", "last"])
def test_secret_bytes_differing_in_one_byte_are_unequal(index: int) -> None:
    other = bytearray(PRINTABLE_KEY)
    other[index] ^= 0x80
    assert SecretBytes(PRINTABLE_KEY) != SecretBytes(other)


def test_secret_bytes_of_different_lengths_are_unequal() -> None:
    assert SecretBytes(PRINTABLE_KEY) != SecretBytes(PRINTABLE_KEY[:31])


def test_secret_bytes_never_equals_plain_bytes() -> None:
    assert SecretBytes(PRINTABLE_KEY) != PRINTABLE_KEY


def test_secret_bytes_equality_is_decided_by_hmac_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time_compare = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((bytes(a), bytes(b)))
        return constant_time_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    other = bytes(31) + b"\x01"
    assert SecretBytes(PRINTABLE_KEY) == SecretBytes(PRINTABLE_KEY)
    assert SecretBytes(PRINTABLE_KEY) != SecretBytes(other)
    assert compared == [(PRINTABLE_KEY, PRINTABLE_KEY), (PRINTABLE_KEY, other)]


def test_secret_bytes_is_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(SecretBytes(PRINTABLE_KEY))


def test_secret_bytes_cannot_be_a_set_member_or_dict_key() -> None:
    with pytest.raises(TypeError):
        {SecretBytes(PRINTABLE_KEY)}
    with pytest.raises(TypeError):
        {SecretBytes(PRINTABLE_KEY): 1}


def test_secret_bytes_wipe_zeroes_every_byte_and_keeps_the_length() -> None:
    secret = SecretBytes(PRINTABLE_KEY)
    secret.wipe()
    assert secret.reveal() == bytes(32)
    assert len(secret) == 32


# -- the holders still work ----------------------------------------------------------


def test_envelope_copies_its_key_so_wiping_the_secret_bytes_leaves_it_working() -> None:
    key = SecretBytes(PRINTABLE_KEY)
    env = Envelope(key, 1)
    key.wipe()
    context = record_aad(VAULT, CUSTOMER, "rec_1", "contact", 1)
    assert Envelope(SecretBytes(PRINTABLE_KEY), 1).open(env.seal(b"x", context), context) == b"x"
