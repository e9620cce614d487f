"""Restore drills (issue 23, item 4; docs/drills.md): rehearse a restore without
touching the vault in service.

A drill verifies the archive under the live vault's key, restores it into a temporary
copy (a directory beside the vault; for a vault in PostgreSQL also a temporary schema
in its database) replaying every shred the live vault recorded since, verifies the
copy's log chain, decrypts every record of a random sample of customers, checks that
no customer shredded in the live vault is readable in the copy, and deletes the copy,
whatever happened. Each step is timed; the drill is logged in the live vault as
``backup.drill`` (outcome, counts, milliseconds; no personal data, no paths).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exc, select, text

from ..keys import UnsupportedFormatError
from .actor import Actor
from .archive import verify_backup
from .audit import Auditor
from .cadence import record_last
from .context import Tx, VaultContext
from .errors import (
    SchemaError,
    StorageError,
    VaultError,
    VerificationError,
    record_ciphertext,
)
from .opening import open_context
from .restore import ShredSource, restore_backup
from .sealing import envelope, open_fields, record_version
from .store import customers, describe_error, records

__all__ = ["DEFAULT_SAMPLE", "DrillReport", "Progress", "restore_drill"]

DEFAULT_SAMPLE = 20
_MAX_SAMPLE = 100_000
_CHUNK = 500

#: ``progress(phase, count, total)``: phases "verifying" and "restoring" (archive
#: bytes), "replaying" (shreds), "sampling" and "checking shreds" (customers)
Progress = Callable[[str, int, int], None]
Timer = Callable[[], float]


@dataclass(slots=True)
class DrillReport:
    """What a drill found. ``ms`` holds each step's duration in milliseconds, in the
    order run (``verify_archive``, ``restore``, ``verify_log``, ``sample``,
    ``shreds``, ``cleanup``); ``ok`` is False when any check failed (``failure``
    says which, in words; ``reason`` is a machine word)."""

    backup: str | None = None
    snapshot_seq: int | None = None
    shreds_replayed: int = 0
    log_entries: int = 0
    customers_in_copy: int = 0
    sampled: int = 0
    records_decrypted: int = 0
    decrypt_failures: int = 0
    shredded_checked: int = 0
    shredded_readable: int = 0
    copy_removed: bool = False
    ms: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    reason: str | None = None
    seq: int | None = None  # the backup.drill entry in the live vault

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def total_ms(self) -> int:
        return sum(self.ms.values())

    def detail(self) -> dict[str, Any]:
        """The ``backup.drill`` entry's detail (counts and times only)."""
        out: dict[str, Any] = {
            "backup": self.backup,
            "snapshot_seq": self.snapshot_seq,
            "shreds_replayed": self.shreds_replayed,
            "log_entries": self.log_entries,
            "sampled": self.sampled,
            "records_decrypted": self.records_decrypted,
            "decrypt_failures": self.decrypt_failures,
            "shredded_checked": self.shredded_checked,
            "shredded_readable": self.shredded_readable,
            "copy_removed": self.copy_removed,
            "ms": dict(self.ms),
            "total_ms": self.total_ms,
        }
        if self.reason is not None:
            out["reason_code"] = self.reason
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "seq": self.seq, "failure": self.failure, **self.detail()}


