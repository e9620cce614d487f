"""Receipts of shreds a crash interrupted, kept in the keystore until collected.

Opening a vault finishes a shred a crash interrupted and issues its receipt, which can
never be issued again (its salt is then erased). The receipt is first stored in the
keystore (meta key ``recovered_receipts``: a JSON list of receipt documents), so an
opener that does not read :attr:`Vault.recovered_receipts` loses nothing: it stays
there until :func:`collect` writes it out, after which it is deleted and the keystore
scrubbed (a receipt ties a customer id to its old log entries). The stored value is
read as hostile: anything but a list of receipt objects is a :class:`StorageError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..keys import KeyStore
from . import ids
from .errors import StorageError, keys_errors
from .receipt import RECEIPT_TYPE, Receipt

__all__ = ["KEPT_RECEIPTS_KEY", "collect", "keep", "kept"]

#: keystore meta key: receipts recovered at open and not yet collected
KEPT_RECEIPTS_KEY = "recovered_receipts"


def kept(store: KeyStore) -> list[Receipt]:
    """The receipts kept and not yet collected, oldest first."""
    with keys_errors():
        text = store.get_meta(KEPT_RECEIPTS_KEY)
    return [] if text is None else [Receipt(d) for d in _parse(text)]


def keep(store: KeyStore, receipts: Sequence[Receipt]) -> None:
    """Add receipts to those kept (one per customer: a receipt found again after a
    crash replaces its copy), in one keystore transaction."""
    if not receipts:
        return
    with keys_errors(), store.transaction() as conn:
        text = store.get_meta(KEPT_RECEIPTS_KEY)
        documents = {str(d["customer"]): d for d in (_parse(text) if text else [])}
        for receipt in receipts:
            documents[receipt.customer] = receipt.to_json()
        store.set_meta(conn, KEPT_RECEIPTS_KEY, json.dumps(list(documents.values())))


def collect(store: KeyStore, directory: str | os.PathLike[str]) -> list[Path]:
    """Write every kept receipt to ``directory/<customer>.json`` (owner-only, never
    over another file; a file already holding the same receipt counts as written),
    then delete them from the keystore and scrub it. Returns the files. If a write
    fails, nothing is deleted and the error (:class:`OutputExistsError`,
    :class:`OSError`) is raised."""
    receipts = kept(store)
    if not receipts:
        return []
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for receipt in receipts:
        path = target / f"{receipt.customer}.json"
        if not (path.is_file() and path.read_text("utf-8") == receipt.dumps()):
            receipt.write(path)
        written.append(path)
    with keys_errors():
        with store.transaction() as conn:
            store.delete_meta(conn, KEPT_RECEIPTS_KEY)
        store.scrub()
    return written


def _parse(text: str) -> list[dict[str, Any]]:
    try:
        documents = json.loads(text)
    except ValueError:
        documents = None
    if not isinstance(documents, list) or not all(
        isinstance(d, dict)
        and d.get("type") == RECEIPT_TYPE
        and ids.is_id(d.get("customer"), ids.CUSTOMER)  # it names a file: no path in it
        for d in documents
    ):
        raise StorageError(
            "the receipts kept in keys.db are unreadable (the keystore was altered); "
            "nothing was written"
        )
    return documents
