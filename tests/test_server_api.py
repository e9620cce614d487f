"""`shredvault serve` over HTTP: a real uvicorn server in a child process, driven with
httpx. Each role may do over HTTP exactly what the library lets it do; errors come
back with the typed error's name and their HTTP status; bad bodies are refused with
nothing written; the OpenAPI document served is the one committed."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from shredvault import Auditor
from shredvault.client import Client, ServerError
from shredvault.keys import generate_keyfile
from shredvault.server import render_openapi

from conftest import PG_URL_ENV, pg_base_url
from serverrun import Served, Staff, prepare_vault, start_server

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Live:
    server: Served
    staff: Staff
    root: Path
    keyfile: Path
    data_url: str | None

    def call(self, token: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, self.server.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """One server per back end for this module's tests (they share its vault)."""
    tmp = tmp_path_factory.mktemp("served")
    keyfile = tmp / "vault.key"
    generate_keyfile(keyfile)
    data_url, schema, admin = None, None, None
    if request.param == "postgres":
        base = pg_base_url()
        if base is None:
            pytest.skip(f"{PG_URL_ENV} not set: PostgreSQL tests skipped")
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        schema = "svt_" + secrets.token_hex(6)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        data_url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        staff = prepare_vault(tmp / "vault", keyfile, data_url)
        server = start_server(tmp / "vault", keyfile, data_url)
        try:
            yield Live(server, staff, tmp / "vault", keyfile, data_url)
        finally:
            server.stop()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()


def new_customer(live: Live) -> str:
    response = live.call(live.staff.admin, "POST", "/v1/customers", json={"ref": "crm-1"})
    assert response.status_code == 201
    return str(response.json()["id"])


