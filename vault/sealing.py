"""The sealer: the only place records are encrypted and decrypted (DESIGN §4).

A record's ciphertext is bound by its associated data to the vault, the customer, the
record id, the kind, the DEK version and the record's own version
(``keys.envelope.record_aad_suffix``), so bytes moved to another record, customer or
vault, or an older ciphertext of the same record written back, fail to open. Records
sealed before data schema 3 (``aad_v`` 1) lack the record version in their AAD; they
open as they were, their row authenticator covers the ciphertext's hash instead
(vault/rowauth.py), and the next update or DEK rotation re-seals them with it. Every
operation that stores or reads record plaintext (records, rotation, handover export
and import) goes through these functions; nothing else calls ``record_aad_suffix``.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Mapping, Sequence
from typing import Any

from ..keys import CustomerKeys, DecryptionError, Envelope, KeyRing
from ..keys.envelope import record_aad_suffix

__all__ = [
    "AAD_V",
    "NOTE_LABEL",
    "envelope",
    "open_fields",
    "open_note",
    "open_record",
    "record_version",
    "reseal_note",
    "reseal_record",
    "seal_note",
    "seal_records",
]

#: the AAD format records are sealed with now (stored in ``sv_records.aad_v``)
AAD_V = 2

#: what stands for the kind in a request note's AAD (docs/requests.md): no declared
#: kind can be named so (kind names start with a letter), and request ids start with
#: ``req_``, so a note never opens as a record, nor a record as a note
NOTE_LABEL = "~request-note"

#: (record id, kind, record version, plaintext) of one record to seal
SealItem = tuple[str, str, int, bytes]

# json.loads of bytes detects the encoding, decodes, and matches whitespace around the
# value in Python; a record plaintext is canonical JSON (UTF-8, no whitespace, an
# object), so the C scanner alone parses it. Anything else takes json.loads as before.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def record_version(row: Mapping[Any, Any]) -> int | None:
    """What a stored record row's AAD binds of its version: the version for ``aad_v``
    2, None for a record sealed before data schema 3."""
    return int(row["version"]) if int(row["aad_v"]) >= AAD_V else None


def seal_records(keys: CustomerKeys, items: Sequence[SealItem]) -> list[bytes]:
    """Encrypt records of one customer under its current DEK (nonces drawn in one
    batch); the ciphertexts in the order of ``items``."""
    env = keys.current
    prefix, version = keys.record_prefix, env.version
    return env.seal_many(
        [plaintext for _rid, _kind, _v, plaintext in items],
        [record_aad_suffix(prefix, rid, kind, version, rv) for rid, kind, rv, _p in items],
    )


def open_record(
    env: Envelope,
    keys: CustomerKeys,
    record_id: str,
    kind: str,
    version: int | None,
    blob: bytes,
) -> bytes:
    """The plaintext of a record sealed under ``env`` (one of ``keys.versions``) at
    record ``version`` (None: sealed before schema 3). Raises :class:`DecryptionError`
    if the bytes, where they belong or their version were changed."""
    aad = record_aad_suffix(keys.record_prefix, record_id, kind, env.version, version)
    return env.open(blob, aad)


def open_fields(
    env: Envelope,
    keys: CustomerKeys,
    record_id: str,
    kind: str,
    version: int | None,
    blob: bytes,
) -> dict[str, Any]:
    """:func:`open_record`, decoded: the record's fields."""
    return parse_fields(open_record(env, keys, record_id, kind, version, blob))


def parse_fields(plaintext: bytes) -> dict[str, Any]:
    """``json.loads(plaintext)``, by the C scanner alone when the plaintext is one
    JSON object with nothing around it (every canonical plaintext): the same value,
    several µs less per record."""
    if plaintext[:1] == b"{":
        try:
            text = plaintext.decode("utf-8", "surrogatepass")
            value, end = _scan(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text) and type(value) is dict:
                return value
    fields: dict[str, Any] = json.loads(plaintext)
    return fields


def reseal_record(
    keys: CustomerKeys,
    record_id: str,
    kind: str,
    version: int,
    sealed_version: int | None,
    from_version: int,
    to_version: int,
    blob: bytes,
) -> bytes:
    """Re-encrypt a record (at record ``version``, sealed binding ``sealed_version``)
    from one of the customer's DEK versions to another, binding ``version`` now."""
    plaintext = open_record(
        keys.versions[from_version], keys, record_id, kind, sealed_version, blob
    )
    target = keys.versions[to_version]
    aad = record_aad_suffix(keys.record_prefix, record_id, kind, target.version, version)
    return target.seal(plaintext, aad)


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


def seal_note(keys: CustomerKeys, request_id: str, text: bytes) -> tuple[bytes, int]:
    """Encrypt a request's note under the customer's current DEK, bound to the vault,
    the customer, the request and the DEK version; (ciphertext, DEK version)."""
    env = keys.current
    aad = record_aad_suffix(keys.record_prefix, request_id, NOTE_LABEL, env.version)
    return env.seal(text, aad), env.version


def open_note(keys: CustomerKeys, request_id: str, dek_version: int, blob: bytes) -> bytes:
    """A request note's text; :class:`DecryptionError` if the bytes, the request they
    belong to or the key version were changed, or the version is gone."""
    env = keys.versions.get(dek_version)
    if env is None:
        raise DecryptionError(f"no key version {dek_version} for the request's note")
    return env.open(
        blob, record_aad_suffix(keys.record_prefix, request_id, NOTE_LABEL, dek_version)
    )


def reseal_note(
    keys: CustomerKeys, request_id: str, from_version: int, to_version: int, blob: bytes
) -> bytes:
    """Re-encrypt a request note from one DEK version to another (a DEK rotation)."""
    text = open_note(keys, request_id, from_version, blob)
    target = keys.versions[to_version]
    return target.seal(
        text, record_aad_suffix(keys.record_prefix, request_id, NOTE_LABEL, to_version)
    )
