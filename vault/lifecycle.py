"""A vault's lifecycle: serving, decommissioning, decommissioned (docs/decommission.md).

The state lives in the keystore's ``meta`` (``lifecycle``), which only the vault's
owner can change and which a data-store writer cannot roll back. No row means the
vault serves. ``decommissioning`` is set before anything is destroyed: from then on
the vault serves no data and only finishing the decommission (and auditing) works.
``decommissioned`` is set in the same keystore transaction that deletes the signing
seed: the vault cannot be unlocked any more.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select

from .store import DataStore, log

__all__ = [
    "DECOMMISSIONED",
    "DECOMMISSIONING",
    "DECOMMISSION_ACTION",
    "INTENT_SEQ_KEY",
    "LIFECYCLE_KEY",
    "final_entry_query",
    "final_entry_seq",
]

LIFECYCLE_KEY = "lifecycle"
DECOMMISSIONING = "decommissioning"
DECOMMISSIONED = "decommissioned"
#: keystore meta: seq of the ``vault.decommission-intent`` entry that began it
INTENT_SEQ_KEY = "decommission_intent_seq"
#: the final entry's action, and the action every decommission decision is logged as
DECOMMISSION_ACTION = "vault.decommission"


def final_entry_query(intent_seq: int) -> Select[Any]:
    """The seq of the final ``vault.decommission`` entry after ``intent_seq`` (none
    until it is written; nothing may follow it in the log)."""
    return (
        select(log.c.seq)
        .where(
            log.c.seq > intent_seq,
            log.c.action == DECOMMISSION_ACTION,
            log.c.outcome == "ok",
        )
        .order_by(log.c.seq)
        .limit(1)
    )


def final_entry_seq(data: DataStore, intent_seq: int) -> int | None:
    """:func:`final_entry_query`, read from the data store."""
    found = data.read(lambda conn: conn.execute(final_entry_query(intent_seq)).scalar())
    return None if found is None else int(found)
