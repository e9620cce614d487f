"""The installed ``shredvault`` console script as a real process: the demo, a
passphrase vault unlocked from SHREDVAULT_PASSPHRASE, and the exit codes (DESIGN §9)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shredvault.keys import generate_keyfile

PASSPHRASE = "plum tram velvet 7731"
NAME = "Huang Meiling 黄美玲"
PHONE = "+86 139 0000 2264"

Proc = subprocess.CompletedProcess[str]
Shell = Callable[..., Proc]


def command() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(extra)
    return env


def make_shell(**extra: str) -> Shell:
    def shell(*args: str, input: str | None = None, **more: str) -> Proc:
        return subprocess.run(
            [*command(), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=clean_env(**extra, **more),
            timeout=60,
            check=False,
        )

    return shell


@pytest.fixture(scope="module")
def pass_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A passphrase vault made by ``init`` with a profile, one customer and one record."""
    root = tmp_path_factory.mktemp("pass") / "vault"
    sh = make_shell(SHREDVAULT_PASSPHRASE=PASSPHRASE)
    created = sh("init", str(root), "--json")
    assert created.returncode == 0, created.stderr
    assert PASSPHRASE not in created.stdout + created.stderr
    sh = make_shell(SHREDVAULT_PASSPHRASE=PASSPHRASE, SHREDVAULT_VAULT=str(root))
    declared = sh("kind", "declare", "profile", "--fields", "name,phone", "--purposes", "service")
    assert declared.returncode == 0, declared.stderr
    customer = sh("customer", "add").stdout.strip()
    put = sh(
        "record", "put", customer, "profile", "-", "--purpose", "service",
        input=json.dumps({"name": NAME, "phone": PHONE}),
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    yield root, customer, put.stdout.strip()


@pytest.fixture(scope="module")
def key_vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[Shell, Path, str]:
    """A keyfile vault (fast to unlock) with a profile kind and one customer, and a
    shell that uses it. Tests must not change it (copy it first)."""
    base = tmp_path_factory.mktemp("key")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    root = base / "vault"
    sh = make_shell(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    assert sh("init", str(root)).returncode == 0
    assert (
        sh("kind", "declare", "profile", "--fields", "name", "--purposes", "service").returncode
        == 0
    )
    customer = sh("customer", "add").stdout.strip()
    return sh, root, customer


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    result = make_shell()("demo")
    assert result.returncode == 0, result.stderr
    assert "0 found" in result.stdout
    assert "verified the export offline" in result.stdout
    workdir = result.stdout.split("throw-away vault in ", 1)[1].split()[0]
    assert not Path(workdir).exists()


def test_demo_json_summarises_the_figures_and_keep_leaves_a_vault_that_opens(
    tmp_path: Path,
) -> None:
    result = make_shell(TMPDIR=str(tmp_path))("demo", "--keep", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["customers"]) == 3 and summary["records_read_back"] == 3
    assert summary["plaintext_scan"]["values_checked"] == 9
    assert summary["plaintext_scan"]["values_found"] == 0
    assert summary["plaintext_scan"]["clear_refs_found"] == 3
    assert summary["log"]["ok"] is True and summary["export"]["verified"] is True
    assert summary["log"]["last_checkpoint"] == summary["log"]["entries"]
    workdir = Path(summary["workdir"])
    assert workdir.is_relative_to(tmp_path)
    listed = make_shell()(
        "--vault", str(workdir / "vault"), "--keyfile", str(workdir / "demo.key"),
        "customer", "list", "--json",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3


def test_passphrase_from_the_environment_unlocks_and_reads_back(
    pass_vault: tuple[Path, str, str],
) -> None:
    root, customer, record = pass_vault
    sh = make_shell(SHREDVAULT_PASSPHRASE=PASSPHRASE, SHREDVAULT_VAULT=str(root))
    got = sh("record", "get", customer, record, "--purpose", "service", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["fields"] == {"name": NAME, "phone": PHONE}
    assert PASSPHRASE not in got.stdout + got.stderr


def test_a_wrong_passphrase_exits_6_without_echoing_either(
    pass_vault: tuple[Path, str, str],
) -> None:
    root, customer, record = pass_vault
    wrong = "plum tram velvet 7732"
    result = make_shell(SHREDVAULT_PASSPHRASE=wrong, SHREDVAULT_VAULT=str(root))(
        "record", "get", customer, record, "--purpose", "service"
    )
    assert result.returncode == 6
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    assert wrong not in output and PASSPHRASE not in output and NAME not in output


def test_an_unknown_record_exits_4(key_vault: tuple[Shell, Path, str]) -> None:
    sh, _root, customer = key_vault
    result = sh("record", "get", customer, "rec_" + "c" * 26, "--purpose", "service")
    assert result.returncode == 4
    assert result.stderr.startswith("error: ")


def test_a_purpose_not_declared_exits_3_without_the_value(
    key_vault: tuple[Shell, Path, str],
) -> None:
    sh, _root, customer = key_vault
    result = sh(
        "record", "put", customer, "profile", "--purpose", "marketing", "--field", f"name={NAME}"
    )
    assert result.returncode == 3
    assert NAME not in result.stdout + result.stderr


def test_verify_of_a_tampered_data_db_exits_5(
    key_vault: tuple[Shell, Path, str], tmp_path: Path
) -> None:
    _sh, original, _customer = key_vault
    root = tmp_path / "copy"
    shutil.copytree(original, root)
    with sqlite3.connect(root / "data.db") as conn:
        (body,) = conn.execute("SELECT body FROM sv_log WHERE seq = 2").fetchone()
        conn.execute(
            "UPDATE sv_log SET body = ? WHERE seq = 2",
            (bytes(body).replace(b'"outcome":"ok"', b'"outcome":"denied"'),),
        )
    result = make_shell(SHREDVAULT_VAULT=str(root))("audit", "verify")
    assert result.returncode == 5
    assert "first bad seq 2" in result.stdout and "modified" in result.stdout


def test_a_usage_error_exits_2() -> None:
    result = make_shell()("record", "get")
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_no_credential_without_a_terminal_exits_2(key_vault: tuple[Shell, Path, str]) -> None:
    _sh, root, _customer = key_vault
    result = make_shell(SHREDVAULT_VAULT=str(root))("customer", "list")
    assert result.returncode == 2
    assert "SHREDVAULT_PASSPHRASE" in result.stderr


def test_a_data_url_password_never_reaches_the_output(tmp_path: Path) -> None:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    result = make_shell()(
        "init", str(tmp_path / "vault"), "--keyfile", str(keyfile),
        "--data-url", "postgresql+psycopg://svuser:hunter2secret@127.0.0.1:1/db",
    )  # fmt: skip
    assert result.returncode == 1
    assert "hunter2secret" not in result.stdout + result.stderr
    assert not (tmp_path / "vault").exists()


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shredvault", "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "shredvault" in result.stdout
