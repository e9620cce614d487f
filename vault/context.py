"""The internal API of an open vault: its stores, its clock, and the logged transaction.

Operations (customers, records, shred, rotate, backup, handover, reports, decommission)
are functions of a :class:`VaultContext` and an :class:`~.actor.Actor`; they reach the
stores only through the public members here, never through the public ``Vault``.
Every change and every access runs in :meth:`VaultContext.transact`, which chains the
entries the work logged in the same database transaction (fail closed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Connection, bindparam, func, select

from ..keys import KeyRing, KeystoreError, SecretBytes, load_keyfile
from .chain import read_head, verify_store
from .checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoints,
    make_checkpoint,
    parse_checkpoint,
    store_checkpoint,
)
from .clock import Clock, format_ts
from .errors import (
    AuditChainError,
    SchemaError,
    StorageError,
    TamperError,
    VaultDecommissionedError,
    VaultError,
    keys_errors,
)
from .inputs import suggest
from .lifecycle import DECOMMISSION_ACTION, DECOMMISSIONED
from .log import Event, LogEntry, append
from .receipt import Receipt
from .rowauth import check_rows, refusal_error, require
from .schema import KindSpec
from .store import DataStore, LogHead, checkpoints, kinds
from .verify import VerifyReport

__all__ = ["SLOW_SECONDS", "Refusal", "Tx", "VaultContext", "load_keyfile_key", "read_kinds"]

#: a logged transaction that takes longer (lock wait included) is reported on the
#: ``shredvault.vault.context`` logger (docs/operations.md)
SLOW_SECONDS = 1.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Tx:
    """A logged transaction in progress: the connection, the head it started from,
    and the events that will be chained when ``work`` returns."""

    conn: Connection
    head: LogHead
    events: list[Event] = field(default_factory=list)
    checkpoint: bool = False

    def log(self, *events: Event) -> None:
        self.events.extend(events)

    def next_seq(self) -> int:
        """The seq the next event logged in this transaction will get (rows it changes
        are stamped with it: vault/rowauth.py)."""
        return self.head.seq + len(self.events) + 1


class Refusal(Exception):
    """Raised inside a transaction to roll it back, log ``events`` on their own, and
    then raise ``error`` to the caller (denials and not-found are logged too)."""

    def __init__(self, error: VaultError, *events: Event) -> None:
        super().__init__(str(error))
        self.error = error
        self.events = events


class VaultContext:
    """An open vault's stores, clock and log discipline, for the operations.

    ``lifecycle`` is None while the vault serves, else ``decommissioning`` or
    ``decommissioned`` (lifecycle.py); ``final_seq`` is the seq of the final
    ``vault.decommission`` entry once written: nothing may be logged after it.
    """

    def __init__(
        self,
        path: Path,
        keyring: KeyRing,
        data: DataStore,
        *,
        clock: Clock,
        checkpoint_interval: int,
        lifecycle: str | None,
    ) -> None:
        self.path = path
        self.vault_id = keyring.vault_id
        self.public_key = keyring.public_key
        self.keys = keyring
        self.data = data
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.lifecycle = lifecycle
        self.slow_seconds = SLOW_SECONDS
        self.final_seq: int | None = None
        self.closed = False
        #: receipts of shreds a crash interrupted that this open (or a decommission) finished
        self.recovered_receipts: list[Receipt] = []
        self._kinds: dict[str, KindSpec] = {}
        #: kinds whose stored row fails its check: refused until an admin declares them
        self._tampered_kinds: dict[str, TamperError] = {}

    def __repr__(self) -> str:
        return f"<VaultContext {self.vault_id}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an open vault cannot be pickled")

    def now(self) -> str:
        """The clock's time as RFC 3339 UTC text."""
        return format_ts(self.clock())

    def require_open(self) -> None:
        if self.closed:
            raise StorageError("the vault is closed")

    def close(self) -> None:
        """Sign a checkpoint at the head (if the log moved since the last one), then
        release the stores and forget every key."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.final_seq is None:  # after the final entry there is nothing to sign
                self._checkpoint_head()
        except VaultError:
            pass  # closing must release the stores even when the data store is gone
        finally:
            self.keys.close()
            self.data.dispose()

    # -- kinds (the declared schema, cached) ----------------------------------------------

    def kind(self, name: str) -> KindSpec:
        """A declared kind; :class:`SchemaError` if there is none (re-read first, since
        another process may have declared it)."""
        spec = self._kinds.get(name)
        if spec is None:
            self.reload_kinds()
            spec = self._kinds.get(name)
            if spec is None:
                refused = self._tampered_kinds.get(name)
                if refused is not None:
                    raise refused
                raise SchemaError(
                    f"kind {str(name)[:64]!r} is not declared{suggest(name, dict(self._kinds))} "
                    "(declare it with declare_kind)"
                )
        return spec

    def kinds(self) -> dict[str, KindSpec]:
        """Every declared kind, re-read from the data store."""
        self.reload_kinds()
        return dict(self._kinds)

    def reload_kinds(self) -> None:
        self.remember_kinds(self.data.read(lambda conn: self.checked_kinds(conn)))

    def checked_kinds(self, conn: Connection) -> list[tuple[str, str]]:
        """Every declared kind ``(name, spec JSON)`` whose row passes its checks
        (vault/rowauth.py); the others are refused (:class:`TamperError` on use)."""
        if self.lifecycle == DECOMMISSIONED:  # its keys, the row-auth key too, are gone
            raise VaultDecommissionedError("the vault is decommissioned: it serves no data")
        rows = [r._mapping for r in conn.execute(select(kinds))]
        bad = {b.row: b for b in check_rows(conn, self.keys.row_auth, "sv_kinds", rows)}
        out = []
        for row in rows:
            name = str(row["name"])
            if name in bad:
                self._kinds.pop(name, None)
                self._tampered_kinds[name] = refusal_error([bad[name]])
            else:
                self._tampered_kinds.pop(name, None)
                out.append((name, str(row["spec"])))
        return out

    def remember_kinds(self, rows: Iterable[tuple[str, str]]) -> dict[str, KindSpec]:
        """Cache the kinds ``(name, spec JSON)`` read (and checked) from the data
        store; returns them."""
        found = {}
        for name, text in rows:
            raw = json.loads(text)
            found[name] = KindSpec.from_json(name, raw)
            self._tampered_kinds.pop(name, None)
        self._kinds.update(found)
        return found

    # -- the logged transaction ------------------------------------------------------------

    def transact(self, work: Callable[[Tx], T], *, checkpoint: bool = False) -> T:
        """Run ``work`` and chain the events it logged, in one transaction.

        Fail closed: if the entries cannot be written, the whole transaction rolls back
        and the caller gets the error, not the data. A :class:`Refusal` rolls back the
        work, commits only its events, then raises its error.
        """
        self.require_open()
        began, attempts = time.monotonic(), list[Tx]()

        def traced(tx: Tx) -> T:
            attempts.append(tx)
            return work(tx)

        try:
            result, cp = self.data.run(
                lambda conn, head: self._chain(conn, head, traced, checkpoint)
            )
        except Refusal as refusal:
            self._log_refusal(refusal)
        except TamperError as error:
            # A forged or rolled-back row met where no actor logged it: log it here.
            detail = {"table": error.table, "reason_code": "row_tampered", "why": error.reason}
            record = error.row if error.table == "sv_records" else None
            ev = Event("vault", "system", "store.tamper", "error", record=record, detail=detail)
            self._log_refusal(Refusal(error, ev))
        finally:
            self._report_slow(time.monotonic() - began, attempts)
        if cp is not None:
            self._advance_anchor(cp)
        return result

    def _report_slow(self, elapsed: float, attempts: list[Tx]) -> None:
        if elapsed < self.slow_seconds:
            return
        # Actions and counts only: never an actor's input, a field or a customer.
        actions = Counter(e.action for e in attempts[-1].events) if attempts else Counter()
        logger.warning(
            "slow logged transaction: %.3f s, %d attempt(s), actions %s",
            elapsed,
            len(attempts),
            ", ".join(f"{a} x{n}" for a, n in sorted(actions.items())) or "none",
        )

    def _log_refusal(self, refusal: Refusal) -> NoReturn:
        """Commit a refusal's entries in a transaction of their own, then raise its error."""
        events = refusal.events

        def log_only(tx: Tx) -> None:
            tx.log(*events)

        if events and self.final_seq is None:  # nothing is logged after the final entry
            self.data.run(lambda conn, head: self._chain(conn, head, log_only, False))
        raise refusal.error from None

    def _chain(
        self, conn: Connection, head: LogHead, work: Callable[[Tx], T], checkpoint: bool
    ) -> tuple[T, Checkpoint | None]:
        tx = Tx(conn, head, checkpoint=checkpoint)
        result = work(tx)
        if self.final_seq is not None and tx.events:
            raise VaultDecommissionedError(
                f"the vault's log ended with its {DECOMMISSION_ACTION} entry: nothing more "
                "is logged (finish the decommission)"
            )
        new_head, _ = append(conn, self.data, head, tx.events, self.clock())
        interval = self.checkpoint_interval
        crossed = new_head.seq // interval > head.seq // interval
        cp = None
        if new_head.seq > head.seq and (tx.checkpoint or crossed):
            cp = make_checkpoint(self.keys.signer, self.vault_id, new_head)
            store_checkpoint(conn, cp)
        return result, cp

    def _advance_anchor(self, cp: Checkpoint) -> None:
        # The checkpoint is committed in the data store; a lagging anchor only weakens
        # rollback detection until the next checkpoint advances it.
        with contextlib.suppress(KeystoreError):
            self.keys.store.advance_anchor(cp.seq, cp.body, cp.signature)

    def require_rows(self, table: str, mappings: Sequence[Mapping[Any, Any]]) -> None:
        """Check rows read outside a logged transaction (vault/rowauth.py): a row that
        fails is logged (``store.tamper``) and raises :class:`TamperError`."""
        if not mappings:
            return
        tags = None
        if table == "sv_customers":
            found = self.keys.store.subject_tags([str(r["id"]) for r in mappings])
            tags = {cid: tag.hex() for cid, tag in found.items()}
        self.transact(lambda tx: require(tx.conn, self.keys.row_auth, table, mappings, tags=tags))

    # -- checkpoints and the anchor ----------------------------------------------------------

    def sign_checkpoint(self, entry: Callable[[Tx], Event]) -> Checkpoint:
        """Log ``entry(tx)`` (which may raise a :class:`Refusal`) and sign a checkpoint
        at exactly that entry."""

        def work(tx: Tx) -> int:
            tx.log(entry(tx))
            return tx.head.seq + 1

        seq = self.transact(work, checkpoint=True)
        (signed,) = self.data.read(lambda conn: load_checkpoints(conn, since=seq, until=seq))
        return signed

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint (an auditor's anchor), if any."""
        return self.data.read(latest_checkpoint)

    def _checkpoint_head(self) -> None:
        def work(conn: Connection, head: LogHead) -> Checkpoint | None:
            last = conn.execute(select(func.max(checkpoints.c.seq))).scalar()
            if head.seq == 0 or (last is not None and int(last) >= head.seq):
                return None
            cp = make_checkpoint(self.keys.signer, self.vault_id, head)
            store_checkpoint(conn, cp)
            return cp

        cp = self.data.run(work)
        if cp is not None:
            self._advance_anchor(cp)

    def check_anchor(
        self, *, since: int | None = None, observe: Callable[[LogEntry], None] | None = None
    ) -> VerifyReport:
        """Verify the log from the keystore's anchor (or from ``since``, if that is
        earlier) to the head; refuse a rolled-back, truncated or forked data store
        (:class:`AuditChainError`). ``observe`` sees each entry in the same pass (what it
        saw is verified once this returns). Returns the report."""
        anchor_row = self.keys.store.anchor()
        anchor = None if anchor_row is None else parse_checkpoint(anchor_row[1], anchor_row[2])
        start = anchor.seq if anchor is not None else 1
        if since is not None:
            start = max(1, min(start, since))
        report = self.verify_log(
            since=start, anchor=anchor, anchor_shortfall="rolled back", observe=observe
        )
        if not report.ok:
            raise AuditChainError(
                f"the access log fails verification ({report.reason} at seq {report.bad_seq}): "
                f"{report.message}; the vault refuses to serve",
                reason=report.reason or "invalid",
                seq=report.bad_seq,
            )
        return report

    def verify_log(
        self,
        *,
        since: int = 1,
        anchor: Checkpoint | None = None,
        anchor_shortfall: str = "truncated",
        strict: bool = False,
        progress: Callable[[int], None] | None = None,
        observe: Callable[[LogEntry], None] | None = None,
    ) -> VerifyReport:
        """Verify the stored chain (from ``since``) against the stored checkpoints."""
        return verify_store(
            self.data,
            vault_id=self.vault_id,
            public_key=self.public_key,
            since=since,
            anchor=anchor,
            anchor_shortfall=anchor_shortfall,
            strict=strict,
            progress=progress,
            observe=observe,
        )

    def read_in(self, stmt: Any, column: Any, values: Sequence[str]) -> list[Any]:
        """Rows of ``stmt`` where ``column`` is one of ``values``, read in chunks of 500
        (each in a read transaction of its own)."""
        out: list[Any] = []
        for start in range(0, len(values), 500):
            part = list(values[start : start + 500])

            def read(conn: Connection, part: list[str] = part) -> list[Any]:
                where = stmt.where(column.in_(bindparam("ids", expanding=True)))
                return list(conn.execute(where, {"ids": part}))

            out += self.data.read(read)
        return out

    def subject_of(self, customer_id: str) -> str | None:
        """A customer's subject tag (hex) for its log entries; None once it has no keys."""
        keys = self.keys.customer_keys([customer_id]).get(customer_id)
        return None if keys is None else keys.subject_tag.hex()

    def head(self) -> LogHead:
        """The log head now."""
        return self.data.read(read_head)


def read_kinds(conn: Connection) -> list[tuple[str, str]]:
    """Every declared kind as ``(name, spec JSON)``."""
    return [(str(n), str(t)) for n, t in conn.execute(select(kinds.c.name, kinds.c.spec))]


def load_keyfile_key(keyfile: str | os.PathLike[str] | None) -> SecretBytes | None:
    """The key in a keyfile (32 bytes, mode 0600), or None; :class:`UnlockError` if it
    is unusable."""
    if keyfile is None:
        return None
    with keys_errors():
        return load_keyfile(Path(keyfile))
