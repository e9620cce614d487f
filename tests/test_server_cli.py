"""The CLI against a server (``--server``/SHREDVAULT_SERVER and a token: no vault, no
passphrase, no file), failed-login limits, the non-loopback refusal, and a graceful
shutdown that signs a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from shredvault import Auditor, Vault
from shredvault.cli.main import cli

from serverrun import REPO, Served, Staff, prepare_vault, start_server


@pytest.fixture(scope="module")
def staffed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Staff]]:
    tmp = tmp_path_factory.mktemp("cli")
    keyfile = tmp / "vault.key"
    from shredvault.keys import generate_keyfile

    generate_keyfile(keyfile)
    staff = prepare_vault(tmp / "vault", keyfile)
    server = start_server(tmp / "vault", keyfile)
    yield server, staff
    server.stop()


def remote(server: Served, token: str | None, *args: str, input: str | None = None) -> Result:
    env = {
        "SHREDVAULT_SERVER": server.url,
        "SHREDVAULT_TOKEN": token,
        "SHREDVAULT_VAULT": None,
        "SHREDVAULT_KEYFILE": None,
        "SHREDVAULT_PASSPHRASE": None,
        "SHREDVAULT_DATA_URL": None,
    }
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def test_a_staff_member_with_only_a_token_works_within_the_role(
    staffed: tuple[Served, Staff],
) -> None:
    server, staff = staffed
    added = remote(server, staff.admin, "customer", "add", "--ref", "crm-9", "--json")
    assert added.exit_code == 0, added.output
    customer = json.loads(added.stdout)["id"]
    put = remote(
        server,
        staff.operator,
        "record",
        "put",
        customer,
        "profile",
        "--purpose",
        "service",
        "--field",
        "name=Dee",
    )
    assert put.exit_code == 0, put.output
    record = put.stdout.strip()
    got = remote(
        server,
        staff.operator,
        "record",
        "get",
        customer,
        record,
        "--purpose",
        "service",
        "--json",
    )
    assert json.loads(got.stdout)["fields"] == {"name": "Dee"}
    listed = remote(server, staff.operator, "record", "list", customer, "--purpose", "service")
    assert record in listed.stdout
    shown = remote(server, staff.auditor, "customer", "show", "--ref", "crm-9", "--json")
    assert json.loads(shown.stdout)["id"] == customer


def test_record_find_goes_through_the_server(staffed: tuple[Served, Staff]) -> None:
    server, staff = staffed
    customer = remote(server, staff.admin, "customer", "add").stdout.strip()
    put = remote(
        server,
        staff.operator,
        "record",
        "put",
        customer,
        "profile",
        "--purpose",
        "service",
        "--field",
        "phone=+1 (555) 010-4242",
    )
    assert put.exit_code == 0, put.output
    args = ("record", "find", "profile", "phone", "-", "--purpose")
    found = remote(server, staff.operator, *args, "service", "--json", input="+1 555 010 4242\n")
    assert found.exit_code == 0, found.output
    assert [r["id"] for r in json.loads(found.stdout)] == [put.stdout.strip()]
    denied = remote(server, staff.billing, *args, "billing", input="+1 555 010 4242\n")
    assert denied.exit_code == 3, denied.output
    unsearchable = ("record", "find", "profile", "name", "x", "--purpose", "service")
    assert remote(server, staff.operator, *unsearchable).exit_code == 1


def test_denied_over_the_server_exits_3_and_shredded_exits_4(
    staffed: tuple[Served, Staff],
) -> None:
    server, staff = staffed
    customer = remote(server, staff.admin, "customer", "add").stdout.strip()
    denied = remote(
        server, staff.operator, "shred", customer, "--reason", "asked", "--yes", "--json"
    )
    assert denied.exit_code == 3
    assert json.loads(denied.stderr)["type"] == "AccessDeniedError"
    shred = remote(server, staff.admin, "shred", customer, "--reason", "asked", "--yes")
    assert shred.exit_code == 0
    assert json.loads(shred.stdout)["customer"] == customer
    gone = remote(server, staff.admin, "customer", "report", customer)
    assert gone.exit_code == 4


def test_the_server_needs_a_token_and_refuses_local_only_commands(
    staffed: tuple[Served, Staff],
) -> None:
    server, staff = staffed
    assert remote(server, None, "customer", "list").exit_code == 2
    refused = remote(server, staff.admin, "kind", "list")
    assert refused.exit_code == 2
    assert "runs where the vault is" in refused.output


def test_an_audit_report_and_query_come_over_the_server(staffed: tuple[Served, Staff]) -> None:
    server, staff = staffed
    report = remote(server, staff.auditor, "audit", "report", "--json")
    assert json.loads(report.stdout)["type"] == "shredvault-audit-report"
    query = remote(server, staff.auditor, "audit", "query", "--json", "--limit", "3")
    assert query.exit_code == 0
    assert remote(server, staff.operator, "audit", "report").exit_code == 3


def test_failed_logins_are_limited_per_address_then_429(tmp_path: Path, keyfile: Path) -> None:
    staff = prepare_vault(tmp_path / "vault", keyfile)
    server = start_server(
        tmp_path / "vault", keyfile, None, "--login-burst", "3", "--login-per-minute", "0.01"
    )
    try:
        bad = {"Authorization": "Bearer svp_abcdefghijkl_nope"}
        statuses = [
            httpx.get(server.url + "/v1/customers", headers=bad).status_code for _ in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        good = {"Authorization": f"Bearer {staff.operator}"}
        limited = httpx.get(server.url + "/v1/customers", headers=good)
        assert (limited.status_code, limited.json()["error"]) == (429, "TooManyFailedLogins")
    finally:
        server.stop()
    log = server.server_log()
    assert log.count("failed login") == 3
    assert "svp_" not in log and staff.operator not in log


def test_a_graceful_shutdown_signs_a_checkpoint_at_the_head(tmp_path: Path, keyfile: Path) -> None:
    staff = prepare_vault(tmp_path / "vault", keyfile)
    server = start_server(tmp_path / "vault", keyfile)
    headers = {"Authorization": f"Bearer {staff.admin}"}
    assert httpx.post(server.url + "/v1/customers", json={}, headers=headers).status_code == 201
    server.stop()
    with Auditor.open(tmp_path / "vault") as auditor:
        latest = auditor.latest_checkpoint()
        assert latest is not None and latest.seq == auditor.head.seq
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as vault:
        assert vault.verify_log().ok


def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Path, keyfile: Path) -> None:
    prepare_vault(tmp_path / "vault", keyfile)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shredvault",
            "serve",
            "--vault",
            str(tmp_path / "vault"),
            "--keyfile",
            str(keyfile),
            "--listen",
            "0.0.0.0:8470",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "not a loopback address" in result.stderr


@pytest.mark.parametrize(
    "url",
    ["http://ann:s3cretPw@127.0.0.1:9", "ftp://127.0.0.1:9", "127.0.0.1:9", "http://:9"],
    ids=["password", "ftp", "no-scheme", "no-host"],
)
def test_a_server_url_that_is_not_plain_http_is_a_usage_error_never_echoed(url: str) -> None:
    # a password in the URL used to be printed back in "cannot reach http://ann:s3cretPw@..."
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env |= {"SHREDVAULT_SERVER": url, "SHREDVAULT_TOKEN": "svp_abcdefghijkl_secretpart"}
    result = subprocess.run(
        [sys.executable, "-m", "shredvault", "customer", "list", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "--server" in result.stderr
    assert "s3cretPw" not in result.stdout + result.stderr
    assert "secretpart" not in result.stdout + result.stderr