def restore_drill(
    ctx: VaultContext,
    actor: Actor,
    archive: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    sample: int = DEFAULT_SAMPLE,
    progress: Progress | None = None,
    rng: random.Random | None = None,
    timer: Timer = time.perf_counter,
) -> DrillReport:
    """Rehearse restoring ``archive`` (one of this vault's backups) with the secret the
    vault had when it was made, and log the drill as ``backup.drill``. Admin only.

    Returns the report of a drill that passed. A drill that fails raises after the copy
    is deleted and the failure logged (outcome ``error``): VerificationError (archive
    or the copy's log damaged, sampled records that do not open, a shredded customer
    readable in the copy), UnlockError (wrong secret), StorageError (no room for the
    copy, or the copy could not be deleted). SchemaError for a bad ``sample``, before
    anything runs. The live vault is only read, apart from its one log entry."""
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= _MAX_SAMPLE:
        raise SchemaError(f"the sample is a whole number of customers from 0 to {_MAX_SAMPLE:,}")
    actor.authorize("admin", "backup.drill")
    report = DrillReport()
    steps = _Steps(report, timer)
    failure: VaultError | None = None
    place = _make_place(ctx)
    try:
        _run(ctx, steps, Path(archive), place, sample, progress, rng, passphrase, keyfile)
    except VaultError as error:
        failure = error
    finally:
        with steps.timed("cleanup"):
            report.copy_removed = _remove_place(ctx, place)
    if failure is None and not report.copy_removed:
        failure = StorageError(
            f"the drill passed but its temporary copy could not be deleted: remove {place.folder}"
            + (f" and the schema {place.schema}" if place.schema else "")
        )
    if failure is not None:
        report.failure = str(failure)
        report.reason = (
            report.reason or str(getattr(failure, "reason", "") or "") or (type(failure).__name__)
        )
    _log(ctx, actor, report)
    if failure is not None:
        raise failure
    return report


class _Steps:
    """Times each step into ``report.ms`` (milliseconds, whole)."""

    def __init__(self, report: DrillReport, timer: Timer) -> None:
        self.report = report
        self.timer = timer

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = self.timer()
        try:
            yield
        finally:
            self.report.ms[name] = max(0, round((self.timer() - start) * 1000))


@dataclass(frozen=True, slots=True)
class _Place:
    """Where the copy goes: a new owner-only folder beside the vault (the restored
    vault is ``folder/vault``) and, for a vault in PostgreSQL, a new schema."""

    folder: Path
    schema: str | None = None
    url: str | None = None


def _make_place(ctx: VaultContext) -> _Place:
    # Beside the vault, not in the system temp folder: the copy holds keys.
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{ctx.path.name}.drill-", dir=ctx.path.parent))
    except OSError as error:
        raise StorageError(f"cannot make the drill's temporary folder: {error.strerror}") from None
    if ctx.data.is_sqlite:
        return _Place(folder)
    schema = "svdrill_" + secrets.token_hex(8)
    try:
        with ctx.data.engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except exc.SQLAlchemyError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise StorageError(
            f"cannot make the drill's temporary schema: {describe_error(error)}"
        ) from None
    url = ctx.data.engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
    return _Place(folder, schema, url.render_as_string(hide_password=False))


def _remove_place(ctx: VaultContext, place: _Place) -> bool:
    """Delete the copy; True when nothing of it is left."""
    removed = True
    if place.schema is not None:
        try:
            with ctx.data.engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{place.schema}" CASCADE'))
        except exc.SQLAlchemyError:
            removed = False
    shutil.rmtree(place.folder, ignore_errors=True)
    return removed and not place.folder.exists()


def _run(
    ctx: VaultContext,
    steps: _Steps,
    archive: Path,
    place: _Place,
    sample: int,
    progress: Progress | None,
    rng: random.Random | None,
    passphrase: bytes | None,
    keyfile: str | os.PathLike[str] | None,
) -> None:
    report = steps.report

    def phase(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda n, total: progress(name, n, total))

    with steps.timed("verify_archive"):
        # Under the live vault's key: a drill is for this vault's own archives.
        checked = verify_backup(
            archive,
            public_key=ctx.public_key,
            extract_to=_fresh(place.folder / "verify"),
            progress=phase("verifying"),
        )
        shutil.rmtree(place.folder / "verify", ignore_errors=True)
        if checked.manifest is not None:
            report.backup = str(checked.manifest.get("backup"))
            report.snapshot_seq = int(checked.manifest.get("seq", 0))
        if not checked.ok:
            report.reason = checked.reason or "invalid"
            raise VerificationError(
                f"the archive fails verification: {checked.message}", reason=report.reason
            )
    root = place.folder / "vault"
    relay = {"verifying": "restoring", "replaying": "replaying"}
    with steps.timed("restore"):
        result = restore_backup(
            archive,
            root,
            passphrase=passphrase,
            keyfile=keyfile,
            data_url=place.url,
            source=ShredSource(live=Auditor(ctx.data, ctx.vault_id, ctx.public_key, None)),
            public_key=ctx.public_key,
            progress=None
            if progress is None
            else (lambda name, n, total: progress(relay.get(name, name), n, total)),
        )
        report.shreds_replayed = int(result["shreds_replayed"])
    copy = open_context(root, passphrase=passphrase, keyfile=keyfile, data_url=place.url)
    try:
        with steps.timed("verify_log"):
            verified = copy.verify_log()
            report.log_entries = verified.last_seq
            if not verified.ok:
                report.reason = verified.reason or "invalid"
                raise VerificationError(
                    f"the restored copy's log fails: {verified.message}", reason=report.reason
                )
        with steps.timed("sample"):
            _decrypt_sample(copy, report, sample, rng or random.SystemRandom(), phase("sampling"))
        with steps.timed("shreds"):
            _check_shreds(ctx, copy, report, phase("checking shreds"))
    finally:
        copy.close()


