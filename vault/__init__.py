"""shredvault: per-customer encrypted records, a hash-chained access log, crypto-shredding.

The public Python API. Everything not listed in ``__all__`` is private.
"""

from ..keys import DecryptionError, KdfParams, KeysError, UnsupportedFormatError
from .access import ACTIONS, Role
from .archive import BackupReport, verify_backup
from .audit import Auditor, format_public_key, parse_public_key, read_anchor, verify_export
from .backup import BackupInfo
from .certificate import (
    Certificate,
    CertificateReport,
    load_certificate,
    render_certificate_markdown,
    verify_certificate,
)
from .checkpoint import Checkpoint
from .clock import Clock
from .decommission import decommission_state, decommissioned_certificate
from .drill import DrillReport
from .errors import (
    AccessDeniedError,
    AuditChainError,
    DecommissionHoldError,
    DiskFaultError,
    DuplicateRefError,
    HandoverConflictError,
    LegalHoldError,
    LogPendingError,
    NotFoundError,
    NoticeWindowError,
    NoTrustedKeyError,
    NotSearchableError,
    OutputExistsError,
    PurposeError,
    RequestClosedError,
    SchemaError,
    ShreddedError,
    StateConflictError,
    StorageError,
    TamperError,
    UnlockError,
    VaultBusyError,
    VaultDecommissionedError,
    VaultError,
    VerificationError,
)
from .files import create_file, generate_keyfile, write_file
from .handover_complete import HandoverCompletion
from .handover_export import HandoverExport
from .handover_import import HandoverImport
from .log import Event
from .markdown import render_markdown
from .model import Customer, ExpiredCustomers, Page, Principal, Record, ShredExpiredResult
from .notices import NoticeBatch
from .package import (
    HandoverKey,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
    read_manifest,
    verify_completion,
)
from .receipt import Receipt, ReceiptReport, load_receipt, verify_receipt
from .requests import RequestClosure
from .restore import ShredSource, restore_backup
from .rotate import KeyPolicy, KeyStatus
from .routine import CHANNELS, NOTICE_REASONS, OUTCOMES, REQUEST_TYPES, Notice, Request
from .schema import KindSpec
from .session import Session
from .store import LogHead
from .vault import Vault
from .verify import VerifyReport

__all__ = [
    "ACTIONS",
    "CHANNELS",
    "NOTICE_REASONS",
    "OUTCOMES",
    "REQUEST_TYPES",
    "AccessDeniedError",
    "AuditChainError",
    "Auditor",
    "BackupInfo",
    "BackupReport",
    "Certificate",
    "CertificateReport",
    "Checkpoint",
    "Clock",
    "Customer",
    "DecommissionHoldError",
    "DecryptionError",
    "DiskFaultError",
    "DrillReport",
    "DuplicateRefError",
    "Event",
    "ExpiredCustomers",
    "HandoverCompletion",
    "HandoverConflictError",
    "HandoverExport",
    "HandoverImport",
    "HandoverKey",
    "KdfParams",
    "KeyPolicy",
    "KeyStatus",
    "KeysError",
    "KindSpec",
    "LegalHoldError",
    "LogHead",
    "LogPendingError",
    "NoTrustedKeyError",
    "NotFoundError",
    "NotSearchableError",
    "Notice",
    "NoticeBatch",
    "NoticeWindowError",
    "OutputExistsError",
    "Page",
    "Principal",
    "PurposeError",
    "Receipt",
    "ReceiptReport",
    "Record",
    "Request",
    "RequestClosedError",
    "RequestClosure",
    "Role",
    "SchemaError",
    "Session",
    "ShredExpiredResult",
    "ShredSource",
    "ShreddedError",
    "StateConflictError",
    "StorageError",
    "TamperError",
    "UnlockError",
    "UnsupportedFormatError",
    "Vault",
    "VaultBusyError",
    "VaultDecommissionedError",
    "VaultError",
    "VerificationError",
    "VerifyReport",
    "create_file",
    "decommission_state",
    "decommissioned_certificate",
    "format_public_key",
    "generate_keyfile",
    "handover_keygen",
    "load_certificate",
    "load_receipt",
    "open_handover_key",
    "parse_public_key",
    "read_anchor",
    "read_handover_public_key",
    "read_manifest",
    "render_certificate_markdown",
    "render_markdown",
    "restore_backup",
    "verify_backup",
    "verify_certificate",
    "verify_completion",
    "verify_export",
    "verify_receipt",
    "write_file",
]
