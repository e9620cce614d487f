"""The sealer: the only place records are encrypted and decrypted (DESIGN §4).

A record's ciphertext is bound by its associated data to the vault, the customer, the
record id, the kind and the DEK version (``keys.envelope.record_aad_suffix``), so
bytes moved to another record, customer or vault fail to open. Every operation that
stores or reads record plaintext (records, rotation, handover export and import)
goes through these functions; nothing else calls ``record_aad_suffix``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..keys import CustomerKeys, DecryptionError, Envelope, KeyRing
from ..keys.envelope import record_aad_suffix

__all__ = ["envelope", "open_fields", "open_record", "reseal_record", "seal_records"]

#: (record id, kind, plaintext) of one record to seal
SealItem = tuple[str, str, bytes]


def seal_records(keys: CustomerKeys, items: Sequence[SealItem]) -> list[bytes]:
    """Encrypt records of one customer under its current DEK (nonces drawn in one
    batch); the ciphertexts in the order of ``items``."""
    env = keys.current
    prefix, version = keys.record_prefix, env.version
    return env.seal_many(
        [plaintext for _rid, _kind, plaintext in items],
        [record_aad_suffix(prefix, rid, kind, version) for rid, kind, _plaintext in items],
    )


def open_record(env: Envelope, keys: CustomerKeys, record_id: str, kind: str, blob: bytes) -> bytes:
    """The plaintext of a record sealed under ``env`` (one of ``keys.versions``).
    Raises :class:`DecryptionError` if the bytes or where they belong were changed."""
    return env.open(blob, record_aad_suffix(keys.record_prefix, record_id, kind, env.version))


def open_fields(
    env: Envelope, keys: CustomerKeys, record_id: str, kind: str, blob: bytes
) -> dict[str, Any]:
    """:func:`open_record`, decoded: the record's fields."""
    fields: dict[str, Any] = json.loads(open_record(env, keys, record_id, kind, blob))
    return fields


def reseal_record(
    keys: CustomerKeys, record_id: str, kind: str, from_version: int, to_version: int, blob: bytes
) -> bytes:
    """Re-encrypt a record from one of the customer's DEK versions to another."""
    plaintext = open_record(keys.versions[from_version], keys, record_id, kind, blob)
    target = keys.versions[to_version]
    return target.seal(
        plaintext, record_aad_suffix(keys.record_prefix, record_id, kind, target.version)
    )


def envelope(keyring: KeyRing, keys: dict[str, CustomerKeys], cid: str, version: int) -> Envelope:
    """The customer's DEK ``version`` from ``keys``, reloading the customer's keys once
    when it is missing (another process may have rotated them since they were cached);
    updates ``keys``. :class:`DecryptionError` if the version is gone."""
    ck = keys.get(cid)
    if ck is None or version not in ck.versions:
        keyring.forget([cid])
        ck = keyring.customer_keys([cid]).get(cid)
        if ck is None or version not in ck.versions:
            raise DecryptionError(f"no key version {version} for customer {cid}")
        keys[cid] = ck
    return ck.versions[version]