def new_record(live: Live, customer: str) -> str:
    body = {"kind": "profile", "fields": {"name": "Ann", "phone": "555"}, "purpose": "service"}
    response = live.call(
        live.staff.operator, "POST", f"/v1/customers/{customer}/records", json=body
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# -- the role matrix -------------------------------------------------------------------

#: (role, call) -> HTTP status; what the library allows (docs/access-control.md)
MATRIX = [
    ("operator", "put", 201),
    ("operator", "get", 200),
    ("operator", "list", 200),
    ("operator", "update", 200),
    ("operator", "shred", 403),
    ("operator", "audit_report", 403),
    ("operator", "principals", 403),
    ("auditor", "put", 403),
    ("auditor", "get", 403),
    ("auditor", "customers", 200),
    ("auditor", "audit_report", 200),
    ("auditor", "audit_query", 200),
    ("auditor", "checkpoint", 200),
    ("auditor", "shred", 403),
    ("billing", "get_billing", 200),
    ("billing", "get", 403),
    ("billing", "put", 403),
    ("billing", "audit_query", 403),
    ("admin", "principals", 200),
    ("admin", "shred", 200),
]


def attempt(live: Live, token: str, call: str, customer: str, record: str) -> httpx.Response:
    records = f"/v1/customers/{customer}/records"
    put = {"kind": "profile", "fields": {"name": "Bo"}, "purpose": "service"}
    calls: dict[str, tuple[str, str, dict[str, Any]]] = {
        "put": ("POST", records, {"json": put}),
        "get": ("GET", f"{records}/{record}", {"params": {"purpose": "service"}}),
        "get_billing": ("GET", f"{records}/{record}", {"params": {"purpose": "billing"}}),
        "list": ("GET", records, {"params": {"purpose": "service"}}),
        "update": (
            "PATCH",
            f"{records}/{record}",
            {"json": {"fields": {"phone": "556"}, "purpose": "service"}},
        ),
        "shred": ("POST", f"/v1/customers/{customer}/shred", {"json": {"reason": "asked"}}),
        "audit_report": ("GET", "/v1/audit/report", {}),
        "audit_query": ("GET", "/v1/audit/query", {"params": {"limit": "5"}}),
        "checkpoint": ("POST", "/v1/audit/checkpoint", {}),
        "customers": ("GET", "/v1/customers", {"params": {"limit": "5"}}),
        "principals": ("GET", "/v1/principals", {}),
    }
    method, path, kw = calls[call]
    return live.call(token, method, path, **kw)


@pytest.mark.parametrize(("role", "call", "status"), MATRIX, ids=lambda v: str(v))
def test_each_role_may_do_over_http_exactly_what_the_library_allows(
    live: Live, role: str, call: str, status: int
) -> None:
    customer = new_customer(live)
    record = new_record(live, customer)
    response = attempt(live, getattr(live.staff, role), call, customer, record)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"] in {"AccessDeniedError", "PurposeError"}


def test_a_role_with_a_field_allow_list_gets_only_those_fields(live: Live) -> None:
    customer = new_customer(live)
    record = new_record(live, customer)
    response = attempt(live, live.staff.billing, "get_billing", customer, record)
    assert response.json()["fields"] == {"name": "Ann"}


def test_a_shredded_customer_is_gone_410_and_the_receipt_comes_back(live: Live) -> None:
    customer = new_customer(live)
    record = new_record(live, customer)
    shred = attempt(live, live.staff.admin, "shred", customer, record)
    assert shred.json()["type"] == "shredvault-erasure-receipt"
    assert shred.json()["customer"] == customer
    gone = attempt(live, live.staff.operator, "get", customer, record)
    assert (gone.status_code, gone.json()["error"]) == (410, "ShreddedError")


def test_an_unknown_customer_is_404_with_the_error_name(live: Live) -> None:
    response = live.call(live.staff.operator, "GET", "/v1/customers/cus_" + "a" * 26)
    assert response.status_code == 404
    assert response.json()["error"] == "NotFoundError"


def test_invalid_input_is_422_schema_error(live: Live) -> None:
    customer = new_customer(live)
    body = {"kind": "profile", "fields": {"nickname": "x"}, "purpose": "service"}
    response = live.call(
        live.staff.operator, "POST", f"/v1/customers/{customer}/records", json=body
    )
    assert (response.status_code, response.json()["error"]) == (422, "SchemaError")


# -- search -----------------------------------------------------------------------------


def logged(live: Live, actor: str, action: str) -> list[dict[str, Any]]:
    with Auditor.open(live.root, data_url=live.data_url) as auditor:
        return [e for e in auditor.entries() if (e.get("actor"), e["action"]) == (actor, action)]


def test_find_over_http_matches_a_phone_in_another_formatting(live: Live) -> None:
    customer = new_customer(live)
    digits = f"{secrets.randbelow(10**7):07d}"
    phone = f"+1 (555) {digits[:3]}-{digits[3:]}"
    body = {"kind": "profile", "fields": {"name": "Dee", "phone": phone}, "purpose": "service"}
    put = live.call(live.staff.operator, "POST", f"/v1/customers/{customer}/records", json=body)
    query = {"kind": "profile", "field": "phone", "value": f"+1555{digits}", "purpose": "service"}
    response = live.call(live.staff.operator, "POST", "/v1/records/find", json=query)
    assert response.status_code == 200, response.text
    [found] = response.json()["records"]
    assert (found["id"], found["customer"], found["fields"]["phone"]) == (
        put.json()["id"],
        customer,
        phone,
    )
    with Client(live.server.url, live.staff.operator) as client:
        assert [r["id"] for r in client.find("profile", "phone", phone, purpose="service")] == [
            found["id"]
        ]
        assert client.find("profile", "phone", "+1 000 000 0000", purpose="service") == []
        with pytest.raises(ServerError) as unsearchable:
            client.find("profile", "name", "Dee", purpose="service")
        assert (unsearchable.value.status, unsearchable.value.error) == (
            422,
            "NotSearchableError",
        )
    log = live.server.server_log()
    assert "POST /v1/records/find 200" in log
    for secret in (digits, digits[3:], "Dee"):
        assert secret not in log


def test_find_by_a_role_without_the_field_is_403_and_logged(live: Live) -> None:
    before = len(logged(live, "bill", "record.find"))
    query = {"kind": "profile", "field": "phone", "value": "5550100", "purpose": "billing"}
    response = live.call(live.staff.billing, "POST", "/v1/records/find", json=query)
    assert (response.status_code, response.json()["error"]) == (403, "AccessDeniedError")
    entries = logged(live, "bill", "record.find")
    assert len(entries) == before + 1 and entries[-1]["outcome"] == "denied"
    assert "5550100" not in json.dumps(entries) + live.server.server_log()


def test_find_takes_the_value_only_in_the_body(live: Live) -> None:
    query = {"kind": "profile", "field": "phone", "purpose": "service"}
    response = live.call(
        live.staff.operator, "POST", "/v1/records/find", params={"value": "1"}, json=query
    )
    assert (response.status_code, response.json()["error"]) == (422, "SchemaError")


def test_an_unknown_body_field_is_422_and_creates_nothing(live: Live) -> None:
    # a misspelt retain_until must not create a customer that is kept forever
    before = live.call(live.staff.admin, "GET", "/v1/customers").json()["customers"]
    body = {"ref": "typo-1", "retain-until": "2030-01-01"}
    response = live.call(live.staff.admin, "POST", "/v1/customers", json=body)
    assert (response.status_code, response.json()["error"]) == (422, "SchemaError")
    assert "retain-until" in response.json()["message"]
    assert "retain_until" in response.json()["message"]  # the suggestion
    after = live.call(live.staff.admin, "GET", "/v1/customers").json()["customers"]
    assert after == before


def test_an_unknown_query_parameter_is_422(live: Live) -> None:
    response = live.call(live.staff.admin, "GET", "/v1/customers", params={"limt": "1"})
    assert (response.status_code, response.json()["error"]) == (422, "SchemaError")


@pytest.mark.parametrize("number", ["\u00b2", "\u0661", "-1", "0", "1" * 5000])
def test_a_number_that_is_not_ascii_digits_is_422_not_500(live: Live, number: str) -> None:
    # "²".isdigit() is true but int("²") raises, as does int() of 5,000 digits: both
    # used to answer 500
    for token, path, name in (
        (live.staff.admin, "/v1/customers", "limit"),
        (live.staff.auditor, "/v1/audit/export", "since"),
    ):
        response = live.call(token, "GET", path, params={name: number})
        assert (response.status_code, response.json()["error"]) == (422, "SchemaError")


# -- tokens and bodies -------------------------------------------------------------------


def test_no_token_is_401_and_asks_for_a_bearer_token(live: Live) -> None:
    response = live.call(None, "GET", "/v1/customers")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_unknown_token_is_401_access_denied(live: Live) -> None:
    response = live.call("svp_abcdefghijkl_" + "x" * 40, "GET", "/v1/customers")
    assert (response.status_code, response.json()["error"]) == (401, "AccessDeniedError")


def test_an_oversized_body_is_413_and_writes_nothing(live: Live) -> None:
    customer = new_customer(live)
    huge = {"kind": "profile", "fields": {"name": "x" * (3 << 20)}, "purpose": "service"}
    response = live.call(
        live.staff.operator, "POST", f"/v1/customers/{customer}/records", json=huge
    )
    assert (response.status_code, response.json()["error"]) == (413, "BodyTooLarge")
    listed = live.call(
        live.staff.operator,
        "GET",
        f"/v1/customers/{customer}/records",
        params={"purpose": "service"},
    )
    assert listed.json()["records"] == []


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1]", b"", b'{"a": 1, "a": 2}', b"\xff\xfe", b"[" * 200 + b"]" * 200],
    ids=["truncated", "array", "empty", "duplicate-key", "not-utf8", "deep"],
)
def test_a_malformed_body_is_400(live: Live, body: bytes) -> None:
    customer = new_customer(live)
    response = live.call(
        live.staff.operator,
        "POST",
        f"/v1/customers/{customer}/records",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (400, "MalformedBody")


def test_the_served_openapi_document_is_the_committed_one(live: Live) -> None:
    served = live.call(None, "GET", "/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text("utf-8"))
    assert served == committed
    assert render_openapi() == (ROOT / "docs" / "openapi.json").read_text("utf-8")


def test_health_and_readiness_answer_without_a_token(live: Live) -> None:
    health = live.call(None, "GET", "/healthz")
    assert health.json() == {"ok": True, "worker": int(health.headers["x-shredvault-worker"])}
    assert live.call(None, "GET", "/readyz").json()["ready"] is True


def test_the_log_export_over_http_is_the_auditors_and_verifies(live: Live) -> None:
    response = live.call(live.staff.auditor, "GET", "/v1/audit/export")
    assert response.status_code == 200
    lines = response.content.decode().splitlines()
    assert json.loads(lines[0])["format"] == "shredvault-log-export"
    denied = live.call(live.staff.operator, "GET", "/v1/audit/export")
    assert denied.status_code == 403


# -- the client ---------------------------------------------------------------------------


def test_the_client_round_trips_and_raises_typed_error_names(live: Live) -> None:
    with Client(live.server.url, live.staff.operator) as client:
        customer = new_customer(live)
        record = client.put(customer, "profile", {"name": "Cy"}, purpose="service")
        assert client.get(customer, record, purpose="service")["fields"] == {"name": "Cy"}
        updated = client.update(customer, record, {"phone": "1"}, purpose="service")
        assert updated["version"] == 2
        with pytest.raises(ServerError) as denied:
            client.shred(customer, reason="asked")
        assert (denied.value.status, denied.value.error) == (403, "AccessDeniedError")
        assert "svp_" not in repr(client) + repr(denied.value) + str(denied.value)
    with Client(live.server.url, live.staff.admin) as admin:
        token = admin.add_principal("temp" + secrets.token_hex(3), role="operator")
        assert admin.customer(customer)["ref"] == "crm-1"
    with Client(live.server.url, token) as temp:
        assert temp.list_customers(limit=1)["customers"]


def test_a_token_logs_in_once_per_server_and_a_revocation_acts_on_the_next_request(
    live: Live,
) -> None:
    name = "rev" + secrets.token_hex(3)
    with Client(live.server.url, live.staff.admin) as admin:
        token = admin.add_principal(name, role="operator")
    for _ in range(3):
        assert live.call(token, "GET", "/v1/customers", params={"limit": "1"}).status_code == 200
    assert [e["outcome"] for e in logged(live, name, "auth.login")] == ["ok"]
    live.call(live.staff.admin, "DELETE", f"/v1/principals/{name}").raise_for_status()
    refused = live.call(token, "GET", "/v1/customers", params={"limit": "1"})
    assert refused.status_code in {401, 403}
    assert refused.json()["error"] == "AccessDeniedError"


def test_the_server_log_holds_no_token_no_id_and_no_field_value(live: Live) -> None:
    customer = new_customer(live)
    new_record(live, customer)
    log = live.server.server_log()
    for secret in (*vars(live.staff).values(), customer, "Ann", "555", "crm-1"):
        assert secret not in log
