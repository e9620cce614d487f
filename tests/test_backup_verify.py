"""Backup archives are checked before anything is trusted (DESIGN §7a).

A corruption matrix: truncations, a flipped byte in each member, members swapped in
from another backup of the same vault or from another vault, a manifest edited after
signing, another vault's archive checked with this vault's key. For every case
``verify_backup`` reports ``ok=False`` with a reason, and ``restore_backup`` raises
``VerificationError`` and leaves nothing a vault could open.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import StorageError, Vault, VerificationError, restore_backup, verify_backup
from shredvault.vault.canonical import canonical
from shredvault.vault.layout import RESTORE_MARKER

PURPOSE = "service"
MEMBER_ORDER = ("manifest.json", "manifest.sig", "data.db", "keys.db")


@dataclass(frozen=True)
class Archives:
    """Vault A with two backups (the second after more writes) and vault B with one."""

    base: Path
    keyfile: Path
    a1: Path
    a2: Path
    b1: Path
    a_public_key: bytes


def _fill(v: Vault, names: list[str]) -> None:
    s = v.admin()
    cid = s.add_customer()
    s.put_many([(cid, "profile", {"name": n}) for n in names], purpose=PURPOSE)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    base = tmp_path_factory.mktemp("archives")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    with Vault.create(base / "a", keyfile=keyfile) as a:
        a.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        _fill(a, ["Ada", "Alan"])
        a.admin().backup(str(base / "a1.tar"))
        _fill(a, ["Barbara", "Brian"])
        a.admin().backup(str(base / "a2.tar"))
        a_public_key = a.public_key
    with Vault.create(base / "b", keyfile=keyfile) as b:
        b.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        _fill(b, ["Ada", "Alan"])
        b.admin().backup(str(base / "b1.tar"))
    return Archives(base, keyfile, base / "a1.tar", base / "a2.tar", base / "b1.tar", a_public_key)


# -- building damaged archives -----------------------------------------------------------------


def read_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:") as tar:
        out = {}
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name] = handle.read()
    assert tuple(out) == MEMBER_ORDER
    return out


def write_members(out: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return out


def member_offsets(archive: Path) -> dict[str, tuple[int, int]]:
    """Where each member's bytes sit in the archive: ``{name: (offset, size)}``."""
    with tarfile.open(archive, "r:") as tar:
        return {info.name: (info.offset_data, info.size) for info in tar.getmembers()}


def flip_byte(archive: Path, out: Path, member: str, where: float = 0.5) -> Path:
    """Copy ``archive`` with one bit flipped inside ``member`` (tar headers untouched)."""
    offset, size = member_offsets(archive)[member]
    data = bytearray(archive.read_bytes())
    data[offset + int(size * where)] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def edit_manifest(archive: Path, out: Path, change: Callable[[dict[str, object]], None]) -> Path:
    """Rewrite the manifest (still canonical JSON) and keep the old signature."""
    members = read_members(archive)
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = canonical(manifest)
    return write_members(out, members)


def swap_member(archive: Path, donor: Path, out: Path, name: str) -> Path:
    members = read_members(archive)
    members[name] = read_members(donor)[name]
    return write_members(out, members)


def swap_and_rehash(archive: Path, donor: Path, out: Path) -> Path:
    """Swap in the donor's data.db and fix the manifest's hashes, without re-signing."""
    members = read_members(archive)
    donor_members = read_members(donor)
    members["data.db"] = donor_members["data.db"]
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["data.db"] = json.loads(donor_members["manifest.json"])["members"][
        "data.db"
    ]
    members["manifest.json"] = canonical(manifest)
    return write_members(out, members)


def truncate(archive: Path, out: Path, length: int) -> Path:
    out.write_bytes(archive.read_bytes()[:length])
    return out


def _set(key: str, value: object) -> Callable[[dict[str, object]], None]:
    return lambda manifest: manifest.__setitem__(key, value)


