"""Faults of the machine (issue 18 item 7): a full disk and a read-only disk while
writing records, the log, the keystore, a receipt, an archive or an export end in a
typed error (DiskFaultError, a StorageError: exit 1) with nothing half-written, and
what the vault can read without writing it still reads.

The disks are real: a size-limited tmpfs mounted for the test (remounted read-only
for the read-only cases). Where mounting is not permitted the tests skip."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_process import Shell, make_shell

from shredvault.keys import generate_keyfile
from shredvault.keys.files import PARTIAL_SUFFIX
from shredvault.vault import DiskFaultError, StorageError, Vault

FIELDS = {"name": "Ilse Vögel", "phone": "+49 30 1234567"}


def _mount(where: Path, options: str) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs at a fresh directory, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        mounted = _mount(where, "size=8m,mode=0700")
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("mounting a size-limited tmpfs is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses (ENOSPC); returns it."""
    filler = disk / "filler"
    # Unbuffered: a buffered file would keep the bytes that did not fit and raise
    # ENOSPC again when closed.
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.rglob("*") if p.name.endswith(PARTIAL_SUFFIX))


def entries(sh: Shell) -> int:
    done = sh("audit", "verify", "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["entries"])


@pytest.fixture
def disk_vault(small_disk: Path, tmp_path: Path) -> tuple[Shell, Path, str, str]:
    """A keyfile vault on the small disk (the keyfile off it) with one record."""
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = small_disk / "vault"
    sh = make_shell(SHREDVAULT_KEYFILE=str(keyfile))
    assert sh("init", str(root)).returncode == 0
    sh = make_shell(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    declared = sh("kind", "declare", "profile", "--fields", "name,phone", "--purposes", "service")
    assert declared.returncode == 0, declared.stderr
    customer = sh("customer", "add").stdout.strip()
    put = sh("record", "put", customer, "profile", "-", "--purpose", "service",
             input=json.dumps(FIELDS))  # fmt: skip
    assert put.returncode == 0, put.stderr
    return sh, keyfile, customer, put.stdout.strip()


def record(sh: Shell, customer: str, record_id: str) -> dict[str, object]:
    got = sh("record", "get", customer, record_id, "--purpose", "service", "--json")
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout)["fields"])


