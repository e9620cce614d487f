"""OS file locks (vault/locks.py): exclusive, bounded wait then VaultBusyError, released
on leaving the block and by the kernel when the holder dies; without any lock primitive
importing still works and taking a lock raises StorageError."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shredvault.vault import StorageError, VaultBusyError
from shredvault.vault.locks import exclusive_lock

from processes import REPO

_HOLD = r"""
import sys
from pathlib import Path
from shredvault.vault.locks import exclusive_lock

with exclusive_lock(Path(sys.argv[1]), timeout=5, holder="holding"):
    print("held", flush=True)
    sys.stdin.read()  # until the parent closes stdin, or kills us
"""


@pytest.fixture
def held_elsewhere(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on ``tmp_path / "test.lock"``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "test.lock")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)


def test_a_lock_held_by_another_process_gives_vault_busy_after_the_timeout(
    tmp_path: Path, held_elsewhere: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    busy = "another process has been testing for longer than 0.2s"
    with (
        pytest.raises(VaultBusyError, match=busy),
        exclusive_lock(tmp_path / "test.lock", timeout=0.2, holder="testing"),
    ):
        pytest.fail("took a lock another process holds")
    assert 0.2 <= time.monotonic() - started < 5


def test_the_kernel_releases_the_lock_when_its_holder_is_killed(
    tmp_path: Path, held_elsewhere: subprocess.Popen[str]
) -> None:
    held_elsewhere.send_signal(signal.SIGKILL)  # no finally, no close: only the kernel
    held_elsewhere.wait(10)
    with exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"):
        pass


def test_the_lock_is_exclusive_even_within_one_process(tmp_path: Path) -> None:
    with (
        exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"),
        pytest.raises(VaultBusyError),
        exclusive_lock(tmp_path / "test.lock", timeout=0, holder="testing"),
    ):
        pytest.fail("took a lock this process already holds")


def test_leaving_the_block_releases_the_lock(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"):
        pass
    with exclusive_lock(tmp_path / "test.lock", timeout=0, holder="testing"):
        pass


def test_an_error_in_the_block_releases_the_lock(tmp_path: Path) -> None:
    with (
        pytest.raises(KeyError),
        exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"),
    ):
        raise KeyError("boom")
    with exclusive_lock(tmp_path / "test.lock", timeout=0, holder="testing"):
        pass


def test_the_lock_file_is_made_owner_only(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "test.lock").st_mode) == 0o600


def test_a_lock_file_that_cannot_be_made_gives_storage_error(tmp_path: Path) -> None:
    with (
        pytest.raises(StorageError, match=r"cannot open the lock file test\.lock"),
        exclusive_lock(tmp_path / "missing" / "test.lock", timeout=0, holder="testing"),
    ):
        pytest.fail("locked a file in a folder that does not exist")


@pytest.mark.skipif(sys.platform == "win32", reason="blocks fcntl, which Windows never has")
def test_without_fcntl_taking_a_lock_gives_storage_error_and_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    with (
        pytest.raises(StorageError, match="no file locks"),
        exclusive_lock(tmp_path / "test.lock", timeout=5, holder="testing"),
    ):
        pytest.fail("locked without fcntl")
    assert not (tmp_path / "test.lock").exists()