def _fresh(folder: Path) -> Path:
    folder.mkdir(mode=0o700)
    return folder


def _decrypt_sample(
    copy: VaultContext,
    report: DrillReport,
    size: int,
    rng: random.Random,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Open every record of ``size`` random active customers of the copy (their rows'
    authenticators first); a record that fails counts, and fails the drill."""
    active = copy.data.read(
        lambda conn: [
            str(c)
            for (c,) in conn.execute(
                select(customers.c.id).where(customers.c.state == "active").order_by(customers.c.id)
            )
        ]
    )
    report.customers_in_copy = len(active)
    chosen = rng.sample(active, min(size, len(active)))
    report.sampled = len(chosen)
    for start in range(0, len(chosen), _CHUNK):
        part = chosen[start : start + _CHUNK]
        rows = copy.read_in(select(records), records.c.customer_id, part)
        keys = copy.keys.customer_keys(part)
        for cid in part:
            mine = [r._mapping for r in rows if r.customer_id == cid]
            try:
                copy.require_rows("sv_records", mine)
            except VaultError:
                report.decrypt_failures += len(mine)
                continue
            for row in mine:
                try:
                    with record_ciphertext(str(row["id"])):
                        env = envelope(copy.keys, keys, cid, int(row["dek_version"]))
                        open_fields(
                            env,
                            keys[cid],
                            str(row["id"]),
                            str(row["kind"]),
                            record_version(row),
                            bytes(row["ciphertext"]),
                        )
                    report.records_decrypted += 1
                except (VaultError, UnsupportedFormatError):
                    report.decrypt_failures += 1
        if progress is not None:
            progress(len(part), len(chosen))
    if report.decrypt_failures:
        report.reason = "undecryptable"
        raise VerificationError(
            f"{report.decrypt_failures} record(s) of the sample did not decrypt in the "
            "restored copy",
            reason=report.reason,
        )


def _check_shreds(
    live: VaultContext,
    copy: VaultContext,
    report: DrillReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Every customer the live vault shredded (or began to) holds no key in the copy."""
    gone = live.data.read(
        lambda conn: [
            str(c)
            for (c,) in conn.execute(
                select(customers.c.id).where(customers.c.state.in_(["shredded", "shredding"]))
            )
        ]
    )
    report.shredded_checked = len(gone)
    for start in range(0, len(gone), _CHUNK):
        part = gone[start : start + _CHUNK]
        report.shredded_readable += len({row.customer_id for row in copy.keys.store.deks(part)})
        if progress is not None:
            progress(len(part), len(gone))
    if report.shredded_readable:
        report.reason = "shredded_readable"
        raise VerificationError(
            f"{report.shredded_readable} customer(s) shredded in the live vault still have "
            "keys in the restored copy: the restore did not replay their shreds",
            reason=report.reason,
        )


def _log(ctx: VaultContext, actor: Actor, report: DrillReport) -> None:
    outcome = "ok" if report.ok else "error"

    def work(tx: Tx) -> int:
        seq = tx.next_seq()
        tx.log(actor.event("backup.drill", outcome=outcome, detail=report.detail()))
        return seq

    report.seq = ctx.transact(work)
    record_last(ctx, "drill", report.seq)
