"""Passphrases are normalized to Unicode NFC before Argon2id (issue 18 item 6): the
same words typed with a precomposed ``é`` or with ``e`` + combining accent open the
same vault and the same handover key file. Vaults and key files sealed before, under
the bytes as typed, still open; a vault is then re-keyed to the NFC form, logged."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest
from sqlalchemy import select

from shredvault.keys import KdfParams, normalize_passphrase
from shredvault.keys import root as keys_root
from shredvault.keys.files import write_file
from shredvault.keys.sealed import (
    NONCE_24,
    dump_key_document,
    generate_handover_key,
    private_key_document,
    public_key_document,
)
from shredvault.vault import UnlockError, Vault, handover_keygen, open_handover_key
from shredvault.vault.store import log

TEXT = "crème brûlée à Škoda 7731"
NFC = unicodedata.normalize("NFC", TEXT).encode("utf-8")
NFD = unicodedata.normalize("NFD", TEXT).encode("utf-8")
FIELDS = {"name": "Zoë Åberg"}
FAST = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=1)


def test_the_two_forms_differ_as_bytes_and_normalize_to_one() -> None:
    assert NFC != NFD
    assert normalize_passphrase(NFD) == normalize_passphrase(NFC) == NFC
    assert normalize_passphrase(b"\xff\xfe not utf-8") == b"\xff\xfe not utf-8"


def test_a_new_vault_opens_with_either_form(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", passphrase=NFD, kdf_params=FAST).close()
    with Vault.open(tmp_path / "v", passphrase=NFC) as v:
        seq = v.head.seq
    with Vault.open(tmp_path / "v", passphrase=NFD) as v:
        assert v.head.seq == seq + 1  # only the unlock was logged: no re-key
    with pytest.raises(UnlockError):
        Vault.open(tmp_path / "v", passphrase=NFC + b"x")


def _actions(v: Vault) -> list[str]:
    engine = v._ctx.data.engine  # reading the stored log rows
    with engine.connect() as conn:
        return [str(r.action) for r in conn.execute(select(log.c.action).order_by(log.c.seq))]


def test_an_older_vault_sealed_under_the_raw_form_opens_and_is_re_keyed_to_nfc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The code before normalization: the root key from the bytes as typed.
    with monkeypatch.context() as patched:
        patched.setattr(keys_root, "normalize_passphrase", lambda p: bytes(p))
        v = Vault.create(tmp_path / "v", passphrase=NFD, kdf_params=FAST)
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        customer = v.admin().add_customer()
        record = v.admin().put(customer, "profile", FIELDS, purpose="service")
        v.close()
    with pytest.raises(UnlockError):  # its NFC form never opened it
        Vault.open(tmp_path / "v", passphrase=NFC)

    with Vault.open(tmp_path / "v", passphrase=NFD) as v:
        assert _actions(v)[-2:] == ["vault.unlock", "keys.change-passphrase"]
        assert v.admin().get(customer, record, purpose="service").fields == FIELDS
        assert v.verify_log().ok
    # Re-keyed: now the NFC form (however typed) opens it, with no second re-key.
    for form in (NFC, NFD):
        with Vault.open(tmp_path / "v", passphrase=form) as v:
            assert _actions(v).count("keys.change-passphrase") == 1
            assert v.admin().get(customer, record, purpose="service").fields == FIELDS


def test_a_new_handover_key_file_opens_with_either_form(tmp_path: Path) -> None:
    _pub, key_path, fingerprint = handover_keygen(tmp_path / "acq", NFD, params=FAST)
    assert open_handover_key(key_path, NFC).fingerprint == fingerprint
    assert open_handover_key(key_path, NFD).fingerprint == fingerprint
    with pytest.raises(UnlockError):
        open_handover_key(key_path, NFC + b"x")


def test_an_older_handover_key_file_sealed_under_the_raw_form_still_opens(
    tmp_path: Path,
) -> None:
    key = generate_handover_key()
    document = private_key_document(key, NFD, FAST, os.urandom(16), os.urandom(NONCE_24))
    key_path = tmp_path / "old.key"
    write_file(key_path, dump_key_document(document))
    write_file(tmp_path / "old.pub", dump_key_document(public_key_document(key.public_key)))
    assert json.loads(key_path.read_text())["kdf"]["p"] == 1
    assert open_handover_key(key_path, NFD).public_key == key.public_key
    with pytest.raises(UnlockError):  # the file was sealed under NFD bytes only
        open_handover_key(key_path, NFC)