def _bump_seq(manifest: dict[str, object]) -> None:
    manifest["seq"] = int(str(manifest["seq"])) + 1


@dataclass(frozen=True)
class Case:
    build: Callable[[Archives, Path], Path]
    reasons: frozenset[str]
    trusted_key: bool = False  # check with vault A's public key instead of the archive's


def _last_byte_of_keys(a: Archives, out: Path) -> Path:
    offset, size = member_offsets(a.a1)["keys.db"]
    return truncate(a.a1, out, offset + size - 1)


def _sig_hex_flip(a: Archives, out: Path) -> Path:
    members = read_members(a.a1)
    sig = bytearray(members["manifest.sig"])
    sig[10] = ord("0") if sig[10] != ord("0") else ord("1")  # still hex, another signature
    members["manifest.sig"] = bytes(sig)
    return write_members(out, members)


def _not_a_tar(a: Archives, out: Path) -> Path:
    out.write_bytes(b"shredvault backup? no. " * 100)
    return out


def _drop_keys(a: Archives, out: Path) -> Path:
    members = read_members(a.a1)
    del members["keys.db"]
    return write_members(out, members)


MALFORMED = frozenset({"malformed"})
MODIFIED = frozenset({"modified"})
BAD_SIGNATURE = frozenset({"bad signature"})
WRONG_KEY = frozenset({"wrong key"})