def assert_refused(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert FIELDS["name"] not in done.stderr + done.stdout


def test_a_full_disk_refuses_writes_to_records_log_and_keystore_and_loses_nothing(
    disk_vault: tuple[Shell, Path, str, str], small_disk: Path
) -> None:
    sh, _keyfile, customer, record_id = disk_vault
    before = entries(sh)
    filler = fill(small_disk)

    # A record (data store + log), a customer (keystore DEK + data store + log), a
    # shred (keystore + log + receipt): all refused, as a full disk, exit 1.
    put = sh("record", "put", customer, "profile", "-", "--purpose", "service",
             input=json.dumps({"name": "other"}))  # fmt: skip
    assert_refused(put, "the disk is full")
    assert_refused(sh("customer", "add"), "the disk is full")
    receipt = small_disk / "receipt.json"
    shred = sh("shred", customer, "--yes", "--reason", "test", "--receipt", str(receipt))
    assert_refused(shred, "the disk is full")
    assert not receipt.exists()
    assert leftovers(small_disk) == []

    filler.unlink()
    # Nothing of the refused writes was kept: the log is whole and exactly as long,
    # the customer is not shredded and its record reads back unchanged.
    assert entries(sh) == before
    shown = sh("customer", "show", customer, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "active"
    assert record(sh, customer, record_id) == FIELDS
    assert entries(sh) > before  # the reads since were logged, and the chain verifies
    # And the vault writes again once there is room.
    assert sh("customer", "add").returncode == 0


def test_a_read_only_disk_refuses_writes_and_loses_nothing(
    disk_vault: tuple[Shell, Path, str, str], small_disk: Path
) -> None:
    sh, _keyfile, customer, record_id = disk_vault
    before = entries(sh)
    _remount(small_disk, "ro")
    try:
        put = sh("record", "put", customer, "profile", "-", "--purpose", "service",
                 input=json.dumps({"name": "other"}))  # fmt: skip
        assert_refused(put, "the disk is read-only")
        assert_refused(sh("customer", "add"), "the disk is read-only")
        got = sh("record", "get", customer, record_id, "--purpose", "service")
        assert_refused(got, "the disk is read-only")  # a read is logged: fails closed
    finally:
        _remount(small_disk, "rw")
    assert entries(sh) == before
    assert record(sh, customer, record_id) == FIELDS


def test_files_written_to_a_full_disk_are_refused_whole(tmp_path: Path, small_disk: Path) -> None:
    """The vault on a disk with room; its receipt, archive and export go to a full one."""
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    assert make_shell(SHREDVAULT_KEYFILE=str(keyfile))("init", str(root)).returncode == 0
    sh = make_shell(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    declared = sh("kind", "declare", "profile", "--fields", "name", "--purposes", "service")
    assert declared.returncode == 0, declared.stderr
    customer = sh("customer", "add").stdout.strip()
    put = sh("record", "put", customer, "profile", "-", "--purpose", "service",
             input=json.dumps({"name": FIELDS["name"]}))  # fmt: skip
    assert put.returncode == 0, put.stderr
    before = entries(sh)
    filler = fill(small_disk)

    report = small_disk / "report.md"
    assert_refused(sh("customer", "report", customer, "--out", str(report)), "the disk is full")
    assert not report.exists()
    archive = small_disk / "vault.svbk"
    assert_refused(sh("backup", "create", str(archive)), "the disk is full")
    export = small_disk / "log.jsonl"
    assert_refused(sh("audit", "export", "--out", str(export)), "the disk is full")
    assert not archive.exists() and not export.exists()
    assert leftovers(small_disk) == []
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == []
    assert entries(sh) >= before  # a refused backup may log its attempt, never a half
    assert sh("backup", "list").returncode == 0


def test_an_open_vault_keeps_serving_unlogged_reads_on_a_full_disk(
    small_disk: Path, keyfile: Path
) -> None:
    """In a long-lived process the keystore and data store are open: on a full disk
    writes fail closed (DiskFaultError), verification still reads, and after room is
    made the same vault carries on with nothing lost."""
    v = Vault.create(small_disk / "vault", keyfile=keyfile)
    try:
        v.declare_kind("profile", fields=["name", "phone"], purposes=["service"])
        admin = v.admin()
        customer = admin.add_customer()
        record_id = admin.put(customer, "profile", FIELDS, purpose="service")
        head = v.head
        filler = fill(small_disk)

        with pytest.raises(DiskFaultError) as caught:
            admin.put(customer, "profile", {"name": "other"}, purpose="service")
        assert caught.value.fault == "full" and isinstance(caught.value, StorageError)
        assert FIELDS["name"] not in str(caught.value)
        with pytest.raises(DiskFaultError):
            admin.add_customer()
        with pytest.raises(DiskFaultError):
            admin.get(customer, record_id, purpose="service")  # logged: fails closed
        report = v.verify_log()
        assert report.ok and report.last_seq == head.seq
        assert v.head == head

        filler.unlink()
        assert admin.get(customer, record_id, purpose="service").fields == FIELDS
        assert v.verify_log().ok
    finally:
        v.close()
    reopened = Vault.open(small_disk / "vault", keyfile=keyfile)
    try:
        assert reopened.verify_log().ok
        got = reopened.admin().get(customer, record_id, purpose="service")
        assert got.fields == FIELDS
    finally:
        reopened.close()
    assert leftovers(small_disk) == []


def test_a_receipt_the_full_disk_refuses_is_printed_instead_and_verifies(
    tmp_path: Path, small_disk: Path
) -> None:
    """A shred cannot be undone: when the disk refuses its receipt the shred stands, the
    receipt file is not half-written, and the receipt is printed on stdout (exit 1)."""
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    assert make_shell(SHREDVAULT_KEYFILE=str(keyfile))("init", str(root)).returncode == 0
    sh = make_shell(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    customer = sh("customer", "add").stdout.strip()
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(sh("audit", "pubkey").stdout)
    filler = fill(small_disk)

    receipt = small_disk / "receipt.json"
    shred = sh("shred", customer, "--yes", "--reason", "closed account", "--receipt", str(receipt))
    assert_refused(shred, "the disk is full")
    assert "shredded, but the receipt could not be written" in shred.stderr
    assert not receipt.exists() and leftovers(small_disk) == []
    filler.unlink()
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(json.loads(shred.stdout)[0]))
    checked = sh("receipt", "verify", str(saved), "--pubkey", str(pubkey))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shown = sh("customer", "show", customer, "--json")
    assert json.loads(shown.stdout)["state"] == "shredded"
    entries(sh)  # the log verifies
