"""The backup archive format (docs/backup.md) and its offline verification.

An uncompressed POSIX tar holding ``manifest.json`` (canonical JSON: vault, backup
id, seq and head at the snapshot, file hashes, expiry), ``manifest.sig`` (the vault's
Ed25519 signature of it, hex), ``data.db`` and ``keys.db``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..keys import KeyStore
from .audit import Auditor
from .canonical import canonical
from .errors import StorageError, VaultError, VerificationError, keys_errors
from .files import create_file
from .inputs import malformed, parse_json
from .layout import DATA_FILE, KEYS_FILE
from .trust import NO_TRUSTED_KEY, PINNED, no_trusted_key_message, trust_of, verify_typed

__all__ = [
    "MANIFEST",
    "MEMBERS",
    "SIGNATURE",
    "BackupReport",
    "file_digest",
    "keystore_public_key",
    "verify_backup",
]

MANIFEST = "manifest.json"


SIGNATURE = "manifest.sig"


MEMBERS = (DATA_FILE, KEYS_FILE)


_CHUNK = 1 << 20


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


@dataclass(frozen=True, slots=True)
class BackupReport:
    ok: bool
    reason: str | None
    message: str
    manifest: dict[str, Any] | None = None
    #: what the key checked against is (``vault.trust``); None when not verified
    trust: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "manifest": self.manifest,
            "trust": self.trust,
        }


@contextmanager
def _opened(archive: str | os.PathLike[str] | BinaryIO) -> Iterator[tarfile.TarFile]:
    """The archive's members, read once in order, from a path or from an open binary
    stream such as stdin (so an archive can come through a pipe). A seekable file is
    read directly; a pipe through tar's stream mode (slower: it buffers)."""
    with contextlib.ExitStack() as stack:
        if isinstance(archive, (str, os.PathLike)):
            try:
                handle: BinaryIO = stack.enter_context(open(archive, "rb"))
            except OSError as error:
                raise VerificationError(
                    f"not a readable backup archive: {error}", reason="malformed"
                ) from None
        else:
            handle = archive
        try:
            if handle.seekable():
                tar = tarfile.open(fileobj=handle, mode="r:")  # noqa: SIM115
            else:
                tar = tarfile.open(fileobj=handle, mode="r|", bufsize=_CHUNK)  # noqa: SIM115
        except (OSError, tarfile.TarError) as error:
            raise VerificationError(
                f"not a readable backup archive: {error}", reason="malformed"
            ) from None
        stack.callback(tar.close)
        yield tar


def _small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int = 1 << 20) -> bytes:
    if not info.isfile() or info.size > limit:
        raise VerificationError(
            f"{info.name} in the archive is not a small file", reason="malformed"
        )
    handle = tar.extractfile(info)
    assert handle is not None
    return handle.read()


def _read_members(
    tar: tarfile.TarFile,
    where: Path,
    progress: Callable[[int, int], None] | None,
) -> tuple[bytes, bytes, dict[str, Any]]:
    """Stream the members in the order they were written (manifest, signature, then the
    stores), extracting each store into ``where`` checked against the manifest."""
    body: bytes | None = None
    signature: bytes | None = None
    manifest: dict[str, Any] | None = None
    seen: set[str] = set()
    for info in tar:
        if info.name in seen:
            raise VerificationError(f"the archive holds {info.name} twice", reason="malformed")
        seen.add(info.name)
        if info.name == MANIFEST:
            body = _small(tar, info)
            manifest = parse_json(body, what="the manifest", fail=malformed)
            if (
                not isinstance(manifest, dict)
                or manifest.get("type") != "backup"
                or manifest.get("v") != 1
                or canonical(manifest) != body
            ):
                raise VerificationError("not a v1 shredvault backup manifest", reason="malformed")
        elif info.name == SIGNATURE:
            signature = bytes.fromhex(_small(tar, info).decode("ascii").strip())
        elif info.name in MEMBERS:
            if manifest is None:
                raise VerificationError(
                    f"{info.name} comes before the manifest in the archive", reason="malformed"
                )
            members = manifest["members"]
            total = sum(int(members[name]["size"]) for name in MEMBERS)
            _extract_checked(tar, info, where / info.name, members[info.name], progress, total)
    missing = [name for name in (MANIFEST, SIGNATURE, *MEMBERS) if name not in seen]
    if missing or body is None or signature is None or manifest is None:
        raise VerificationError(f"the archive has no {', '.join(missing)}", reason="malformed")
    return body, signature, manifest


