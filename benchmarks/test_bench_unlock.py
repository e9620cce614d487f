"""Unlock: ``Vault.open`` with a passphrase at the Argon2id floor (target <= 250 ms),
next to Argon2id alone at the same parameters and to a keyfile unlock (no KDF).

SQLite only: unlock time is the KDF plus a few reads and one logged, checkpointed
transaction; the data store's share is the same order on PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import KdfParams
from shredvault.keys.kdf import FLOOR, derive_root_key, recommended_params
from shredvault.vault import Vault

from harness import measure

PASSPHRASE = b"correct horse battery staple"
ROUNDS = 7


def _unlock(benchmark: Any, root: Path, role: str, **credentials: Any) -> None:
    opened: list[Vault] = []
    measure(
        benchmark,
        lambda: opened.append(Vault.open(root, **credentials)),
        op="unlock",
        role=role,
        backend="sqlite",
        units=1,
        unit="unlock",
        rounds=ROUNDS,
    )
    for v in opened:
        v.close()


def _passphrase_vault(root: Path, params: KdfParams) -> Path:
    Vault.create(root, passphrase=PASSPHRASE, kdf_params=params).close()
    return root


@pytest.mark.benchmark(group="unlock")
def test_unlock_passphrase_at_floor(benchmark: Any, tmp_path: Path) -> None:
    benchmark.extra_info["kdf"] = FLOOR.to_dict()
    _unlock(benchmark, _passphrase_vault(tmp_path / "v", FLOOR), "vault", passphrase=PASSPHRASE)


@pytest.mark.benchmark(group="unlock")
def test_unlock_passphrase_recommended(benchmark: Any, tmp_path: Path) -> None:
    params = recommended_params()  # the floor with one lane per core (at most 4)
    benchmark.extra_info["kdf"] = params.to_dict()
    root = _passphrase_vault(tmp_path / "v", params)
    _unlock(benchmark, root, "vault_recommended", passphrase=PASSPHRASE)


@pytest.mark.benchmark(group="unlock")
def test_unlock_argon2id_alone_at_floor(benchmark: Any) -> None:
    salt = os.urandom(16)
    benchmark.extra_info["kdf"] = FLOOR.to_dict()
    measure(
        benchmark,
        lambda: derive_root_key(PASSPHRASE, salt, FLOOR),
        op="unlock",
        role="argon2id",
        backend="sqlite",
        units=1,
        unit="unlock",
        rounds=ROUNDS,
    )


@pytest.mark.benchmark(group="unlock")
def test_unlock_keyfile(benchmark: Any, tmp_path: Path, keyfile: Path) -> None:
    root = tmp_path / "v"
    Vault.create(root, keyfile=keyfile).close()
    _unlock(benchmark, root, "keyfile", keyfile=keyfile)
