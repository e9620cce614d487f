"""``backup create|list|verify|restore`` through the CLI (DESIGN §7a, §9): the archive
is written and listed with its key-copy clock, verifies offline with no vault or
secret (0) and fails when damaged or foreign (5), and a restore replays later shreds
(the shredded customer then reads as shredded, exit 4), refuses without a source (1),
and fails on a wrong keyfile (6) or a damaged archive (5)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result

from shredvault.keys import generate_keyfile
from shredvault.vault import Vault

from clirun import Run, make_run

PURPOSE = "service"
GONE_NAME = "Ingrid Halvorsen"
KEPT_NAME = "Tomás Ferreira"
REASON = "erasure request #2207"
NO_VAULT = {"SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": None}


@dataclass(frozen=True)
class Setup:
    """A keyfile vault (made by ``init``) with two customers, one record each."""

    root: Path
    keyfile: Path
    gone: str
    gone_record: str
    kept: str
    kept_record: str


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("backup-cli")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    root = base / "vault"
    run = make_run(root, keyfile)
    ok(run("init", str(root)))
    ok(run("kind", "declare", "profile", "--fields", "name", "--purposes", PURPOSE))
    ids = []
    for name in (GONE_NAME, KEPT_NAME):
        customer = ok(run("customer", "add")).stdout.strip()
        put = ok(
            run(
                "record",
                "put",
                customer,
                "profile",
                "--purpose",
                PURPOSE,
                "--field",
                f"name={name}",
            )
        )
        ids += [customer, put.stdout.strip()]
    return Setup(root, keyfile, *ids)


@pytest.fixture
def setup(template: Setup, tmp_path: Path) -> Setup:
    """A private copy of the template vault (same keyfile)."""
    root = tmp_path / "vault"
    shutil.copytree(template.root, root)
    return Setup(
        root,
        template.keyfile,
        template.gone,
        template.gone_record,
        template.kept,
        template.kept_record,
    )


@pytest.fixture
def run(setup: Setup) -> Run:
    return make_run(setup.root, setup.keyfile)


def get(run: Run, vault: Path, customer: str, record: str, **env: str | None) -> Result:
    """``record get`` in the vault at ``vault`` (a restored one, say)."""
    return run(
        "record", "get", customer, record, "--purpose", PURPOSE, SHREDVAULT_VAULT=str(vault), **env
    )


def restore(run: Run, archive: Path, target: Path, *options: str, **env: str | None) -> Result:
    return run("backup", "restore", str(archive), "--to", str(target), *options, **env)


def backed_up_then_shredded(run: Run, setup: Setup, tmp_path: Path) -> Path:
    """Back up at t0, then shred the first customer (receipt into tmp_path/receipts)."""
    archive = tmp_path / "t0.tar"
    ok(run("backup", "create", str(archive)))
    (tmp_path / "receipts").mkdir()
    receipt = str(tmp_path / "receipts" / f"{setup.gone}.json")
    ok(run("shred", setup.gone, "--reason", REASON, "--yes", "--receipt", receipt))
    return archive


def flip_member_byte(archive: Path, out: Path, member: str) -> Path:
    with tarfile.open(archive, "r:") as tar:
        info = tar.getmember(member)
    data = bytearray(archive.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


# -- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ([], ["create", "list", "forget", "verify", "restore"]),
        (["create"], ["OUT", "--expires", "--json", "stdout"]),
        (["list"], ["SHREDDED SINCE", "STATE", "PATH", "--json"]),
        (["forget"], ["ID", "destroyed", "--json"]),
        (["verify"], ["ARCHIVE", "--pubkey", "--json"]),
        (
            ["restore"],
            [
                "--to",
                "--to-data-url",
                "--replay-from",
                "--replay-data-url",
                "--replay-log",
                "--replay-receipts",
                "--accept-unreplayed-window",
                "--pubkey",
                "--json",
            ],
        ),
    ],
)
def test_every_backup_command_has_help(command: list[str], mentions: list[str]) -> None:
    result = ok(make_run(Path("unused"), None)("backup", *command, "--help"))
    for text in mentions:
        assert text in result.stdout


# -- create and list ---------------------------------------------------------------------------


def test_backup_create_prints_id_seq_and_size_and_writes_an_owner_only_file(
    run: Run, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar"
    result = ok(run("backup", "create", str(archive)))
    assert result.stdout.startswith("backup bak_")
    assert "log seq" in result.stdout
    assert f"{archive.stat().st_size:,} bytes" in result.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert "destroy it" in result.stderr  # the archive holds every customer's keys


def test_backup_create_json_describes_the_archive(run: Run, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar"
    summary = json.loads(
        ok(run("backup", "create", str(archive), "--expires", "30", "--json")).stdout
    )
    assert summary["id"].startswith("bak_")
    assert summary["size"] == archive.stat().st_size
    assert summary["path"] == str(archive)
    assert summary["seq"] > 0 and len(summary["head"]) == 64
    assert summary["expires"] > summary["created"]


def test_backup_create_refuses_to_overwrite_a_file(run: Run, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar"
    archive.write_bytes(b"precious")
    result = run("backup", "create", str(archive))
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert archive.read_bytes() == b"precious"


def test_backup_create_to_dash_writes_the_archive_to_stdout_not_a_file_named_dash(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = ok(run("backup", "create", "-"))
    assert not (tmp_path / "-").exists()
    assert "written to stdout" in result.stderr  # the summary goes to stderr
    piped = tmp_path / "piped.tar"
    piped.write_bytes(result.stdout_bytes)
    assert f"{len(result.stdout_bytes):,} bytes" in result.stderr
    report = json.loads(
        ok(run("backup", "verify", str(piped), "--trust-embedded-key", "--json", **NO_VAULT)).stdout
    )
    assert report["ok"] is True
    (listed,) = json.loads(ok(run("backup", "list", "--json")).stdout)
    assert (listed["id"], listed["path"]) == (report["manifest"]["backup"], "-")


def test_backup_list_shows_the_key_copy_clock(run: Run, setup: Setup, tmp_path: Path) -> None:
    backed_up_then_shredded(run, setup, tmp_path)
    ok(run("backup", "create", str(tmp_path / "t1.tar"), "--expires", "7"))
    (first, second) = json.loads(ok(run("backup", "list", "--json")).stdout)
    assert (first["shredded_since"], first["expires"], first["expired"]) == (1, None, False)
    assert (second["shredded_since"], second["expired"]) == (0, False)
    assert (first["state"], first["path"]) == ("held", str(tmp_path / "t0.tar"))
    assert (second["state"], second["path"]) == ("held", str(tmp_path / "t1.tar"))
    text = ok(run("backup", "list"))
    assert "SHREDDED SINCE" in text.stdout
    assert first["id"] in text.stdout and second["id"] in text.stdout
    assert str(tmp_path / "t0.tar") in text.stdout
    assert "still hold keys" in text.stderr


def test_backup_list_without_backups_says_so(run: Run) -> None:
    assert ok(run("backup", "list")).stdout.strip() == "no backups recorded"
    assert json.loads(ok(run("backup", "list", "--json")).stdout) == []


# -- verify --------------------------------------------------------------------------------------


def test_backup_verify_needs_no_vault_and_no_secret(run: Run, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar"
    ok(run("backup", "create", str(archive)))
    unpinned = run("backup", "verify", str(archive), **NO_VAULT)
    assert unpinned.exit_code == 7, unpinned.output  # not verified: no trusted key
    assert unpinned.stdout.startswith(f"NOT VERIFIED: backup archive {archive}")
    assert "--pubkey" in unpinned.stderr and "valid" not in unpinned.stdout
    result = ok(run("backup", "verify", str(archive), "--trust-embedded-key", **NO_VAULT))
    assert result.stdout.startswith(f"self-asserted: backup archive {archive}")
    assert "--pubkey" in result.stderr  # says it trusted the archive's own key


def test_backup_verify_with_the_vaults_public_key(run: Run, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar"
    ok(run("backup", "create", str(archive)))
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(ok(run("audit", "pubkey")).stdout)
    report = json.loads(
        ok(
            run("backup", "verify", str(archive), "--pubkey", str(pubkey), "--json", **NO_VAULT)
        ).stdout
    )
    assert report["ok"] is True and report["public_key_source"] == "pubkey"
    assert report["manifest"]["backup"].startswith("bak_")


def test_backup_verify_exits_5_on_a_damaged_archive(run: Run, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar"
    ok(run("backup", "create", str(archive)))
    damaged = flip_member_byte(archive, tmp_path / "damaged.tar", "data.db")
    result = run("backup", "verify", str(damaged), **NO_VAULT)
    assert result.exit_code == 5
    assert result.stdout.startswith("INVALID")
    assert "modified" in result.stdout and result.stderr.startswith("error:")
    report = json.loads(run("backup", "verify", str(damaged), "--json", **NO_VAULT).stdout)
    assert report["ok"] is False and report["reason"] == "modified"


def test_backup_verify_exits_5_for_another_vaults_archive_under_this_vaults_key(
    run: Run, tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "other", keyfile=keyfile) as other:
        other.admin().backup(str(tmp_path / "other.tar"))
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(ok(run("audit", "pubkey")).stdout)
    result = run(
        "backup", "verify", str(tmp_path / "other.tar"), "--pubkey", str(pubkey), **NO_VAULT
    )
    assert result.exit_code == 5
    assert "wrong key" in result.stdout


# -- restore -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["--replay-from", "--replay-log", "--replay-receipts"])
def test_backup_restore_replays_the_later_shred(
    run: Run, setup: Setup, tmp_path: Path, source: str
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    given = {
        "--replay-from": str(setup.root),
        "--replay-log": str(tmp_path / "log.jsonl"),
        "--replay-receipts": str(tmp_path / "receipts"),
    }[source]
    ok(run("audit", "export", "--out", str(tmp_path / "log.jsonl")))
    target = tmp_path / "restored"
    # Only the live vault leaves no window (test_backup_restore_refuses_a_window_...).
    accept = [] if source == "--replay-from" else ["--accept-unreplayed-window"]
    result = ok(restore(run, archive, target, source, given, *accept))
    assert f"shredded again: {setup.gone}" in result.stdout
    assert get(run, target, setup.gone, setup.gone_record).exit_code == 4
    kept = ok(get(run, target, setup.kept, setup.kept_record))
    assert KEPT_NAME in kept.stdout


def test_backup_restore_json_reports_the_replay(run: Run, setup: Setup, tmp_path: Path) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    target = tmp_path / "restored"
    result = ok(restore(run, archive, target, "--replay-from", str(setup.root), "--json"))
    summary = json.loads(result.stdout)
    assert summary["replayed"] == [setup.gone]
    assert summary["replayed_from"] == "live vault"
    assert summary["unreplayed_shreds_accepted"] is False
    assert summary["path"] == str(target) and summary["data"] == "sqlite"


def test_backup_restore_without_a_source_exits_1_and_creates_nothing(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    target = tmp_path / "restored"
    result = restore(run, archive, target)
    assert result.exit_code == 1
    assert "--accept-unreplayed-window" in result.stderr
    assert not target.exists()


def test_backup_restore_accepting_unreplayed_shreds_warns_and_resurrects(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    target = tmp_path / "restored"
    result = ok(restore(run, archive, target, "--accept-unreplayed-shreds"))
    assert "warning" in result.stderr and "readable again" in result.stderr
    assert GONE_NAME in ok(get(run, target, setup.gone, setup.gone_record)).stdout


def test_backup_restore_with_a_wrong_keyfile_exits_6(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    wrong = tmp_path / "wrong.key"
    generate_keyfile(wrong)
    target = tmp_path / "restored"
    result = restore(
        run, archive, target, "--replay-from", str(setup.root), SHREDVAULT_KEYFILE=str(wrong)
    )
    assert result.exit_code == 6
    assert "unfinished restore" in result.stderr  # and how to go on
    assert get(run, target, setup.kept, setup.kept_record).exit_code == 1  # it will not open


def test_backup_restore_of_a_damaged_archive_exits_5(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    damaged = flip_member_byte(archive, tmp_path / "damaged.tar", "keys.db")
    target = tmp_path / "restored"
    result = restore(run, damaged, target, "--replay-from", str(setup.root))
    assert result.exit_code == 5
    assert not (target / "keys.db").exists() and not (target / "data.db").exists()


def test_backup_restore_into_a_non_empty_directory_exits_1(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    result = restore(run, archive, setup.root, "--replay-from", str(setup.root))
    assert result.exit_code == 1
    assert "not empty" in result.stderr
    assert get(run, setup.root, setup.kept, setup.kept_record).exit_code == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--replay-from", "{vault}", "--replay-log", "{log}"],
        ["--replay-data-url", "postgresql+psycopg://u@h/db"],
        ["--replay-from", "{vault}", "--accept-unreplayed-shreds"],
        ["--accept-unreplayed-shreds", "--to-data-url", "not-a-url"],
    ],
    ids=["two sources", "data url without vault", "source and accept", "bad target url"],
)
def test_backup_restore_rejects_contradictory_options(
    run: Run, setup: Setup, tmp_path: Path, extra: list[str]
) -> None:
    archive = tmp_path / "backup.tar"
    ok(run("backup", "create", str(archive)))
    log = tmp_path / "log.jsonl"
    log.write_text("")
    args = [a.format(vault=setup.root, log=log) for a in extra]
    target = tmp_path / "restored"
    result = restore(run, archive, target, *args)
    assert result.exit_code == 2, result.output
    assert not target.exists()


def test_backup_restore_ignores_the_live_vaults_data_url(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    """SHREDVAULT_DATA_URL names the live vault's data; the target has --to-data-url."""
    archive = backed_up_then_shredded(run, setup, tmp_path)
    target = tmp_path / "restored"
    ok(
        restore(
            run,
            archive,
            target,
            "--replay-from",
            str(setup.root),
            SHREDVAULT_DATA_URL="postgresql+psycopg://nobody@127.0.0.1:1/nowhere",
        )
    )
    assert (target / "data.db").is_file()


