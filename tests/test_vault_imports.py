"""One-way imports (DESIGN §1): keys imports no vault/cli; vault imports no cli and no
click. Checked on the source with ast, so lazy imports inside functions count too. And the
public surface is pinned: what ``shredvault`` and ``shredvault.keys`` export."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shredvault
from shredvault import keys, vault

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    """What a file under shredvault/ imports, by top-level name: absolute imports by their
    first component (``shredvault.cli`` also as ``cli``), and relative imports that climb
    out of the file's own package (``from ..cli import x``) by the sibling they reach."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_names(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(_names(node.module))
            if node.module == "shredvault":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from .. import cli
                found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.update(_names(node.args[0].value))
    return found


def _names(dotted: str) -> set[str]:
    """``os.path`` -> {os}; ``shredvault.cli.main`` -> {shredvault, cli}."""
    parts = dotted.split(".")
    return set(parts[:2]) if parts[0] == "shredvault" and len(parts) > 1 else {parts[0]}


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    return files


# Nor the root package: it imports vault, so from inside it is a cycle.
@pytest.mark.parametrize("path", sources("keys"), ids=lambda p: p.name)
def test_keys_modules_import_neither_vault_nor_cli(path: Path) -> None:
    assert not imported_packages(path) & {"vault", "cli", "server", "client", "shredvault"}


@pytest.mark.parametrize("path", sources("vault"), ids=lambda p: p.name)
def test_vault_modules_import_neither_cli_nor_click(path: Path) -> None:
    assert not imported_packages(path) & {"cli", "click", "server", "client", "shredvault"}


# server -> vault -> keys; cli -> server (docs/architecture.md)
@pytest.mark.parametrize("path", sources("server"), ids=lambda p: p.name)
def test_server_modules_import_neither_cli_nor_click(path: Path) -> None:
    assert not imported_packages(path) & {"cli", "click", "client", "shredvault"}


def test_the_client_imports_nothing_of_the_vault() -> None:
    """Services use shredvault.client without keys or files: stdlib and httpx only."""
    found = imported_packages(ROOT / "client.py")
    assert not found & {"vault", "keys", "cli", "server", "click", "shredvault"}
    assert found - {"__future__", "collections", "typing", "urllib", "httpx"} == set()


def test_only_the_cli_imports_the_server() -> None:
    users = {
        f"{path.parent.name}/{path.name}"
        for package in ("keys", "vault", "cli", "server")
        for path in sources(package)
        if "server" in imported_packages(path) and path.parent.name != "server"
    }
    assert users == {"cli/serve.py"}


def test_the_import_scanner_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os.path\n"
        "from . import sibling\n"
        "def f():\n"
        "    from cli.main import main\n"
        "    import click as c\n"
        "    importlib.import_module('vault.log')\n"
    )
    assert imported_packages(probe) == {"os", "cli", "click", "vault"}


def test_the_import_scanner_sees_imports_that_leave_the_package(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from . import sibling\n"
        "from .log import Event\n"
        "from ..keys import KeyStore\n"
        "def f():\n"
        "    from .. import cli\n"
        "    import shredvault.vault.log\n"
    )
    assert imported_packages(probe) == {"keys", "cli", "shredvault", "vault"}


def test_every_name_in_vault_all_exists() -> None:
    missing = [name for name in vault.__all__ if not hasattr(vault, name)]
    assert missing == []
    assert len(set(vault.__all__)) == len(vault.__all__)


def test_vault_all_covers_the_documented_error_tree() -> None:
    for name in (
        "VaultError",
        "UnlockError",
        "AccessDeniedError",
        "SchemaError",
        "NotFoundError",
        "ShreddedError",
        "VerificationError",
        "AuditChainError",
        "VaultBusyError",
        "StorageError",
        "DecryptionError",
        "UnsupportedFormatError",
    ):
        assert name in vault.__all__
    assert issubclass(vault.ShreddedError, vault.NotFoundError)
    assert issubclass(vault.StateConflictError, vault.ShreddedError)
    assert issubclass(vault.AuditChainError, vault.VerificationError)
    assert issubclass(vault.TamperError, vault.AuditChainError)
    assert issubclass(vault.NotFoundError, LookupError)
    assert issubclass(vault.SchemaError, ValueError)


def test_vault_all_names_the_public_entry_points() -> None:
    for name in ("Vault", "Session", "Auditor", "Record", "Customer", "verify_export"):
        assert name in vault.__all__


# -- the public surface -------------------------------------------------------------------
# Changing either list changes the public API: only on purpose, with the docs (README).

SHREDVAULT_ALL = [
    "ACTIONS",
    "AccessDeniedError",
    "AuditChainError",
    "Auditor",
    "BackupInfo",
    "BackupReport",
    "CHANNELS",
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
    "NOTICE_REASONS",
    "NoTrustedKeyError",
    "NotFoundError",
    "NotSearchableError",
    "Notice",
    "NoticeBatch",
    "NoticeWindowError",
    "OUTCOMES",
    "OutputExistsError",
    "Page",
    "Principal",
    "PurposeError",
    "REQUEST_TYPES",
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

KEYS_ALL = [
    "CEILING",
    "CustomerKeys",
    "DecryptionError",
    "DiskFaultError",
    "Envelope",
    "FLOOR",
    "InvalidKeyError",
    "KdfParams",
    "KeyRing",
    "KeyStore",
    "KeysError",
    "KeystoreError",
    "OutputExistsError",
    "SecretBytes",
    "Signer",
    "UnsupportedFormatError",
    "WeakParametersError",
    "WrongKeyError",
    "aad",
    "dek_aad",
    "derive_root_key",
    "disk_fault",
    "disk_fault_message",
    "fingerprint",
    "generate_keyfile",
    "kek_aad",
    "load_keyfile",
    "needs_rehash",
    "normalize_passphrase",
    "recommended_params",
    "record_aad",
    "signing_seed_aad",
    "verify_signature",
]


def test_shredvault_exports_exactly_the_pinned_names() -> None:
    assert sorted(shredvault.__all__) == SHREDVAULT_ALL
    assert len(set(shredvault.__all__)) == len(shredvault.__all__)


def test_every_shredvault_name_is_the_same_object_as_in_shredvault_vault() -> None:
    assert set(shredvault.__all__) == set(vault.__all__)
    different = [n for n in shredvault.__all__ if getattr(shredvault, n) is not getattr(vault, n)]
    assert different == []


def test_shredvault_has_no_other_public_names_than_all_and_its_subpackages() -> None:
    public = {n for n in vars(shredvault) if not n.startswith("_")}
    assert public - set(shredvault.__all__) <= {"keys", "vault", "cli", "server", "client"}


def test_shredvault_keys_exports_exactly_the_pinned_names() -> None:
    assert sorted(keys.__all__) == KEYS_ALL
    assert len(set(keys.__all__)) == len(keys.__all__)
    missing = [name for name in keys.__all__ if not hasattr(keys, name)]
    assert missing == []
