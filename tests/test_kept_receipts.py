"""Receipts recovered after a crash are kept (issue 21 item 5): a shred killed after it
committed is finished by the next open, whose receipt stays in the keystore even if
that opener never reads ``recovered_receipts``, until ``collect_receipts`` (or any CLI
command that unlocks the vault) writes it out. Real crashes in a subprocess."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import StorageError, Vault, load_receipt, verify_receipt

from clirun import make_run


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A vault whose shred of one customer was killed after it committed (made once;
    each test works on a copy)."""
    base = tmp_path_factory.mktemp("crashed")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    with Vault.create(base / "vault", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        cid = v.admin().add_customer(ref="crm-1")
        v.admin().put(cid, "profile", {"name": "Wang Fang"}, purpose="service")
    code = (
        "from shredvault import Vault\n"
        f"v = Vault.open({str(base / 'vault')!r}, keyfile={str(keyfile)!r})\n"
        f"v.admin().shred({cid!r}, reason='erasure request')\n"
    )
    env = {**os.environ, "SHREDVAULT_CRASH_AT": "shred:after-finish"}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == 97
    return base / "vault", keyfile, cid


def _crashed_shred(tmp_path: Path, keyfile: Path, crashed: tuple[Path, Path, str]) -> str:
    source, source_key, cid = crashed
    shutil.copytree(source, tmp_path / "vault")
    shutil.copyfile(source_key, keyfile)
    return cid


def test_a_receipt_the_first_opener_ignores_is_kept_until_collected(
    tmp_path: Path, keyfile: Path, crashed: tuple[Path, Path, str]
) -> None:
    cid = _crashed_shred(tmp_path, keyfile, crashed)
    with Vault.open(tmp_path / "vault", keyfile=keyfile):
        pass  # finishes the shred, never reads recovered_receipts
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        assert v.recovered_receipts == []  # nothing new was recovered by this open
        assert [r.customer for r in v.kept_receipts()] == [cid]
        (path,) = v.collect_receipts(tmp_path / "out")
        assert path == tmp_path / "out" / f"{cid}.json"
        assert (path.stat().st_mode & 0o777) == 0o600
        assert verify_receipt(load_receipt(path), public_key=v.public_key).ok
        assert v.kept_receipts() == []
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        assert v.kept_receipts() == []
    # collected means gone from the keystore's files, not only from its rows
    salt = load_receipt(path)["salt"]
    for name in ("keys.db", "keys.db-wal"):
        file = tmp_path / "vault" / name
        assert not file.exists() or bytes.fromhex(salt) not in file.read_bytes()


def test_a_failed_write_keeps_the_receipt(
    tmp_path: Path, keyfile: Path, crashed: tuple[Path, Path, str]
) -> None:
    cid = _crashed_shred(tmp_path, keyfile, crashed)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{cid}.json").write_text("someone else's file\n")
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        with pytest.raises(FileExistsError):
            v.collect_receipts(out)
        assert [r.customer for r in v.kept_receipts()] == [cid]
    assert (out / f"{cid}.json").read_text() == "someone else's file\n"


def test_any_cli_command_writes_out_kept_receipts(
    tmp_path: Path, keyfile: Path, crashed: tuple[Path, Path, str]
) -> None:
    cid = _crashed_shred(tmp_path, keyfile, crashed)
    with Vault.open(tmp_path / "vault", keyfile=keyfile):
        pass
    run = make_run(tmp_path / "vault", keyfile)
    result = run("customer", "list", "--json")
    assert result.exit_code == 0, result.output
    saved = tmp_path / "vault" / "recovered-receipts" / f"{cid}.json"
    assert load_receipt(saved)["customer"] == cid
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        assert v.kept_receipts() == []


def test_hostile_kept_receipts_are_a_typed_error(tmp_path: Path, keyfile: Path) -> None:
    Vault.create(tmp_path / "vault", keyfile=keyfile).close()
    conn = sqlite3.connect(tmp_path / "vault" / "keys.db")
    with conn:
        conn.execute(
            "INSERT INTO meta (k, v) VALUES ('recovered_receipts', ?)",
            ('[{"type": "shredvault-erasure-receipt", "customer": "../../etc/x"}]',),
        )
    conn.close()
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        with pytest.raises(StorageError, match="kept"):
            v.kept_receipts()
        with pytest.raises(StorageError, match="kept"):
            v.collect_receipts(tmp_path / "out")
        assert v.verify_log().ok
    assert not (tmp_path / "out").exists()
    run = make_run(tmp_path / "vault", keyfile)
    result = run("customer", "list", "--json")
    assert result.exit_code == 0  # the command runs; the warning says why nothing was saved
    assert "could not be saved" in result.stderr
