"""The example service in docs/examples/service.py (issue 21 item 6), run under a real
uvicorn on 127.0.0.1 and driven through HTTP: add, find by ref and by phone, page,
update, shred (a verifiable receipt) and report. Skipped without the ``examples``
extra (starlette, uvicorn) or httpx."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from shredvault.keys import generate_keyfile  # noqa: E402
from shredvault.vault import Vault, verify_receipt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    client: httpx.Client
    vault_dir: Path
    keyfile: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("service")
    keyfile, vault_dir = base / "vault.key", base / "vault"
    generate_keyfile(keyfile)
    with Vault.create(vault_dir, keyfile=keyfile) as vault:
        token = vault.admin().add_principal("desk", role="admin")
    port = _free_port()
    env = {**os.environ, "SHREDVAULT_VAULT": str(vault_dir), "SHREDVAULT_KEYFILE": str(keyfile)}
    app_dir = str(ROOT / "docs" / "examples")
    uvicorn = [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--log-level", "warning"]
    server = subprocess.Popen(
        [*uvicorn, "--host", "127.0.0.1", "--port", str(port), "service:app"], env=env
    )
    headers = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:  # until uvicorn has opened the vault and listens
            try:
                client.get("/customers", params={"limit": 1})
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the example service did not start") from None
                time.sleep(0.05)
        yield Service(client, vault_dir, keyfile)
    finally:
        client.close()
        server.terminate()
        server.wait(30)


def _add(service: Service, ref: str, phone: str) -> str:
    contact = {"name": f"Customer {ref}", "phone": phone}
    response = service.client.post("/customers", json={"ref": ref, "contact": contact})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_add_then_find_by_ref(service: Service) -> None:
    cid = _add(service, "crm-100", "+44 20 7946 0100")
    found = service.client.get("/customers/by-ref/crm-100").json()
    assert found["id"] == cid
    assert found["contact"]["phone"] == "+44 20 7946 0100"


def test_pages_follow_the_cursor(service: Service) -> None:
    added = {_add(service, f"page-{n}", f"+1 555 010{n}") for n in range(3)}
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2} if after is None else {"limit": 2, "after": after}
        page = service.client.get("/customers", params=params).json()
        assert len(page["customers"]) <= 2
        seen += [c["ref"] for c in page["customers"]]
        after = page["next"]
        if after is None:
            break
    assert {f"page-{n}" for n in range(3)} <= set(seen)
    assert len(seen) == len(set(seen)) >= len(added)


def test_update_changes_the_contact(service: Service) -> None:
    cid = _add(service, "crm-200", "+1 555 0200")
    response = service.client.patch(f"/customers/{cid}", json={"phone": "+1 555 0299"})
    assert response.status_code == 200, response.text
    assert service.client.get(f"/customers/{cid}").json()["contact"]["phone"] == "+1 555 0299"


def test_find_by_phone(service: Service) -> None:
    cid = _add(service, "crm-300", "+1 555 0300")
    found = service.client.get("/customers", params={"phone": "+1 555 0300"}).json()
    assert found["customers"] == [cid]


def test_shred_returns_a_receipt_and_the_customer_is_gone(service: Service) -> None:
    cid = _add(service, "crm-400", "+1 555 0400")
    report = service.client.get(f"/customers/{cid}/report")
    assert report.status_code == 200, report.text
    assert "+1 555 0400" in report.text
    response = service.client.request("DELETE", f"/customers/{cid}", json={"reason": "asked"})
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["customer"] == cid
    assert verify_receipt(receipt, trust_embedded_key=True).ok
    assert service.client.get(f"/customers/{cid}").status_code == 410


def test_errors_are_statuses_without_personal_data(service: Service) -> None:
    assert service.client.get("/customers/by-ref/nobody").status_code == 404
    anonymous = service.client.get("/customers", headers={"Authorization": ""})
    assert anonymous.status_code == 403
    forged = service.client.get("/customers", headers={"Authorization": "Bearer svp_x"})
    assert forged.status_code == 403


def test_the_log_verifies_with_one_login_per_token(service: Service) -> None:
    service.client.get("/customers", params={"limit": 1})
    with Vault.open(service.vault_dir, keyfile=service.keyfile) as vault:
        assert vault.verify_log().ok
        logins = vault.admin().audit_query(action="auth.login", actor="desk", outcome="ok")
        assert logins["entries"] == 1  # session_for: the first request logs in, no other