def verify_backup(
    archive: str | os.PathLike[str] | BinaryIO,
    *,
    public_key: bytes | None = None,
    extract_to: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    trust_embedded_key: bool = False,
) -> BackupReport:
    """Check an archive offline (a path, or a binary stream such as stdin, read once):
    manifest signature, every member's hash and size, and the access log inside
    (chain, checkpoints, head at the snapshot). With ``extract_to``, the verified stores
    are left there. ``progress(bytes, total)`` as the stores are read. Never raises for
    bad input.

    ``public_key`` is the vault key the verifier trusts. Without it the archive is
    checked under the key in its own keystore and, if nothing else is wrong, the report
    fails with reason ``"no trusted key"`` (never ok) unless ``trust_embedded_key`` is
    set, when ``trust`` says ``"self-asserted"``."""
    manifest: dict[str, Any] | None = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="shredvault-verify-") as tmp,
            _opened(archive) as tar,
        ):
            where = extract_to or Path(tmp)
            body, signature, manifest = _read_members(tar, where, progress)
            embedded = keystore_public_key(where / KEYS_FILE)
            if public_key is not None and public_key != embedded:
                return BackupReport(
                    False,
                    "wrong key",
                    "the archive's keystore holds another public key than the trusted one",
                    manifest,
                )
            key = public_key if public_key is not None else embedded
            if not verify_typed(key, body, signature, "backup"):
                return BackupReport(
                    False, "bad signature", "the manifest signature does not verify", manifest
                )
            # The snapshot's data is always the SQLite file beside it, wherever the
            # live vault kept its data (its keystore may say "external").
            with Auditor.open(where, data_url=f"sqlite:///{where / DATA_FILE}") as auditor:
                if auditor.vault_id != manifest["vault"]:
                    return BackupReport(
                        False,
                        "foreign vault",
                        "the data snapshot belongs to another vault",
                        manifest,
                    )
                report = auditor.verify(public_key=key)
                head = auditor.head
            if not report.ok:
                return BackupReport(
                    False, report.reason, f"the log inside fails: {report.message}", manifest
                )
            if (head.seq, head.hash) != (manifest["seq"], manifest["head"]):
                return BackupReport(
                    False, "modified", "the log head differs from the manifest", manifest
                )
    except VerificationError as error:
        return BackupReport(False, error.reason, str(error), manifest)
    except (ValueError, KeyError, TypeError, OSError, tarfile.TarError, VaultError) as error:
        return BackupReport(False, "malformed", f"the archive is damaged: {error}", manifest)
    trust = trust_of(public_key, trust_embedded_key=trust_embedded_key)
    if trust is None:
        return BackupReport(False, NO_TRUSTED_KEY, no_trusted_key_message("backup"), manifest)
    note = "" if trust == PINNED else " (self-asserted: under the key inside the archive)"
    return BackupReport(
        True,
        None,
        f"backup {manifest['backup']} of {manifest['vault']} at seq {manifest['seq']} "
        f"verifies{note}",
        manifest,
        trust,
    )


def _extract_checked(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    dest: Path,
    expected: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    total: int,
) -> None:
    source = tar.extractfile(info) if info.isfile() else None
    if source is None:
        raise VerificationError(f"{info.name} in the archive is not a file", reason="malformed")
    h = hashlib.sha256()
    size = 0
    with create_file(dest) as out:
        while chunk := source.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
            if progress is not None:
                progress(len(chunk), total)
    if h.hexdigest() != expected["sha256"] or size != expected["size"]:
        raise VerificationError(
            f"{info.name} does not match the manifest (altered or swapped)", reason="modified"
        )


def keystore_public_key(path: Path) -> bytes:
    """The vault public key a keystore snapshot holds (read-only, no unlocking)."""
    try:
        with keys_errors(), contextlib.closing(KeyStore.open(path)) as store:
            return store.public_key()
    except StorageError as error:
        raise VerificationError(
            f"the keystore snapshot cannot be read: {error}", reason="malformed"
        ) from None
