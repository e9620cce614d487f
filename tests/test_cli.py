"""The CLI's commands through click's CliRunner: init, kinds, customers, records,
unlocking, exit codes, and that no secret or field value leaks into output."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.exit_codes import exit_code_for
from shredvault.cli.main import cli
from shredvault.keys import generate_keyfile
from shredvault.vault import (
    AccessDeniedError,
    AuditChainError,
    DecryptionError,
    NotFoundError,
    PurposeError,
    SchemaError,
    ShreddedError,
    StorageError,
    UnlockError,
    VerificationError,
)

Run = Callable[..., Result]

SECRET_NAME = "Zhang Xiuying 张秀英"
SECRET_PHONE = "+86 139 0000 7781"


def make_runner(base_env: dict[str, str | None]) -> Run:
    runner = CliRunner()

    def run(*args: str, input: str | None = None, **env: str | None) -> Result:
        return runner.invoke(
            cli, list(args), input=input, env={**base_env, **env}, catch_exceptions=False
        )

    return run


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def bare_env(vault_dir: Path) -> dict[str, str | None]:
    """An environment naming the vault but no credential, whatever the caller's is."""
    return {
        "SHREDVAULT_VAULT": str(vault_dir),
        "SHREDVAULT_DATA_URL": None,
        "SHREDVAULT_KEYFILE": None,
        "SHREDVAULT_PASSPHRASE": None,
    }


@pytest.fixture
def run(bare_env: dict[str, str | None], keyfile: Path) -> Run:
    """Invoke the CLI with the vault and a keyfile in the environment."""
    return make_runner({**bare_env, "SHREDVAULT_KEYFILE": str(keyfile)})


@pytest.fixture
def vault(run: Run, vault_dir: Path) -> Path:
    """A keyfile vault with a declared ``profile`` kind."""
    assert run("init", str(vault_dir)).exit_code == 0
    declared = run(
        "kind",
        "declare",
        "profile",
        "--fields",
        "name,phone,address",
        "--purposes",
        "service,billing",
    )
    assert declared.exit_code == 0, declared.output
    return vault_dir