def test_backup_restore_to_postgres(run: Run, setup: Setup, tmp_path: Path, pg_url: str) -> None:
    archive = backed_up_then_shredded(run, setup, tmp_path)
    target = tmp_path / "restored"
    ok(restore(run, archive, target, "--to-data-url", pg_url, "--replay-from", str(setup.root)))
    assert not (target / "data.db").exists()
    kept = ok(get(run, target, setup.kept, setup.kept_record, SHREDVAULT_DATA_URL=pg_url))
    assert KEPT_NAME in kept.stdout
    gone = get(run, target, setup.gone, setup.gone_record, SHREDVAULT_DATA_URL=pg_url)
    assert gone.exit_code == 4


# -- the installed console script --------------------------------------------------------------

PASSPHRASE = "quiet harbour 6620 lantern"


def console() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


def test_the_console_script_backs_up_verifies_and_restores(tmp_path: Path) -> None:
    """A passphrase vault in real processes: create, verify (0, no secret), restore with
    the wrong passphrase (6), with the right one (0), a damaged archive (5)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    root = tmp_path / "vault"

    def sh(*args: str, passphrase: str | None = PASSPHRASE) -> subprocess.CompletedProcess[str]:
        extra = {"SHREDVAULT_VAULT": str(root)}
        if passphrase is not None:
            extra["SHREDVAULT_PASSPHRASE"] = passphrase
        return subprocess.run(
            [*console(), *args],
            input="",
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
            check=False,
        )

    assert sh("init", str(root)).returncode == 0
    archive = tmp_path / "backup.tar"
    created = sh("backup", "create", str(archive), "--json")
    assert created.returncode == 0, created.stderr
    assert PASSPHRASE not in created.stdout + created.stderr
    verified = sh("backup", "verify", str(archive), "--trust-embedded-key", passphrase=None)
    assert verified.returncode == 0, verified.stderr
    wrong = sh(
        "backup",
        "restore",
        str(archive),
        "--to",
        str(tmp_path / "r1"),
        "--replay-from",
        str(root),
        passphrase="not it",
    )
    assert wrong.returncode == 6, wrong.stderr
    right = sh(
        "backup", "restore", str(archive), "--to", str(tmp_path / "r2"), "--replay-from", str(root)
    )
    assert right.returncode == 0, right.stderr
    damaged = flip_member_byte(archive, tmp_path / "damaged.tar", "data.db")
    assert sh("backup", "verify", str(damaged), passphrase=None).returncode == 5
