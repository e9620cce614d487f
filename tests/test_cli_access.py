"""``principal`` and ``role`` commands and ``--token``: a token is shown once and never
again, and a data command run with a token acts with that principal's role (denied → 3)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.keys import generate_keyfile

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


def query(setup: Setup, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows straight from the vault's data.db (read-only)."""
    conn = sqlite3.connect(f"file:{setup.root / 'data.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def log_head(setup: Setup) -> int:
    return int(query(setup, "SELECT COALESCE(MAX(seq), 0) FROM sv_log")[0][0])


def entries_after(setup: Setup, seq: int) -> list[dict[str, Any]]:
    rows = query(setup, "SELECT body FROM sv_log WHERE seq > ? ORDER BY seq", seq)
    return [json.loads(bytes(body)) for (body,) in rows]


def declared_kinds(setup: Setup) -> list[tuple[str, str]]:
    return [(str(n), str(t)) for n, t in query(setup, "SELECT name, spec FROM sv_kinds")]


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
    secret_part = token.split("_", 2)[2]  # after "svp_" and the lookup id (may hold "_")
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


def test_principal_revoke_json_names_the_revoked_principal(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    result = run("principal", "revoke", "ops-1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"principal": "ops-1", "revoked": True}
    assert get_record(run, setup, token).exit_code == 3


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


# -- schema and checkpoints act as the principal ------------------------------------------

FORGED = "svp_0123456789ab_" + "Q" * 43
DECLARE_PET = ("kind", "declare", "pet", "--fields", "name", "--purposes", "service")


@pytest.mark.parametrize(
    "command",
    [DECLARE_PET, ("kind", "list", "--json"), ("audit", "checkpoint")],
    ids=["kind declare", "kind list", "audit checkpoint"],
)
def test_a_bogus_token_is_refused_by_schema_and_checkpoint_commands(
    run: Run, setup: Setup, command: tuple[str, ...]
) -> None:
    kinds_before = declared_kinds(setup)
    mark = log_head(setup)
    result = run(*command, SHREDVAULT_TOKEN=FORGED)
    assert result.exit_code == 3, result.output
    assert result.stdout == "" and "QQQQ" not in result.output
    assert declared_kinds(setup) == kinds_before
    # Only the unlock itself and the logged denial of the login: nothing acted.
    entries = entries_after(setup, mark)
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("vault.unlock", "ok"),
        ("auth.login", "denied"),
    ]
    assert entries[1]["detail"] == {"reason_code": "unknown_token"}


def test_an_operator_token_may_not_declare_a_kind(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    kinds_before = declared_kinds(setup)
    mark = log_head(setup)
    result = run(*DECLARE_PET, "--token", token)
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert declared_kinds(setup) == kinds_before
    denied = [e for e in entries_after(setup, mark) if e["outcome"] == "denied"]
    assert [(e["action"], e["actor"], e["role"], e["detail"]) for e in denied] == [
        ("schema.declare", "ops-1", "operator", {"reason_code": "action_not_allowed"})
    ]


def test_an_admin_token_declares_a_kind_as_its_principal(run: Run, setup: Setup) -> None:
    token = add_principal(run, "boss", "admin")
    mark = log_head(setup)
    result = run(*DECLARE_PET, "--json", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"kind": "pet", "fields": ["name"], "purposes": ["service"]}
    (entry,) = [e for e in entries_after(setup, mark) if e["action"] == "schema.declare"]
    assert (entry["actor"], entry["role"], entry["outcome"]) == ("boss", "admin", "ok")


def test_kind_list_with_a_token_is_logged_as_its_principal(run: Run, setup: Setup) -> None:
    token = add_principal(run, "aud-1", "auditor")
    mark = log_head(setup)
    result = run("kind", "list", "--json", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 0, result.output
    assert [k["kind"] for k in json.loads(result.stdout)] == ["profile"]
    (entry,) = [e for e in entries_after(setup, mark) if e["action"] == "schema.list"]
    assert (entry["actor"], entry["role"], entry["detail"]) == ("aud-1", "auditor", {"count": 1})


def test_kind_list_is_refused_to_a_role_without_list(run: Run, setup: Setup) -> None:
    assert run("role", "add", "reader", "--actions", "read").exit_code == 0
    token = add_principal(run, "r-1", "reader")
    mark = log_head(setup)
    result = run("kind", "list", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 3
    assert "profile" not in result.stdout
    (entry,) = [e for e in entries_after(setup, mark) if e["action"] == "schema.list"]
    assert (entry["outcome"], entry["actor"]) == ("denied", "r-1")
    assert entry["detail"] == {"reason_code": "action_not_allowed"}


def test_an_auditor_token_signs_a_checkpoint_as_itself(run: Run, setup: Setup) -> None:
    token = add_principal(run, "aud-1", "auditor")
    mark = log_head(setup)
    result = run("audit", "checkpoint", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 0, result.output
    signed = json.loads(result.stdout)["checkpoint"]
    (entry,) = [e for e in entries_after(setup, mark) if e["action"] == "audit.checkpoint"]
    assert (entry["actor"], entry["role"], entry["outcome"]) == ("aud-1", "auditor", "ok")
    assert signed["seq"] == entry["seq"]
    assert query(setup, "SELECT hash FROM sv_log WHERE seq = ?", entry["seq"]) == [
        (signed["head"],)
    ]


def test_an_operator_token_may_not_sign_a_checkpoint(run: Run, setup: Setup) -> None:
    token = add_principal(run, "ops-1", "operator")
    mark = log_head(setup)
    result = run("audit", "checkpoint", SHREDVAULT_TOKEN=token)
    assert result.exit_code == 3
    assert result.stdout == ""
    entries = entries_after(setup, mark)
    assert [e["outcome"] for e in entries if e["action"] == "audit.checkpoint"] == ["denied"]


def test_without_a_token_schema_and_checkpoints_act_as_the_administrator(
    run: Run, setup: Setup
) -> None:
    mark = log_head(setup)
    assert run(*DECLARE_PET).exit_code == 0
    assert "pet" in run("kind", "list").stdout
    assert run("audit", "checkpoint").exit_code == 0
    acted = [
        (e["action"], e["actor"], e["role"], e["outcome"])
        for e in entries_after(setup, mark)
        if e["action"] in {"schema.declare", "schema.list", "audit.checkpoint"}
    ]
    assert acted == [
        ("schema.declare", "admin", "admin", "ok"),
        ("schema.list", "admin", "admin", "ok"),
        ("audit.checkpoint", "admin", "admin", "ok"),
    ]
    assert ("pet", json.dumps({"fields": ["name"], "purposes": ["service"]})) in [
        (n, json.dumps(json.loads(t))) for n, t in declared_kinds(setup)
    ]


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


NAME_ONLY = ("role", "add", "p1", "--actions", "read", "--fields", "profile.name",
             "--kinds", "profile", "--purposes", "service")  # fmt: skip
EVERY_FIELD = ("role", "add", "p1", "--actions", "read,list", "--purposes", "service")


def test_role_add_of_an_existing_role_exits_1_and_its_principals_see_no_change(
    run: Run, setup: Setup
) -> None:
    assert run(*NAME_ONLY).exit_code == 0
    token = add_principal(run, "p1-holder", "p1")
    roles_before = query(setup, "SELECT name, spec FROM sv_roles")
    mark = log_head(setup)
    result = run(*EVERY_FIELD)
    assert result.exit_code == 1
    assert "role p1 exists" in result.stderr and "--replace" in result.stderr
    assert query(setup, "SELECT name, spec FROM sv_roles") == roles_before
    assert [e["action"] for e in entries_after(setup, mark)] == ["vault.unlock"]
    got = get_record(run, setup, token, "--json")
    assert json.loads(got.stdout)["fields"] == {"name": NAME}


def test_role_add_replace_changes_what_its_principals_see_and_is_logged(
    run: Run, setup: Setup
) -> None:
    assert run(*NAME_ONLY).exit_code == 0
    token = add_principal(run, "p1-holder", "p1")
    mark = log_head(setup)
    result = run(*EVERY_FIELD, "--replace", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fields"] is None
    (entry,) = [e for e in entries_after(setup, mark) if e["action"] == "role.add"]
    assert entry["outcome"] == "ok" and entry["detail"]["replaced"] is True
    assert entry["detail"]["actions"] == ["list", "read"] and entry["detail"]["fields"] is None
    got = get_record(run, setup, token, "--json")
    assert json.loads(got.stdout)["fields"] == {"name": NAME, "phone": PHONE}


def test_role_add_with_an_unknown_action_is_a_usage_error(run: Run) -> None:
    result = run("role", "add", "r", "--actions", "read,teleport")
    assert result.exit_code == 2
    assert "teleport" in result.stderr


def test_role_add_named_like_a_built_in_role_exits_1(run: Run) -> None:
    assert run("role", "add", "admin", "--actions", "read").exit_code == 1


# -- as a real process ------------------------------------------------------------------


def shredvault() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


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
