"""``principal`` and ``role`` commands and ``--token``: a token is shown once and never
again, and a data command run with a token acts with that principal's role (denied → 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from keys import generate_keyfile

Run = Callable[..., Result]

NAME = "Xu Lan 许兰"
PHONE = "+86 139 0000 5512"


@dataclass(frozen=True)
class Setup:
    """A keyfile vault with a profile kind, one customer and one record."""

    root: Path
    keyfile: Path
    customer: str
    record: str


def make_run(setup: Setup) -> Run:
    runner = CliRunner()
    base = {
        "SHREDVAULT_VAULT": str(setup.root),
        "SHREDVAULT_KEYFILE": str(setup.keyfile),
        "SHREDVAULT_PASSPHRASE": None,
        "SHREDVAULT_DATA_URL": None,
        "SHREDVAULT_TOKEN": None,
    }

    def run(*args: str, input: str | None = None, **env: str | None) -> Result:
        return runner.invoke(
            cli, list(args), input=input, env={**base, **env}, catch_exceptions=False
        )

    return run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("access")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    setup = Setup(base / "vault", keyfile, "", "")
    run = make_run(setup)
    assert run("init", str(setup.root)).exit_code == 0
    declared = run(
        "kind", "declare", "profile", "--fields", "name,phone", "--purposes", "service,billing"
    )
    assert declared.exit_code == 0, declared.output
    customer = run("customer", "add").stdout.strip()
    put = run(
        "record", "put", customer, "profile", "--purpose", "service",
        "--field", f"name={NAME}", "--field", f"phone={PHONE}",
    )  # fmt: skip
    assert put.exit_code == 0, put.output
    return Setup(setup.root, keyfile, customer, put.stdout.strip())


@pytest.fixture
def setup(template: Setup, tmp_path: Path) -> Setup:
    """A private copy of the template vault (same keyfile)."""
    root = tmp_path / "vault"
    shutil.copytree(template.root, root)
    return Setup(root, template.keyfile, template.customer, template.record)


@pytest.fixture
def run(setup: Setup) -> Run:
    return make_run(setup)


def add_principal(run: Run, name: str, role: str, *extra: str) -> str:
    result = run("principal", "add", name, "--role", role, *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def get_record(run: Run, setup: Setup, token: str, *extra: str) -> Result:
    return run(
        "record", "get", setup.customer, setup.record, "--purpose", "service", *extra,
        SHREDVAULT_TOKEN=token,
    )  # fmt: skip


def store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.iterdir()) if p.is_file())


# -- principal add / list / revoke -------------------------------------------------------


def test_principal_add_prints_the_token_alone_on_stdout_and_warns_on_stderr(run: Run) -> None:
    result = run("principal", "add", "ops-1", "--role", "operator")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("svp_") and len(result.stdout.split()) == 1
    assert "not be shown again" in result.stderr
    assert token not in result.stderr


def test_principal_add_json_names_the_principal_role_token_and_expiry(run: Run) -> None:
    result = run(
        "principal", "add", "acq-1", "--role", "auditor", "--expires", "2099-01-31", "--json"
    )
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    assert set(added) == {"name", "role", "token", "expires"}
    assert added["name"] == "acq-1" and added["role"] == "auditor"
    assert added["token"].startswith("svp_")
    assert added["expires"] == "2099-01-31T00:00:00.000000Z"


def test_a_token_is_never_shown_again_nor_stored_in_the_vault_files(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    secret_part = token.rsplit("_", 1)[1]
    later = [
        run("principal", "list"),
        run("principal", "list", "--json"),
        get_record(run, setup, token),
        get_record(run, setup, token, "--json"),
        run("shred", setup.customer, "--reason", "test", "--yes", SHREDVAULT_TOKEN=token),
        run("customer", "list", "--token", token),
        run("role", "list", "--json"),
        run("audit", "export"),
        run("principal", "revoke", "ops-1"),
        get_record(run, setup, token),
    ]
    assert [r.exit_code for r in later] == [0, 0, 0, 0, 3, 0, 0, 0, 0, 3]
    for result in later:
        assert token not in result.output and secret_part not in result.output
    stored = store_bytes(setup.root)
    assert token.encode() not in stored and secret_part.encode() not in stored


def test_principal_list_shows_roles_and_revocation_without_tokens(run: Run) -> None:
    add_principal(run, "ops-1", "operator")
    add_principal(run, "aud-1", "auditor")
    assert run("principal", "revoke", "aud-1").exit_code == 0
    listed = json.loads(run("principal", "list", "--json").stdout)
    assert [(p["name"], p["role"], p["revoked"]) for p in listed] == [
        ("aud-1", "auditor", True),
        ("ops-1", "operator", False),
    ]
    assert all("token" not in p for p in listed)
    assert "ops-1" in run("principal", "list").stdout


def test_principal_add_with_an_unknown_role_exits_1(run: Run) -> None:
    result = run("principal", "add", "x", "--role", "janitor")
    assert result.exit_code == 1
    assert "janitor" in result.stderr


def test_principal_revoke_of_an_unknown_name_exits_4(run: Run) -> None:
    assert run("principal", "revoke", "nobody").exit_code == 4


# -- acting with a token ----------------------------------------------------------------


def test_an_operator_token_reads_records(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    result = get_record(run, setup, token, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fields"] == {"name": NAME, "phone": PHONE}


def test_an_operator_token_may_not_shred_and_the_customer_stays(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    result = run("shred", setup.customer, "--reason", "asked", "--yes", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ")
    assert get_record(run, setup, token).exit_code == 0


def test_an_auditor_token_may_not_read_a_record(run: Run, setup: Setup) -> None:
    token = add_principal(run, "aud-1", "auditor")
    result = get_record(run, setup, token)
    assert result.exit_code == 3
    assert NAME not in result.output


def test_a_revoked_token_exits_3(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    assert run("principal", "revoke", "ops-1").exit_code == 0
    result = get_record(run, setup, token)
    assert result.exit_code == 3
    assert "revoked" in result.stderr


def test_a_token_of_an_expired_role_exits_3(run: Run, setup: Setup) -> None:
    added = run("role", "add", "handover", "--actions", "read,list", "--expires", "2000-01-01")
    assert added.exit_code == 0, added.output
    assert "has passed" in added.stderr
    token = add_principal(run, "acq-1", "handover")
    result = get_record(run, setup, token)
    assert result.exit_code == 3
    assert "role_expired" in result.stderr


def test_an_expired_token_exits_3(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator", "--expires", "2000-01-01")
    assert get_record(run, setup, token).exit_code == 3


def test_an_unknown_token_exits_3_without_being_echoed(run: Run, setup: Setup) -> None:
    forged = "svp_0123456789ab_" + "Q" * 43
    result = get_record(run, setup, forged)
    assert result.exit_code == 3
    assert forged not in result.output and "QQQQ" not in result.output


def test_the_token_may_follow_the_command(run: Run, setup: Setup) -> None:
    token = add_principal(run, "aud-1", "auditor")
    result = run(
        "record", "get", setup.customer, setup.record, "--purpose", "service", "--token", token
    )
    assert result.exit_code == 3


def test_an_operator_token_may_not_add_principals(run: Run) -> None:
    token = add_principal(run, "ops-1", "operator")
    result = run("principal", "add", "ops-2", "--role", "admin", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 3
    assert result.stdout == ""


# -- roles ------------------------------------------------------------------------------


def test_a_custom_role_sees_only_its_allowed_fields(run: Run, setup: Setup) -> None:
    added = run(
        "role", "add", "dispatch", "--actions", "read", "--kinds", "profile",
        "--fields", "profile.name", "--purposes", "service", "--json",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["fields"] == ["profile.name"]
    token = add_principal(run, "van-7", "dispatch")
    got = get_record(run, setup, token, "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["fields"] == {"name": NAME}
    billing = run(
        "record", "get", setup.customer, setup.record, "--purpose", "billing",
        SHREDVAULT_TOKEN=token,
    )  # fmt: skip
    assert billing.exit_code == 3


def test_role_list_shows_built_in_and_custom_roles(run: Run) -> None:
    assert run("role", "add", "reader", "--actions", "read", "--actions", "list").exit_code == 0
    listed = {r["name"]: r for r in json.loads(run("role", "list", "--json").stdout)}
    assert {"admin", "operator", "auditor", "reader"} <= set(listed)
    assert listed["reader"]["actions"] == ["list", "read"]
    assert listed["reader"]["builtin"] is False and listed["operator"]["builtin"] is True
    assert "reader" in run("role", "list").stdout


def test_role_add_with_an_unknown_action_is_a_usage_error(run: Run) -> None:
    result = run("role", "add", "r", "--actions", "read,teleport")
    assert result.exit_code == 2
    assert "teleport" in result.stderr


def test_role_add_named_like_a_built_in_role_exits_1(run: Run) -> None:
    assert run("role", "add", "admin", "--actions", "read").exit_code == 1


# -- as a real process ------------------------------------------------------------------


def shredvault() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def test_a_token_in_the_environment_of_a_real_process(setup: Setup) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_VAULT=str(setup.root), SHREDVAULT_KEYFILE=str(setup.keyfile))

    def sh(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*shredvault(), *args],
            capture_output=True,
            text=True,
            env={**env, **more},
            timeout=60,
            check=False,
        )

    added = sh("principal", "add", "ops-1", "--role", "operator")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    read = sh("record", "get", setup.customer, setup.record, "--purpose", "service",
              SHREDVAULT_TOKEN=token)  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert NAME in read.stdout
    shred = sh("shred", setup.customer, "--reason", "asked", "--yes", SHREDVAULT_TOKEN=token)
    assert shred.returncode == 3
    assert shred.stderr.startswith("error: ") and "Traceback" not in shred.stderr
    for result in (read, shred):
        assert token not in result.stdout + result.stderr


# -- help -------------------------------------------------------------------------------

NEW_COMMANDS = [
    ["principal"],
    ["principal", "add"],
    ["principal", "list"],
    ["principal", "revoke"],
    ["role"],
    ["role", "add"],
    ["role", "list"],
    ["customer", "hold"],
    ["customer", "release"],
    ["shred"],
    ["compact"],
    ["receipt"],
    ["receipt", "verify"],
    ["keys"],
    ["keys", "status"],
    ["keys", "rotate-kek"],
    ["keys", "retire-epoch"],
    ["keys", "rotate-dek"],
    ["keys", "change-passphrase"],
]


@pytest.mark.parametrize("command", NEW_COMMANDS, ids=" ".join)
def test_every_new_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout


def test_the_token_option_is_documented_on_the_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "--token" in result.stdout and "SHREDVAULT_TOKEN" in result.stdout