CASES: dict[str, Case] = {
    "empty file": Case(lambda a, out: truncate(a.a1, out, 0), MALFORMED),
    "not a tar archive": Case(_not_a_tar, MALFORMED),
    "truncated inside the manifest": Case(lambda a, out: truncate(a.a1, out, 700), MALFORMED),
    "truncated to half": Case(
        lambda a, out: truncate(a.a1, out, a.a1.stat().st_size // 2), MALFORMED
    ),
    "truncated by the last byte of keys.db": Case(_last_byte_of_keys, MALFORMED),
    "keys.db missing": Case(_drop_keys, MALFORMED),
    "flipped byte in data.db": Case(lambda a, out: flip_byte(a.a1, out, "data.db"), MODIFIED),
    "flipped byte at the end of data.db": Case(
        lambda a, out: flip_byte(a.a1, out, "data.db", 0.999), MODIFIED
    ),
    "flipped byte in keys.db": Case(lambda a, out: flip_byte(a.a1, out, "keys.db"), MODIFIED),
    "flipped byte in manifest.json": Case(
        # Lands in a member hash: still canonical JSON, and that member no longer matches.
        lambda a, out: flip_byte(a.a1, out, "manifest.json"),
        MALFORMED | BAD_SIGNATURE | MODIFIED,
    ),
    "flipped byte at the start of manifest.json": Case(
        lambda a, out: flip_byte(a.a1, out, "manifest.json", 0.0), MALFORMED
    ),
    "flipped byte in manifest.sig": Case(
        lambda a, out: flip_byte(a.a1, out, "manifest.sig"), MALFORMED | BAD_SIGNATURE
    ),
    "another signature in manifest.sig": Case(_sig_hex_flip, BAD_SIGNATURE),
    "data.db from a later backup of the same vault": Case(
        lambda a, out: swap_member(a.a1, a.a2, out, "data.db"), MODIFIED
    ),
    "data.db from another vault": Case(
        lambda a, out: swap_member(a.a1, a.b1, out, "data.db"), MODIFIED
    ),
    "keys.db from another vault": Case(
        lambda a, out: swap_member(a.a1, a.b1, out, "keys.db"), MODIFIED
    ),
    "data.db swapped and the manifest re-hashed": Case(
        lambda a, out: swap_and_rehash(a.a1, a.a2, out), BAD_SIGNATURE
    ),
    "manifest and signature of another backup": Case(
        lambda a, out: swap_member(
            swap_member(a.a1, a.a2, out, "manifest.json"), a.a2, out, "manifest.sig"
        ),
        MODIFIED,
    ),
    "manifest seq edited": Case(lambda a, out: edit_manifest(a.a1, out, _bump_seq), BAD_SIGNATURE),
    "manifest expiry edited": Case(
        lambda a, out: edit_manifest(a.a1, out, _set("expires", "2099-01-01T00:00:00.000000Z")),
        BAD_SIGNATURE,
    ),
    "manifest vault edited": Case(
        lambda a, out: edit_manifest(a.a1, out, _set("vault", "vlt_" + "a" * 26)), BAD_SIGNATURE
    ),
    "another vault's archive under this vault's key": Case(
        # Its keystore names its own key, not the trusted one (docs/backup.md).
        lambda a, out: truncate(a.b1, out, a.b1.stat().st_size),
        WRONG_KEY,
        trusted_key=True,
    ),
}


@pytest.fixture(params=sorted(CASES))
def damaged(
    archives: Archives, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, Case]:
    case = CASES[request.param]
    return case.build(archives, tmp_path / "damaged.tar"), case


# -- the matrix --------------------------------------------------------------------------------


def test_verify_reports_the_damage_with_a_reason(
    archives: Archives, damaged: tuple[Path, Case]
) -> None:
    path, case = damaged
    key = archives.a_public_key if case.trusted_key else None
    report = verify_backup(path, public_key=key)
    assert not report.ok
    assert report.reason in case.reasons, report.message
    assert report.message


def test_restore_refuses_the_damaged_archive_and_leaves_nothing_usable(
    archives: Archives, damaged: tuple[Path, Case], tmp_path: Path
) -> None:
    path, case = damaged
    key = archives.a_public_key if case.trusted_key else None
    target = tmp_path / "restored"
    with pytest.raises(VerificationError) as caught:
        restore_backup(
            path,
            target,
            keyfile=archives.keyfile,
            accept_unreplayed_shreds=True,
            public_key=key,
        )
    assert caught.value.reason in case.reasons
    left = {p.name for p in target.iterdir()} if target.exists() else set()
    assert left <= {RESTORE_MARKER}, left
    with pytest.raises(StorageError):
        Vault.open(target, keyfile=archives.keyfile).close()


# -- whole archives ----------------------------------------------------------------------------


def test_a_whole_archive_is_not_verified_without_a_trusted_key(archives: Archives) -> None:
    report = verify_backup(archives.a1)
    assert (report.ok, report.reason, report.trust) == (False, "no trusted key", None)
    assert report.manifest is not None and report.manifest["type"] == "backup"


def test_a_whole_archive_verifies_with_its_own_key_and_says_self_asserted(
    archives: Archives,
) -> None:
    report = verify_backup(archives.a1, trust_embedded_key=True)
    assert report.ok, report.message
    assert report.reason is None and report.trust == "self-asserted"
    assert "key inside the archive" in report.message


def test_a_whole_archive_verifies_with_the_vaults_public_key(archives: Archives) -> None:
    report = verify_backup(archives.a2, public_key=archives.a_public_key)
    assert report.ok, report.message
    assert "key inside" not in report.message


def test_each_backup_snapshots_the_log_where_it_was_taken(archives: Archives) -> None:
    first = verify_backup(archives.a1).manifest
    second = verify_backup(archives.a2).manifest
    assert first is not None and second is not None
    assert first["vault"] == second["vault"]
    assert first["seq"] < second["seq"]
    assert first["backup"] != second["backup"]


def test_a_rebuilt_archive_with_the_same_bytes_still_verifies(
    archives: Archives, tmp_path: Path
) -> None:
    """The matrix's tar rewriting alone changes nothing a verifier checks."""
    rebuilt = write_members(tmp_path / "rebuilt.tar", read_members(archives.a1))
    assert verify_backup(rebuilt, public_key=archives.a_public_key).ok


def test_verifying_leaves_the_archive_unchanged(archives: Archives) -> None:
    before = archives.a1.read_bytes()
    assert verify_backup(archives.a1, public_key=archives.a_public_key).ok
    assert archives.a1.read_bytes() == before
