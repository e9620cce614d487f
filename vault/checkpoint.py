"""Signed checkpoints (DESIGN §6): Ed25519 over canonical ``{"v","type","vault","seq",
"head","ts"}``. Signed at unlock, key events, shreds, every N entries and on close; the
keystore keeps the newest as the rollback anchor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from ..keys import Signer
from .canonical import canonical
from .errors import VerificationError
from .store import LogHead, checkpoints
from .trust import verify_typed

__all__ = [
    "Checkpoint",
    "latest_checkpoint",
    "load_checkpoints",
    "make_checkpoint",
    "parse_checkpoint",
    "store_checkpoint",
]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "vault V's log had head H at seq N at time T"."""

    vault: str
    seq: int
    head: str
    ts: str
    body: bytes
    signature: bytes

    def verify(self, public_key: bytes) -> bool:
        """The signature is ``public_key``'s, over a body of type ``checkpoint``."""
        return verify_typed(public_key, self.body, self.signature, "checkpoint")

    def to_json(self) -> dict[str, Any]:
        """The portable form: the signed body's fields plus ``signature`` (hex)."""
        return {"checkpoint": json.loads(self.body), "signature": self.signature.hex()}


def make_checkpoint(signer: Signer, vault_id: str, head: LogHead) -> Checkpoint:
    body = canonical(
        {
            "v": 1,
            "type": "checkpoint",
            "vault": vault_id,
            "seq": head.seq,
            "head": head.hash,
            "ts": head.ts,
        }
    )
    return Checkpoint(vault_id, head.seq, head.hash, head.ts, body, signer.sign(body))


def parse_checkpoint(body: bytes, signature: bytes) -> Checkpoint:
    """Decode a stored or exported checkpoint; raises VerificationError if malformed."""
    try:
        raw = json.loads(body)
        if raw.get("type") != "checkpoint" or raw.get("v") != 1 or canonical(raw) != body:
            raise ValueError("not a canonical v1 checkpoint")
        return Checkpoint(
            str(raw["vault"]), int(raw["seq"]), str(raw["head"]), str(raw["ts"]), body, signature
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise VerificationError(f"malformed checkpoint: {error}", reason="malformed") from None


def checkpoint_from_json(raw: dict[str, Any]) -> Checkpoint:
    """Inverse of :meth:`Checkpoint.to_json`."""
    try:
        return parse_checkpoint(canonical(raw["checkpoint"]), bytes.fromhex(raw["signature"]))
    except (KeyError, TypeError, ValueError) as error:
        raise VerificationError(f"malformed checkpoint: {error}", reason="malformed") from None


def store_checkpoint(conn: Connection, cp: Checkpoint) -> None:
    """Insert a checkpoint row unless one exists at that seq (idempotent)."""
    exists = conn.execute(select(checkpoints.c.seq).where(checkpoints.c.seq == cp.seq)).first()
    if exists is None:
        conn.execute(insert(checkpoints).values(seq=cp.seq, body=cp.body, signature=cp.signature))


def load_checkpoints(
    conn: Connection, *, since: int = 1, until: int | None = None
) -> list[Checkpoint]:
    """Stored checkpoints with ``since <= seq (<= until)``, in seq order."""
    stmt = select(checkpoints.c.body, checkpoints.c.signature).where(checkpoints.c.seq >= since)
    if until is not None:
        stmt = stmt.where(checkpoints.c.seq <= until)
    rows = conn.execute(stmt.order_by(checkpoints.c.seq)).all()
    return [parse_checkpoint(bytes(r.body), bytes(r.signature)) for r in rows]


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    """The stored checkpoint with the highest seq, if any."""
    row = conn.execute(
        select(checkpoints.c.body, checkpoints.c.signature)
        .order_by(checkpoints.c.seq.desc())
        .limit(1)
    ).first()
    return None if row is None else parse_checkpoint(bytes(row.body), bytes(row.signature))
