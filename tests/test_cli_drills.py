"""``backup drill`` and ``role review`` through the CLI (issue 23, items 4 and 5):
--json on stdout, one JSON error line on stderr and exit 5 from a real process for a
tampered archive, and the routine in ``keys status``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_cli_process import Shell, make_shell

from shredvault.keys import generate_keyfile

from clirun import make_run


class InProcess:
    """The CLI in this process, answering like a finished process (far cheaper)."""

    def __init__(self, root: Path, keyfile: Path) -> None:
        self.run = make_run(root, keyfile)

    def __call__(self, *args: str) -> Any:
        result = self.run(*args)
        return SimpleNamespace(
            returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr
        )


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Shell, Path]:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    sh = InProcess(root, keyfile)
    assert sh("init", str(root)).returncode == 0
    assert (
        sh("kind", "declare", "profile", "--fields", "name", "--purposes", "service").returncode
        == 0
    )
    customer = sh("customer", "add").stdout.strip()
    put = sh("record", "put", customer, "profile", "--purpose", "service", "--field", "name=Ada")
    assert put.returncode == 0, put.stderr
    made = sh("backup", "create", str(tmp_path / "nightly.tar"))
    assert made.returncode == 0, made.stderr
    return sh, tmp_path


def test_a_drill_prints_its_steps_as_json_and_keys_status_shows_it(
    shop: tuple[Shell, Path],
) -> None:
    sh, tmp_path = shop
    drilled = sh("backup", "drill", str(tmp_path / "nightly.tar"), "--sample", "5", "--json")
    assert drilled.returncode == 0, drilled.stderr
    report = json.loads(drilled.stdout)
    assert report["ok"] is True and report["copy_removed"] is True
    assert report["records_decrypted"] == 1 and report["decrypt_failures"] == 0
    assert set(report["ms"]) == {"verify_archive", "restore", "verify_log", "sample"} | {
        "shreds",
        "cleanup",
    }
    assert [p.name for p in tmp_path.iterdir() if ".drill-" in p.name] == []
    status = json.loads(sh("keys", "status", "--json").stdout)
    assert status["routine"]["drill"]["last"]["seq"] == report["seq"]
    assert status["routine"]["drill"]["overdue"] is False


def test_a_tampered_archive_exits_5_with_a_json_error_and_no_copy_left(
    shop: tuple[Shell, Path],
) -> None:
    sh, tmp_path = shop
    archive = tmp_path / "nightly.tar"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    process = make_shell(
        SHREDVAULT_KEYFILE=str(tmp_path / "vault.key"), SHREDVAULT_VAULT=str(tmp_path / "vault")
    )
    drilled = process("backup", "drill", str(archive), "--json")
    assert drilled.returncode == 5
    error = json.loads(drilled.stderr.strip().splitlines()[-1])
    assert "verification" in json.dumps(error)
    assert drilled.stdout == ""
    assert [p.name for p in tmp_path.iterdir() if ".drill-" in p.name] == []
    status = json.loads(sh("keys", "status", "--json").stdout)
    assert status["routine"]["drill"]["last"]["outcome"] == "error"
    assert any("failed" in v for v in status["routine"]["warnings"])
    assert sh("audit", "verify", "--json").returncode == 0


def test_role_review_lists_as_json_and_done_records_it(shop: tuple[Shell, Path]) -> None:
    sh, _tmp_path = shop
    added = sh("role", "add", "acquirer", "--actions", "read,list", "--kinds", "profile")
    assert added.returncode == 0, added.stderr
    assert sh("principal", "add", "acme", "--role", "acquirer").returncode == 0
    listed = sh("role", "review", "--json")
    assert listed.returncode == 0, listed.stderr
    review = json.loads(listed.stdout)
    assert [r["name"] for r in review["roles"]] == ["acquirer"]
    assert review["roles"][0]["principals"] == ["acme"]
    assert sh("role", "review", "--note", "x").returncode == 2  # --note goes with --done
    done = sh("role", "review", "--done", "--note", "acquirer kept until the handover", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["principals"] == 1
    again = json.loads(sh("role", "review", "--json").stdout)
    assert again["last_review"]["seq"] == json.loads(done.stdout)["seq"]
    assert sh("role", "review-interval", "30", "--json").returncode == 0
    status = json.loads(sh("keys", "status", "--json").stdout)
    assert status["routine"]["review"]["interval_days"] == 30
