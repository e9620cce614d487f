"""``backup restore`` windows, ``backup forget``, ``-`` for stdin/stdout and progress
through the CLI (issue 17): a source other than the live vault is refused (exit 1)
unless --accept-unreplayed-window, which prints the window and makes `keys status`
show it; archives go through real pipes between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result

from shredvault.cli.meter import Phases
from shredvault.keys import generate_keyfile

from clirun import Run, make_run

PURPOSE = "service"
NO_VAULT = {"SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": None}


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def vault(tmp_path: Path) -> tuple[Path, Path, Run]:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    run = make_run(root, keyfile)
    ok(run("init", str(root)))
    ok(run("kind", "declare", "profile", "--fields", "name", "--purposes", PURPOSE))
    return root, keyfile, run


def _customer_with_record(run: Run, name: str) -> tuple[str, str]:
    customer = ok(run("customer", "add")).stdout.strip()
    record = ok(
        run("record", "put", customer, "profile", "--purpose", PURPOSE, "--field", f"name={name}")
    ).stdout.strip()
    return customer, record


def test_a_log_source_is_refused_without_accepting_its_window_then_named(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    _root, _keyfile, run = vault
    gone, gone_record = _customer_with_record(run, "Gone Later")
    ok(run("backup", "create", str(tmp_path / "t0.svb")))
    ok(run("audit", "export", "--out", str(tmp_path / "early.jsonl")))  # before the shred
    ok(run("shred", gone, "--reason", "erasure request", "--yes"))
    target = tmp_path / "restored"
    args = ["backup", "restore", str(tmp_path / "t0.svb"), "--to", str(target)]
    refused = run(*args, "--replay-log", str(tmp_path / "early.jsonl"))
    assert refused.exit_code == 1
    assert "--accept-unreplayed-window" in refused.stderr and "last signed head" in refused.stderr
    assert not target.exists()
    accepted = ok(
        run(
            *args,
            "--replay-log",
            str(tmp_path / "early.jsonl"),
            "--accept-unreplayed-window",
            "--json",
        )
    )
    window = json.loads(accepted.stdout)["unreplayed_window"]
    assert window is not None and "warning" in accepted.stderr
    assert f"seq {window['from_seq']}" in accepted.stderr
    # The shred fell in the accepted window: the customer is back, and the vault says so.
    served = run(
        "record", "get", gone, gone_record, "--purpose", PURPOSE, SHREDVAULT_VAULT=str(target)
    )
    assert served.exit_code == 0 and "Gone Later" in served.stdout
    status = ok(run("keys", "status", SHREDVAULT_VAULT=str(target)))
    assert "restored with unknown shreds" in status.stdout
    assert f"seq {window['from_seq']}" in status.stdout
    status_json = json.loads(
        ok(run("keys", "status", "--json", SHREDVAULT_VAULT=str(target))).stdout
    )
    assert status_json["unreplayed_window"] == window
    live = json.loads(ok(run("keys", "status", "--json")).stdout)
    assert live["unreplayed_window"] is None


@pytest.mark.parametrize("source", ["--replay-receipts", None])
def test_receipts_or_no_source_are_refused_without_acceptance(
    vault: tuple[Path, Path, Run], tmp_path: Path, source: str | None
) -> None:
    _root, _keyfile, run = vault
    ok(run("backup", "create", str(tmp_path / "t0.svb")))
    (tmp_path / "receipts").mkdir()
    extra = [source, str(tmp_path / "receipts")] if source else []
    target = tmp_path / "restored"
    refused = run("backup", "restore", str(tmp_path / "t0.svb"), "--to", str(target), *extra)
    assert refused.exit_code == 1 and "--accept-unreplayed-window" in refused.stderr
    assert not target.exists()


def test_the_live_vault_needs_no_acceptance_and_refuses_one(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    root, _keyfile, run = vault
    ok(run("backup", "create", str(tmp_path / "t0.svb")))
    args = ["backup", "restore", str(tmp_path / "t0.svb"), "--replay-from", str(root)]
    both = run(*args, "--to", str(tmp_path / "r1"), "--accept-unreplayed-window")
    assert both.exit_code == 2 and "leaves no window" in both.stderr
    done = ok(run(*args, "--to", str(tmp_path / "r2")))
    assert "unreplayed window" in done.stdout and "warning" not in done.stderr


def test_backup_forget_retires_a_backup_from_the_clock(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    _root, _keyfile, run = vault
    gone, _record = _customer_with_record(run, "Gone")
    backup = json.loads(ok(run("backup", "create", str(tmp_path / "t0.svb"), "--json")).stdout)
    ok(run("shred", gone, "--reason", "erasure request", "--yes"))
    assert json.loads(ok(run("keys", "status", "--json")).stdout)["backup_key_copies"] == 1
    forgotten = ok(run("backup", "forget", backup["id"]))
    assert f"backup {backup['id']} forgotten" in forgotten.stdout
    (listed,) = json.loads(ok(run("backup", "list", "--json")).stdout)
    assert listed["state"] == "forgotten"
    listing = ok(run("backup", "list"))
    assert "forgotten" in listing.stdout and str(tmp_path / "t0.svb") in listing.stdout
    assert "still hold keys" not in listing.stderr
    assert json.loads(ok(run("keys", "status", "--json")).stdout)["backup_key_copies"] == 0
    again = run("backup", "forget", backup["id"])
    assert again.exit_code == 1 and "already forgotten" in again.stderr
    unknown = run("backup", "forget", "bak_" + "b" * 26)
    assert unknown.exit_code == 4


def test_verify_and_restore_read_the_archive_from_stdin(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    root, _keyfile, run = vault
    kept, kept_record = _customer_with_record(run, "Kept Through A Pipe")
    piped = ok(run("backup", "create", "-")).stdout_bytes
    verified = ok(
        run("backup", "verify", "-", "--trust-embedded-key", "--json", input=piped, **NO_VAULT)
    )  # type: ignore[arg-type]
    assert json.loads(verified.stdout)["ok"] is True
    target = tmp_path / "restored"
    ok(
        run(
            "backup",
            "restore",
            "-",
            "--to",
            str(target),
            "--replay-from",
            str(root),
            input=piped,  # type: ignore[arg-type]
        )
    )
    got = ok(
        run("record", "get", kept, kept_record, "--purpose", PURPOSE, SHREDVAULT_VAULT=str(target))
    )
    assert "Kept Through A Pipe" in got.stdout
    damaged = bytearray(piped)
    damaged[len(damaged) // 2] ^= 1
    bad = run("backup", "verify", "-", input=bytes(damaged), **NO_VAULT)  # type: ignore[arg-type]
    assert bad.exit_code == 5


def _console() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


def test_an_archive_goes_through_a_real_pipe_between_processes(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    """`shredvault backup create - | shredvault backup verify -`, as with age or gpg in
    between: no file is written by create, and verify reads the stream."""
    root, keyfile, _run = vault
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env |= {"SHREDVAULT_VAULT": str(root), "SHREDVAULT_KEYFILE": str(keyfile)}
    before = sorted(p.name for p in tmp_path.iterdir())
    create = subprocess.Popen(
        [*_console(), "backup", "create", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    verify = subprocess.run(
        [*_console(), "backup", "verify", "-", "--trust-embedded-key", "--json"],
        stdin=create.stdout,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert create.stdout is not None
    create.stdout.close()
    _out, err = create.communicate(timeout=120)
    assert create.returncode == 0, err
    assert b"written to stdout" in err
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == before


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phases_draw_one_bar_per_phase_with_its_total(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    units = {"verifying": ("verifying the archive", "bytes"), "replaying": ("replaying", "shreds")}
    with Phases(units, clock=clock) as phases:
        phases("verifying", 1000, 4000)
        clock.now += 2
        phases("verifying", 3000, 4000)
        phases("replaying", 1, 2)
        clock.now += 2
        phases("replaying", 1, 2)
    err = capsys.readouterr().err
    assert "verifying the archive" in err and "replaying" in err
    assert phases.done == {"verifying": (4000, 4000), "replaying": (2, 2)}


def _on_a_terminal(args: list[str], root: Path, keyfile: Path, stream: str) -> tuple[int, str]:
    """Run the console script with stdin or stdout on a pseudo-terminal."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env |= {"SHREDVAULT_VAULT": str(root), "SHREDVAULT_KEYFILE": str(keyfile)}
    leader, follower = pty.openpty()
    try:
        where = {"stdin": follower} if stream == "stdin" else {"stdout": follower}
        done = subprocess.run(
            [*_console(), *args],
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            check=False,
            **where,  # type: ignore[arg-type]
        )
    finally:
        os.close(follower)
        os.close(leader)
    return done.returncode, done.stderr.decode()


def test_an_archive_is_never_written_to_or_read_from_a_terminal(
    vault: tuple[Path, Path, Run], tmp_path: Path
) -> None:
    root, keyfile, run = vault
    code, err = _on_a_terminal(["backup", "create", "-"], root, keyfile, "stdout")
    assert code == 2 and "stdout is a terminal" in err
    assert json.loads(ok(run("backup", "list", "--json")).stdout) == []  # nothing recorded
    code, err = _on_a_terminal(["backup", "verify", "-"], root, keyfile, "stdin")
    assert code == 2 and "stdin is a terminal" in err
    target = tmp_path / "restored"
    args = ["backup", "restore", "-", "--to", str(target), "--replay-from", str(root)]
    code, err = _on_a_terminal(args, root, keyfile, "stdin")
    assert code == 2 and "stdin is a terminal" in err
    assert not target.exists()