@pytest.fixture
def customer(run: Run, vault: Path) -> str:
    result = run("customer", "add", "--ref", "crm-1")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def put_profile(run: Run, customer: str) -> str:
    result = run(
        "record", "put", customer, "profile", "--purpose", "service",
        "--field", f"name={SECRET_NAME}", "--field", f"phone={SECRET_PHONE}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# -- init -------------------------------------------------------------------------------


def test_init_with_a_keyfile_prints_the_vault_id_and_public_key(run: Run, vault_dir: Path) -> None:
    result = run("init", str(vault_dir), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["vault"].startswith("vlt_")
    assert summary["public_key"].startswith("ed25519:") and len(summary["public_key"]) == 72
    assert summary["unlock"] == "keyfile"
    assert (vault_dir / "keys.db").is_file() and (vault_dir / "data.db").is_file()


def test_init_human_output_names_vault_and_public_key(run: Run, vault_dir: Path) -> None:
    result = run("init", str(vault_dir))
    assert result.exit_code == 0
    assert "vlt_" in result.stdout and "ed25519:" in result.stdout


def test_init_new_keyfile_writes_an_owner_only_key_and_says_to_keep_it_safe(
    bare_env: dict[str, str | None], tmp_path: Path, vault_dir: Path
) -> None:
    run = make_runner(bare_env)
    key = tmp_path / "new.key"
    result = run("init", str(vault_dir), "--new-keyfile", str(key))
    assert result.exit_code == 0, result.output
    assert key.stat().st_size == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert str(key) in result.stderr and "safe" in result.stderr
    assert run("customer", "list", "--keyfile", str(key)).exit_code == 0


def test_init_refuses_a_new_keyfile_inside_the_vault_directory(
    bare_env: dict[str, str | None], vault_dir: Path
) -> None:
    result = make_runner(bare_env)("init", str(vault_dir), "--new-keyfile", str(vault_dir / "k"))
    assert result.exit_code == 2
    assert not vault_dir.exists()


def test_init_refuses_an_existing_keyfile_path_for_a_new_key(
    bare_env: dict[str, str | None], vault_dir: Path, keyfile: Path
) -> None:
    before = keyfile.read_bytes()
    result = make_runner(bare_env)("init", str(vault_dir), "--new-keyfile", str(keyfile))
    assert result.exit_code == 2
    assert keyfile.read_bytes() == before


def test_init_refuses_a_non_empty_directory(run: Run, vault_dir: Path) -> None:
    vault_dir.mkdir()
    (vault_dir / "notes.txt").write_text("x")
    result = run("init", str(vault_dir))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_init_removes_the_new_keyfile_when_creation_fails(
    bare_env: dict[str, str | None], tmp_path: Path, vault_dir: Path
) -> None:
    vault_dir.mkdir()
    (vault_dir / "notes.txt").write_text("x")
    key = tmp_path / "new.key"
    result = make_runner(bare_env)("init", str(vault_dir), "--new-keyfile", str(key))
    assert result.exit_code == 1
    assert not key.exists()


def test_passphrase_file_drops_one_trailing_newline(
    bare_env: dict[str, str | None], tmp_path: Path, vault_dir: Path
) -> None:
    run = make_runner(bare_env)
    secret = tmp_path / "pass.txt"
    secret.write_text("tide pool lantern 42\n", encoding="utf-8")
    created = run("--passphrase-file", str(secret), "init", str(vault_dir))
    assert created.exit_code == 0, created.output
    opened = run("customer", "list", SHREDVAULT_PASSPHRASE="tide pool lantern 42")
    assert opened.exit_code == 0, opened.output
    assert "tide pool" not in created.output + opened.output


def test_no_credential_and_no_terminal_is_a_usage_error_naming_the_ways(
    bare_env: dict[str, str | None], vault: Path
) -> None:
    result = make_runner(bare_env)("customer", "list")
    assert result.exit_code == 2
    for way in ("--passphrase-file", "--keyfile", "SHREDVAULT_PASSPHRASE"):
        assert way in result.stderr


def test_keyfile_and_passphrase_file_together_are_a_usage_error(
    run: Run, vault: Path, keyfile: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("whatever")
    result = run("--keyfile", str(keyfile), "--passphrase-file", str(secret), "customer", "list")
    assert result.exit_code == 2


def test_a_keyfile_on_the_command_line_beats_a_passphrase_in_the_environment(
    bare_env: dict[str, str | None], vault: Path, keyfile: Path
) -> None:
    run = make_runner({**bare_env, "SHREDVAULT_PASSPHRASE": "not the key"})
    assert run("--keyfile", str(keyfile), "customer", "list").exit_code == 0


def test_global_options_may_follow_the_command(
    bare_env: dict[str, str | None], vault: Path, keyfile: Path
) -> None:
    run = make_runner({**bare_env, "SHREDVAULT_VAULT": None})
    result = run("customer", "list", "--vault", str(vault), "--keyfile", str(keyfile))
    assert result.exit_code == 0, result.output


def test_no_vault_given_is_a_usage_error(bare_env: dict[str, str | None], keyfile: Path) -> None:
    run = make_runner({**bare_env, "SHREDVAULT_VAULT": None, "SHREDVAULT_KEYFILE": str(keyfile)})
    result = run("customer", "list")
    assert result.exit_code == 2
    assert "--vault" in result.stderr


def test_a_data_url_that_is_not_a_url_is_a_usage_error_without_echoing_it(
    run: Run, vault: Path
) -> None:
    result = run("--data-url", "hunter2-not-a-url", "customer", "list")
    assert result.exit_code == 2
    assert "hunter2" not in result.output


def test_a_wrong_keyfile_exits_6(run: Run, vault: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    generate_keyfile(other)
    result = run("customer", "list", SHREDVAULT_KEYFILE=str(other))
    assert result.exit_code == 6
    assert result.stderr.startswith("error: ")


def test_a_missing_vault_directory_exits_1(run: Run, tmp_path: Path) -> None:
    result = run("customer", "list", SHREDVAULT_VAULT=str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")


# -- kinds ------------------------------------------------------------------------------


def test_kind_list_shows_declared_fields_and_purposes(run: Run, vault: Path) -> None:
    listed = json.loads(run("kind", "list", "--json").stdout)
    assert listed == [
        {
            "kind": "profile",
            "fields": ["address", "name", "phone"],
            "purposes": ["billing", "service"],
        }
    ]
    assert "profile" in run("kind", "list").stdout


def test_kind_declare_accepts_repeated_options(run: Run, vault: Path) -> None:
    result = run(
        "kind", "declare", "visit", "--fields", "date", "--fields", "notes,rooms",
        "--purposes", "service", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fields"] == ["date", "notes", "rooms"]


def test_kind_declare_with_an_invalid_name_exits_1(run: Run, vault: Path) -> None:
    result = run("kind", "declare", "Bad Name", "--fields", "a", "--purposes", "b")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")


# -- customers --------------------------------------------------------------------------


def test_customer_add_prints_only_the_id(run: Run, vault: Path) -> None:
    result = run("customer", "add")
    assert result.exit_code == 0
    assert result.stdout.strip().startswith("cus_") and len(result.stdout.split()) == 1


def test_customer_add_records_consent_and_retention(run: Run, vault: Path) -> None:
    result = run(
        "customer", "add", "--ref", "crm-77", "--consent", "transfer=yes",
        "--consent", "newsletter=no", "--retain-until", "2031-06-30", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    shown = json.loads(run("customer", "show", added["id"], "--json").stdout)
    assert shown["ref"] == "crm-77"
    assert shown["consent"] == {"newsletter": False, "transfer": True}
    assert shown["retain_until"].startswith("2031-06-30T00:00:00")
    assert shown["state"] == "active"


def test_customer_add_with_a_bad_consent_value_is_a_usage_error(run: Run, vault: Path) -> None:
    assert run("customer", "add", "--consent", "transfer=perhaps").exit_code == 2


def test_customer_add_with_a_bad_date_is_a_usage_error(run: Run, vault: Path) -> None:
    assert run("customer", "add", "--retain-until", "next tuesday").exit_code == 2


def test_customer_list_filters_by_state(run: Run, customer: str) -> None:
    active = json.loads(run("customer", "list", "--state", "active", "--json").stdout)
    shredded = json.loads(run("customer", "list", "--state", "shredded", "--json").stdout)
    assert [c["id"] for c in active] == [customer]
    assert shredded == []
    assert customer in run("customer", "list").stdout


def test_customer_show_prints_metadata(run: Run, customer: str) -> None:
    result = run("customer", "show", customer)
    assert result.exit_code == 0
    assert customer in result.stdout and "crm-1" in result.stdout


def test_customer_show_of_an_unknown_customer_exits_4(run: Run, vault: Path) -> None:
    result = run("customer", "show", "cus_" + "a" * 26)
    assert result.exit_code == 4
    assert result.stderr.startswith("error: ")


def test_customer_show_of_a_malformed_id_exits_4(run: Run, vault: Path) -> None:
    assert run("customer", "show", "nobody").exit_code == 4


# -- records ----------------------------------------------------------------------------


def test_record_put_then_get_prints_the_fields(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    assert record.startswith("rec_")
    result = run("record", "get", customer, record, "--purpose", "service")
    assert result.exit_code == 0, result.output
    assert SECRET_NAME in result.stdout and SECRET_PHONE in result.stdout


def test_record_get_json_is_the_record(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    got = json.loads(
        run("record", "get", customer, record, "--purpose", "billing", "--json").stdout
    )
    assert got["id"] == record and got["customer"] == customer and got["kind"] == "profile"
    assert got["fields"] == {"name": SECRET_NAME, "phone": SECRET_PHONE}
    assert got["version"] == 1


def test_record_put_merges_stdin_json_and_fields(run: Run, customer: str) -> None:
    payload = json.dumps({"name": "Old Name", "address": "8 Quay Street"})
    result = run(
        "record", "put", customer, "profile", "-", "--purpose", "service",
        "--field", "name=New Name", input=payload,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(
        run(
            "record", "get", customer, result.stdout.strip(), "--purpose", "service", "--json"
        ).stdout
    )
    assert got["fields"] == {"name": "New Name", "address": "8 Quay Street"}


def test_record_put_reads_stdin_with_the_stdin_flag(run: Run, customer: str) -> None:
    result = run(
        "record", "put", customer, "profile", "--stdin", "--purpose", "service",
        input='{"phone": "+44 20 7946 0000"}',
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_record_put_without_fields_is_a_usage_error(run: Run, customer: str) -> None:
    assert run("record", "put", customer, "profile", "--purpose", "service").exit_code == 2


def test_record_put_with_invalid_stdin_json_does_not_echo_it(run: Run, customer: str) -> None:
    result = run(
        "record", "put", customer, "profile", "-", "--purpose", "service",
        input='{"name": "' + SECRET_NAME + '"',
    )  # fmt: skip
    assert result.exit_code == 2
    assert SECRET_NAME not in result.output


def test_record_put_with_a_field_lacking_a_value_does_not_echo_it(run: Run, customer: str) -> None:
    result = run(
        "record", "put", customer, "profile", "--purpose", "service", "--field", SECRET_PHONE
    )
    assert result.exit_code == 2
    assert SECRET_PHONE not in result.output


def test_record_put_of_an_undeclared_field_exits_1_without_the_value(
    run: Run, customer: str
) -> None:
    result = run(
        "record", "put", customer, "profile", "--purpose", "service",
        "--field", f"passport={SECRET_PHONE}",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "passport" in result.stderr
    assert SECRET_PHONE not in result.output


def test_record_put_for_an_undeclared_purpose_exits_3_without_the_value(
    run: Run, customer: str
) -> None:
    result = run(
        "record", "put", customer, "profile", "--purpose", "marketing",
        "--field", f"name={SECRET_NAME}",
    )  # fmt: skip
    assert result.exit_code == 3
    assert "marketing" in result.stderr
    assert SECRET_NAME not in result.output


def test_record_get_for_an_undeclared_purpose_exits_3(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    result = run("record", "get", customer, record, "--purpose", "marketing")
    assert result.exit_code == 3
    assert SECRET_NAME not in result.output


def test_record_get_of_an_unknown_record_exits_4(run: Run, customer: str) -> None:
    result = run("record", "get", customer, "rec_" + "b" * 26, "--purpose", "service")
    assert result.exit_code == 4


def test_record_list_prints_every_record_for_the_purpose(run: Run, customer: str) -> None:
    first, second = put_profile(run, customer), put_profile(run, customer)
    listed = json.loads(run("record", "list", customer, "--purpose", "service", "--json").stdout)
    assert [r["id"] for r in listed] == [first, second]
    text = run("record", "list", customer, "--purpose", "service", "--kind", "profile").stdout
    assert first in text and second in text and SECRET_NAME in text


def test_record_list_of_a_customer_without_records_says_so(run: Run, customer: str) -> None:
    result = run("record", "list", customer, "--purpose", "service")
    assert result.exit_code == 0
    assert "no records" in result.stdout


def test_record_delete_keeps_the_record_when_not_confirmed(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    result = run("record", "delete", customer, record, "--purpose", "service", input="n\n")
    assert result.exit_code == 1
    assert run("record", "get", customer, record, "--purpose", "service").exit_code == 0


def test_record_delete_with_yes_deletes(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    assert run("record", "delete", customer, record, "--purpose", "service", "--yes").exit_code == 0
    assert run("record", "get", customer, record, "--purpose", "service").exit_code == 4


def test_record_delete_json_names_what_was_deleted(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    result = run("record", "delete", customer, record, "--purpose", "service", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"customer": customer, "record": record, "deleted": True}
    assert run("record", "get", customer, record, "--purpose", "service").exit_code == 4


def test_record_delete_after_confirmation_deletes(run: Run, customer: str) -> None:
    record = put_profile(run, customer)
    result = run("record", "delete", customer, record, "--purpose", "service", input="y\n")
    assert result.exit_code == 0, result.output
    assert run("record", "get", customer, record, "--purpose", "service").exit_code == 4


# -- exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnlockError("wrong passphrase or keyfile"), 6),
        (PurposeError("purpose not declared"), 3),  # also a SchemaError: 3 wins
        (AccessDeniedError("no"), 3),
        (ShreddedError("gone"), 4),
        (NotFoundError("no such record"), 4),
        (AuditChainError("rolled back", reason="rolled back"), 5),
        (VerificationError("bad", reason="modified"), 5),
        (SchemaError("undeclared field"), 1),
        (DecryptionError("altered"), 1),
        (StorageError("missing"), 1),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_library_errors_map_to_the_designed_exit_codes(error: Exception, code: int) -> None:
    assert exit_code_for(error) == code


# -- help -------------------------------------------------------------------------------

COMMANDS = [
    [],
    ["init"],
    ["demo"],
    ["kind"],
    ["kind", "declare"],
    ["kind", "list"],
    ["customer"],
    ["customer", "add"],
    ["customer", "list"],
    ["customer", "show"],
    ["record"],
    ["record", "put"],
    ["record", "get"],
    ["record", "list"],
    ["record", "delete"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "export"],
    ["audit", "checkpoint"],
    ["audit", "pubkey"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "shredvault")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_vault_with_its_data_in_postgresql(
    pg_url: str, bare_env: dict[str, str | None], keyfile: Path, vault_dir: Path
) -> None:
    run = make_runner(
        {**bare_env, "SHREDVAULT_KEYFILE": str(keyfile), "SHREDVAULT_DATA_URL": pg_url}
    )
    created = run("init", str(vault_dir), "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["data"] == "external"
    assert not (vault_dir / "data.db").exists()
    assert pg_url not in created.output
    run("kind", "declare", "profile", "--fields", "name", "--purposes", "service")
    customer = run("customer", "add").stdout.strip()
    record = run(
        "record",
        "put",
        customer,
        "profile",
        "--purpose",
        "service",
        "--field",
        f"name={SECRET_NAME}",
    ).stdout.strip()
    got = run("record", "get", customer, record, "--purpose", "service", "--json")
    assert json.loads(got.stdout)["fields"] == {"name": SECRET_NAME}
    audited = run("audit", "verify", "--json", SHREDVAULT_KEYFILE=None)
    assert audited.exit_code == 0, audited.output
    # the keystore remembers the URL (issue 21 item 5): no --data-url needed any more
    without_url = run("customer", "list", "--json", SHREDVAULT_DATA_URL=None)
    assert without_url.exit_code == 0, without_url.output
    assert customer in without_url.stdout
