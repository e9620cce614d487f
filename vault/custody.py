"""Keys, backups and handovers on a :class:`~.session.Session`: key rotation and status,
backups and restore drills, access reviews, handover export/import/completion. Each
method is a short call into an operation or workflow with the session's context and
actor; the gate decides and logs every call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from .actor import Actor
from .audit_reports import audit_query, audit_report
from .backup import BackupInfo, backup_list, create_backup, forget_backup
from .cadence import set_interval
from .context import VaultContext, load_keyfile_key
from .dek_rotation import rotate_dek, rotate_deks
from .drill import DEFAULT_SAMPLE, DrillReport, Progress, restore_drill
from .handover_complete import HandoverCompletion, complete_package
from .handover_export import HandoverExport, export_package
from .handover_import import HandoverImport, import_package
from .inputs import check_customer_id
from .package import HandoverKey
from .reviews import review_done, role_review
from .rotate import (
    KeyPolicy,
    KeyStatus,
    change_passphrase,
    key_status,
    retire_epoch,
    rotate_kek,
)
from .subject_report import customer_report, customer_report_from_receipt

__all__ = ["CustodyMethods"]

logger = logging.getLogger("shredvault.vault.session")


class CustodyMethods:
    """Key management, backups and drills, reviews and handovers of a session."""

    _actor: Actor
    _ctx: VaultContext

    # -- keys (admin; status also for auditors) --------------------------------

    def rotate_kek(
        self, *, retire: bool = False, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """New KEK epoch; re-wrap every DEK under it in batches (resumable)."""
        done = rotate_kek(self._ctx, self._actor, retire=retire, progress=progress)
        logger.info(
            "KEK rotated to epoch %s, %s DEK(s) re-wrapped", done["new_epoch"], done["rewrapped"]
        )
        return done

    def retire_epoch(self, epoch: int) -> None:
        """Delete a KEK epoch that no DEK uses any more."""
        retire_epoch(self._ctx, self._actor, epoch)

    def rotate_dek(self, customer_id: str) -> int:
        """New DEK version for one customer, records re-encrypted, old version deleted."""
        version = rotate_dek(self._ctx, self._actor, check_customer_id(customer_id))
        logger.info("DEK of customer %s rotated to version %d", customer_id, version)
        return version

    def rotate_deks(
        self,
        *,
        older_than_days: float | None = None,
        progress: Callable[[int], None] | None = None,
        total: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Rotate the DEK of every active customer (or those older than N days), in
        batches; ``total`` gets how many are due, ``progress`` each batch's count."""
        rotated = rotate_deks(
            self._ctx,
            self._actor,
            older_than_days=older_than_days,
            progress=progress,
            total=total,
        )
        logger.info("DEKs of %d customer(s) rotated", len(rotated))
        return rotated

    def change_passphrase(
        self, *, passphrase: bytes | None = None, keyfile: str | None = None
    ) -> None:
        """Re-wrap the root-wrapped keys under a new passphrase or keyfile (O(epochs))."""
        change_passphrase(
            self._ctx,
            self._actor,
            passphrase=passphrase,
            keyfile_key=load_keyfile_key(keyfile),
        )
        logger.info("root key re-wrapped under a new %s", "keyfile" if keyfile else "passphrase")

    def key_status(self, policy: KeyPolicy | None = None) -> KeyStatus:
        """Key ages, DEKs per epoch, KDF parameters vs recommendation, violations."""
        return key_status(self._ctx, self._actor, policy)

    # -- reports ---------------------------------------------------------------

    def customer_report(self, customer_id: str) -> dict[str, Any]:
        """Everything held about a customer, decrypted, with its access history and a
        signed checkpoint (the subject access report). Admin or a role with export."""
        return customer_report(self._ctx, self._actor, check_customer_id(customer_id))

    def customer_report_from_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """The subject access report of a shredded customer, through its erasure receipt
        (see :func:`.subject_report.customer_report_from_receipt`). VerificationError if
        the receipt does not verify against this vault. Admin or a role with export."""
        return customer_report_from_receipt(self._ctx, self._actor, receipt)

    def audit_query(
        self, *, limit: int | None = None, after: str | None = None, **filters: str | None
    ) -> dict[str, Any]:
        """Which customers and records were touched (actor, role, action, outcome,
        since, until): the breach-scope question. Ids only, never plaintext. With
        ``limit``, at most that many entries after the cursor ``after``; the result's
        ``next`` continues."""
        return audit_query(self._ctx, self._actor, limit=limit, after=after, **filters)

    def audit_report(self, *, full: bool = False) -> dict[str, Any]:
        """The inspector's one-page report (see :func:`.audit_reports.audit_report`);
        ``full`` re-verifies and recounts the whole log instead of resuming from the
        stored totals."""
        return audit_report(self._ctx, self._actor, full=full)

    # -- backups ---------------------------------------------------------------

    def backup(
        self,
        out: str | BinaryIO,
        *,
        expires_days: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Write a signed backup archive (a consistent snapshot of both stores) and
        return its manifest. Logged as ``backup.create``; counts on the key-copy clock."""
        manifest = create_backup(
            self._ctx, self._actor, out, expires_days=expires_days, progress=progress
        )
        logger.info("backup %s written at log seq %s", manifest["backup"], manifest["seq"])
        return manifest

    def backups(self) -> list[BackupInfo]:
        """Recorded backups with where they were written, their state and how many
        customers were shredded since each."""
        return backup_list(self._ctx, self._actor)

    def forget_backup(self, backup_id: str) -> BackupInfo:
        """Retire a backup whose archive was destroyed: it stops counting on the
        key-copy clock. Admin only; logged as ``backup.forget``."""
        return forget_backup(self._ctx, self._actor, backup_id)

    # -- the routine: restore drills and access reviews ---------------------------

    def restore_drill(
        self,
        archive: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        sample: int = DEFAULT_SAMPLE,
        progress: Progress | None = None,
    ) -> DrillReport:
        """Rehearse restoring ``archive`` in a temporary copy, always deleted (see
        :func:`.drill.restore_drill`). Admin; logged as ``backup.drill``."""
        options = {"passphrase": passphrase, "keyfile": keyfile, "progress": progress}
        return restore_drill(self._ctx, self._actor, archive, sample=sample, **options)  # type: ignore[arg-type]

    def set_drill_interval(self, days: int) -> int:
        """Days allowed between restore drills (default 90). Admin; ``policy.set``."""
        return set_interval(self._ctx, self._actor, "drill", days)

    def role_review(self) -> dict[str, Any]:
        """Grants, last use and activity since the last review (:mod:`.reviews`)."""
        return role_review(self._ctx, self._actor)

    def review_done(self, *, note: str | None = None) -> dict[str, Any]:
        """Record that the access review was made (``role.review``). Admin only."""
        return review_done(self._ctx, self._actor, note=note)

    def set_review_interval(self, days: int) -> int:
        """Days allowed between access reviews (default 90). Admin; ``policy.set``."""
        return set_interval(self._ctx, self._actor, "review", days)

    # -- business handover -----------------------------------------------------

    def handover_export(
        self,
        recipient_public_key: bytes,
        out: str,
        *,
        customers: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
        require_notice_window: bool = False,
    ) -> HandoverExport:
        """Write a handover package for an acquirer (see :mod:`vault.handover`): only
        active customers whose consent has ``transfer: True``; one ``customer.handover``
        entry each, committed only once the package is complete. Admin or ``export``.
        ``require_notice_window``: NoticeWindowError unless every exported customer had
        a transfer notice delivered, its window passed, and no objection."""
        return export_package(
            self._ctx,
            self._actor,
            recipient_public_key,
            out,
            customer_ids=customers,
            progress=progress,
            require_notice_window=require_notice_window,
        )

    def handover_import(
        self,
        package: str,
        key: HandoverKey,
        *,
        seller_public_key: bytes | None = None,
        accept_unverified_seller: bool = False,
        declare_kinds: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverImport:
        """Verify a handover package completely, then import its customers and records
        in one transaction (admin). Nothing is written when anything fails. Without
        ``seller_public_key`` it refuses (NoTrustedKeyError) unless
        ``accept_unverified_seller`` is set, which the log entry records."""
        return import_package(
            self._ctx,
            self._actor,
            package,
            key,
            seller_public_key=seller_public_key,
            accept_unverified_seller=accept_unverified_seller,
            declare_kinds=declare_kinds,
            progress=progress,
        )

    def handover_complete(
        self,
        package: str,
        *,
        receipts_dir: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> HandoverCompletion:
        """Shred every customer a package this vault exported transferred (admin), one
        receipt each, and return a signed summary. Resumable."""
        return complete_package(
            self._ctx, self._actor, package, receipts_dir=receipts_dir, progress=progress
        )
