"""Destroying a keystore's keys when its vault is decommissioned (docs/decommission.md).

First every KEK epoch, DEK, subject tag and receipt salt in one transaction, with a
summary kept so that a rerun after a crash reports the same; then the signing seed
(and the MAC seed, which until then lets the unfinished decommission unlock again),
keeping the public key so that verifiers can still check what the vault signed.
"""

from __future__ import annotations

import json
import sqlite3

from .envelope import fingerprint
from .erasure import LIVE
from .errors import KeystoreError
from .signing import Signer
from .store import KeyStore

__all__ = ["DestroyedSigner", "destroy_all_keys", "destroy_signing_seed"]


def destroy_all_keys(store: KeyStore, *, record_as: str) -> dict[str, object]:
    """Delete every KEK epoch, DEK, subject tag and receipt salt in ONE keystore
    transaction, then scrub the keystore. What went (epoch fingerprints, counts) is
    stored in the same transaction under meta ``record_as`` and returned, so a rerun
    after a crash returns the same summary and deletes nothing more."""
    with store.transaction() as conn:
        kept = store.get_meta(record_as)
        if kept is None:
            epochs, deks, tags = _delete_all_keys(conn)
            summary: dict[str, object] = {
                "kek_epochs": [
                    {"epoch": e, "fingerprint": fingerprint(w)} for e, w in sorted(epochs.items())
                ],
                "deks": deks,
                "subject_tags": tags,
            }
            store.set_meta(conn, record_as, json.dumps(summary, sort_keys=True))
        else:
            _delete_all_keys(conn)  # anything made since (nothing, normally)
            summary = json.loads(kept)
    store.scrub()
    return summary


def destroy_signing_seed(store: KeyStore, public_key: bytes, meta: dict[str, str]) -> Signer:
    """Delete the wrapped signing seed and the MAC seed, keeping ``public_key`` in meta
    for verifiers, and set ``meta`` in the same transaction; returns the signer that
    stands in for it.
    The caller scrubs the keystore (``store.scrub``) once this commits."""
    with store.transaction() as conn:
        store.set_meta(conn, "public_key", public_key.hex())
        for key, value in meta.items():
            store.set_meta(conn, key, value)
        _delete_signing_seeds(conn)
    return DestroyedSigner(public_key)


class DestroyedSigner(Signer):
    """Stands in for a signer whose seed was destroyed: it has a public key, and
    refuses to sign."""

    def __init__(self, public_key: bytes) -> None:  # no seed: nothing to build
        self.public_key = public_key

    def __repr__(self) -> str:
        return f"<Signer public_key={self.public_key.hex()[:16]}..., seed destroyed>"

    def sign(self, message: bytes) -> bytes:
        raise KeystoreError("the signing key was destroyed (the vault is decommissioned)")


def _delete_all_keys(conn: sqlite3.Connection) -> tuple[dict[int, bytes], int, int]:
    """Delete every DEK, subject tag, receipt salt and KEK epoch; returns (the wrapped
    epochs deleted, live DEKs deleted, live subject tags deleted: filler rows of
    customers destroyed in place are not counted again)."""
    rows = conn.execute("SELECT epoch, wrapped FROM kek_epochs")
    epochs = {int(e): bytes(w) for e, w in rows}
    deks = conn.execute(f"SELECT COUNT(*) FROM deks WHERE {LIVE}").fetchone()[0]
    tags = conn.execute(f"SELECT COUNT(*) FROM subject_tags WHERE {LIVE}").fetchone()[0]
    for table in ("deks", "subject_tags", "receipt_salts", "kek_epochs"):
        conn.execute(f"DELETE FROM {table}")
    return epochs, int(deks), int(tags)


def _delete_signing_seeds(conn: sqlite3.Connection) -> int:
    """Delete every wrapped signing seed and the MAC seed (the public key must be kept
    in ``meta`` first); returns how many seeds went."""
    found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mac_seed'"
    if conn.execute(found).fetchone() is not None:
        conn.execute("DELETE FROM mac_seed")
    return int(conn.execute("DELETE FROM signing").rowcount)
