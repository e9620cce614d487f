"""The CLI side of the one gate (issue 15): a token given empty or blank is a usage
error, never the administrator; a subject access report by a limited role holds only
what that role may see, and a role without ``export`` gets exit 3 and nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import generate_keyfile
from shredvault.vault import Role, Vault

import logrows
from clirun import Run, make_run

NAME = "Grace Hopper-c7"
PHONE = "+1 202 555 0107"
CARD = "5500 0000 0000 0107"
UNSEEN = (PHONE, CARD)


@dataclass(frozen=True)
class Setup:
    run: Run
    data_db: Path
    customer: str
    records: dict[str, str]
    tokens: dict[str, str]  # operator, limited (export), reader (no export)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("cli-gate")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    with Vault.create(base / "vault", keyfile=keyfile) as vault:
        vault.declare_kind("profile", fields=["name", "phone"], purposes=["service"])
        vault.declare_kind("payment", fields=["card_number"], purposes=["billing"])
        admin = vault.admin()
        limits: dict[str, Any] = {
            "kinds": ["profile"],
            "fields": ["profile.name"],
            "purposes": ["service"],
        }
        admin.add_role(Role.build("limited", actions=["export", "read"], **limits))
        admin.add_role(Role.build("reader", actions=["read"], **limits))
        tokens = {
            role: admin.add_principal(f"p-{role}", role=role)
            for role in ("operator", "limited", "reader")
        }
        customer = admin.add_customer()
        records = {
            "profile": admin.put(
                customer, "profile", {"name": NAME, "phone": PHONE}, purpose="service"
            ),
            "payment": admin.put(customer, "payment", {"card_number": CARD}, purpose="billing"),
        }
    yield Setup(
        make_run(base / "vault", keyfile), base / "vault" / "data.db", customer, records, tokens
    )


def head(setup: Setup) -> int:
    return int(logrows.scalar(setup.data_db, "SELECT COALESCE(MAX(seq), 0) FROM sv_log"))


# -- an empty or blank token -------------------------------------------------------------------

BLANK_TOKENS = [
    pytest.param(("--token", ""), {}, id="group-option-empty"),
    pytest.param(("--token", "  "), {}, id="group-option-blank"),
    pytest.param((), {"SHREDVAULT_TOKEN": ""}, id="env-empty"),
    pytest.param((), {"SHREDVAULT_TOKEN": " \n"}, id="env-blank"),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(("before", "env"), BLANK_TOKENS)
def test_a_blank_token_is_a_usage_error_never_the_administrator(
    setup: Setup, before: tuple[str, ...], env: dict[str, str], as_json: bool
) -> None:
    mark = head(setup)
    result = setup.run(*before, "customer", "list", *(["--json"] if as_json else []), **env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # no customer list, and no JSON that looks like one
    assert "empty" in result.stderr
    assert ("SHREDVAULT_TOKEN" if env else "--token") in result.stderr
    assert head(setup) == mark  # refused before unlocking: not even vault.unlock


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_empty_token_on_the_command_beats_a_valid_one_in_the_environment(
    setup: Setup, as_json: bool
) -> None:
    result = setup.run(
        "customer", "report", setup.customer, "--token", "", *(["--json"] if as_json else []),
        SHREDVAULT_TOKEN=setup.tokens["operator"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "--token is empty" in result.stderr


def test_a_valid_token_on_the_command_beats_an_empty_environment(setup: Setup) -> None:
    mark = head(setup)
    result = setup.run(
        "customer", "list", "--json", "--token", setup.tokens["operator"], SHREDVAULT_TOKEN=""
    )
    assert result.exit_code == 0, result.output
    listed = logrows.entries_after(setup.data_db, mark)[-1]
    assert (listed["action"], listed["actor"]) == ("customer.list", "p-operator")


def test_the_help_still_works_with_an_empty_token(setup: Setup) -> None:
    result = setup.run("customer", "list", "--help", SHREDVAULT_TOKEN="")
    assert result.exit_code == 0


# -- the subject access report by a limited role ----------------------------------------------


def test_a_limited_role_reports_only_the_fields_and_kinds_it_may_see(setup: Setup) -> None:
    result = setup.run(
        "customer", "report", setup.customer, SHREDVAULT_TOKEN=setup.tokens["limited"]
    )
    assert result.exit_code == 0, result.output
    assert all(value not in result.output for value in UNSEEN)
    report = json.loads(result.stdout)
    assert [(r["id"], r["fields"]) for r in report["records"]] == [
        (setup.records["profile"], {"name": NAME})
    ]
    assert report["withheld"] == {
        "records": 1,
        "reasons": {"kind_not_allowed": 1},
        "records_with_fields_withheld": 1,
    }


def test_a_limited_roles_markdown_report_says_it_is_incomplete(setup: Setup) -> None:
    result = setup.run(
        "customer", "report", setup.customer, "--format", "md",
        SHREDVAULT_TOKEN=setup.tokens["limited"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "This report is incomplete" in result.stdout
    assert NAME in result.stdout
    assert all(value not in result.output for value in UNSEEN)


def test_the_administrator_reports_everything(setup: Setup) -> None:
    report = json.loads(setup.run("customer", "report", setup.customer, "--json").stdout)
    assert sorted(r["kind"] for r in report["records"]) == ["payment", "profile"]
    assert report["withheld"]["records"] == 0


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_role_without_export_may_not_report(setup: Setup, as_json: bool) -> None:
    mark = head(setup)
    result = setup.run(
        "customer", "report", setup.customer, *(["--json"] if as_json else []),
        SHREDVAULT_TOKEN=setup.tokens["reader"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert all(value not in result.output for value in (NAME, *UNSEEN))
    denied = [e for e in logrows.entries_after(setup.data_db, mark) if e["outcome"] == "denied"]
    assert [(e["action"], e["detail"]["reason_code"]) for e in denied] == [
        ("customer.report", "action_not_allowed")
    ]


def test_a_limited_role_may_not_get_the_record_its_report_left_out(setup: Setup) -> None:
    result = setup.run(
        "record", "get", setup.customer, setup.records["payment"], "--purpose", "billing",
        SHREDVAULT_TOKEN=setup.tokens["limited"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert CARD not in result.output
