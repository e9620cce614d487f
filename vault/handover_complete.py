"""Handover completion (seller): shred every customer a package transferred, one
receipt each, and sign a summary. Resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .actor import Actor
from .canonical import canonical
from .context import Tx, VaultContext
from .errors import (
    ShreddedError,
    StorageError,
    VaultError,
    VerificationError,
)
from .files import write_file
from .package import (
    PURPOSE,
    SUMMARY_TYPE,
    Package,
    check_signature,
    open_package,
    stream_customers,
)
from .receipt import Receipt
from .shred import shred_one
from .store import customers, log

__all__ = ["HandoverCompletion", "complete_package"]


@dataclass(frozen=True, slots=True)
class HandoverCompletion:
    """The seller's completion: a receipt per customer shredded now, those shredded
    before (skipped), those that failed, and the signed summary document."""

    summary: dict[str, Any]
    receipts: list[Receipt] = field(default_factory=list)
    already_shredded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(self.summary, indent=2, sort_keys=True) + "\n"

    def write(self, path: str | os.PathLike[str], *, replace: bool = False) -> None:
        """Write the signed summary (0600, atomically). Refuses to replace a file unless
        ``replace`` (a rerun replacing the summary of the same package)."""
        write_file(path, self.dumps().encode("utf-8"), overwrite=replace)


def complete_package(
    ctx: VaultContext,
    actor: Actor,
    package_path: str | os.PathLike[str],
    *,
    receipts_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> HandoverCompletion:
    """Shred every customer a package this vault exported transferred (reason
    ``business-transfer``), one receipt each (written to ``receipts_dir`` as
    ``CUSTOMER.json`` when given), and return a summary signed by the vault.

    Resumable: customers already shredded are skipped (a receipt already in
    ``receipts_dir`` is kept and its hash listed). Raises VerificationError for a
    package this vault did not export (another vault, bad signature, no
    ``handover.export`` entry) or that was altered; nothing is shredded then."""
    package = open_package(Path(package_path))
    manifest = package.manifest
    if manifest.get("seller_vault") != ctx.vault_id:
        raise VerificationError(
            "handover package: another vault exported it", reason="foreign vault"
        )
    check_signature(package, ctx.public_key)
    actor.authorize("admin", "handover.complete")
    if not _export_logged(ctx, package):
        raise VerificationError(
            f"handover package {package.id}: this vault's log holds no handover.export of it",
            reason="not exported",
        )
    cids: list[str] = []
    stream_customers(package, None, lambda customer: cids.append(customer.id))
    where = Path(receipts_dir) if receipts_dir is not None else None
    states = _states(ctx, cids)
    if where is not None:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        clobber = [c for c in cids if states.get(c) == "active" and (where / f"{c}.json").exists()]
        if clobber:
            raise StorageError(
                f"{where / (clobber[0] + '.json')} exists but that customer is not shredded yet; "
                "move the file away first"
            )
    receipts: list[Receipt] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    listed: list[dict[str, Any]] = []
    # One keystore scrub for the whole package, not one per customer.
    with ctx.keys.scrub_once() as scrubbed:
        for cid in cids:
            item: dict[str, Any] = {"customer": cid}
            if states.get(cid) == "shredded":
                skipped.append(cid)
                item["state"] = "already-shredded"
                old = where / f"{cid}.json" if where is not None else None
                item["receipt_sha256"] = (
                    hashlib.sha256(old.read_bytes()).hexdigest()
                    if old is not None and old.is_file()
                    else None
                )
            else:
                try:
                    receipt = shred_one(ctx, actor, cid, reason=PURPOSE)
                except ShreddedError:  # shredded by another process meanwhile
                    skipped.append(cid)
                    item.update(state="already-shredded", receipt_sha256=None)
                except VaultError as error:
                    failed[cid] = str(error)
                    item.update(state="failed", error=type(error).__name__)
                else:
                    receipts.append(receipt)
                    text = receipt.dumps().encode("utf-8")
                    if where is not None:
                        write_file(where / f"{cid}.json", text)
                    item.update(
                        state="shredded",
                        receipt_sha256=hashlib.sha256(text).hexdigest(),
                        seq=receipt.document["entry"]["seq"],
                    )
            listed.append(item)
            if progress is not None:
                progress(1)
    if not scrubbed.done:
        failed["keystore"] = (
            "keys deleted, but the keystore could not be rebuilt yet (another process "
            "holds it open); the next open of the vault finishes it"
        )
    now = ctx.now()
    counts = {
        "customers": len(cids),
        "shredded": len(receipts),
        "already_shredded": len(skipped),
        "failed": len(failed),
    }

    def work(tx: Tx) -> int:
        actor.gate(tx.conn, "admin", "handover.complete")
        tx.log(
            actor.event(
                "handover.complete",
                purpose=PURPOSE,
                detail={"package": package.id, **counts},
            )
        )
        tx.checkpoint = True
        return tx.head.seq + len(tx.events)

    seq = ctx.transact(work)
    body = {
        "type": SUMMARY_TYPE,
        "v": 1,
        "package": package.id,
        "manifest_sha256": package.manifest_sha256,
        "vault": ctx.vault_id,
        "public_key": "ed25519:" + ctx.public_key.hex(),
        "created": now,
        "seq": seq,
        "counts": counts,
        "customers": listed,
    }
    signature = ctx.keys.signer.sign(canonical(body))
    summary = {"summary": body, "signature": signature.hex()}
    return HandoverCompletion(summary, receipts, skipped, failed)


def _export_logged(ctx: VaultContext, package: Package) -> bool:
    bodies = ctx.data.read(
        lambda conn: (
            conn.execute(
                select(log.c.body).where(log.c.action == "handover.export", log.c.outcome == "ok")
            )
            .scalars()
            .all()
        )
    )
    for body in bodies:
        detail = json.loads(body).get("detail") or {}
        if (
            detail.get("package") == package.id
            and detail.get("manifest_sha256") == package.manifest_sha256
        ):
            return True
    return False


def _states(ctx: VaultContext, cids: list[str]) -> dict[str, str]:
    stmt = select(customers.c.id, customers.c.state)
    return {str(r.id): str(r.state) for r in ctx.read_in(stmt, customers.c.id, cids)}
