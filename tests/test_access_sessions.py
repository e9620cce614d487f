"""Sessions a web service reuses (issue 21 item 5): ``Vault.session_for(token)`` logs a
token's first login in an open vault and each access, not each request; the gate still
re-reads the principal on every access, so a revoked token is refused at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shredvault.vault import AccessDeniedError, Vault

from logrows import entries_after


@pytest.fixture
def vault(sqlite_vault: Vault) -> Vault:
    return sqlite_vault


def _actions(vault: Vault, since: int) -> list[str]:
    return [e["action"] for e in entries_after(Path(vault.path) / "data.db", since)]


def test_session_for_logs_the_first_login_and_each_access_not_each_request(
    vault: Vault,
) -> None:
    admin = vault.admin()
    cid = admin.add_customer()
    token = admin.add_principal("web", role="operator")
    start = vault.head.seq
    for n in range(3):  # three requests with the same token
        vault.session_for(token).put(cid, "profile", {"name": f"n{n}"}, purpose="service")
    assert _actions(vault, start) == ["auth.login", "record.put", "record.put", "record.put"]


def test_a_revoked_token_is_refused_at_its_next_access(vault: Vault) -> None:
    admin = vault.admin()
    cid = admin.add_customer()
    token = admin.add_principal("web", role="operator")
    vault.session_for(token).put(cid, "profile", {"name": "a"}, purpose="service")
    admin.revoke_principal("web")
    start = vault.head.seq
    with pytest.raises(AccessDeniedError, match="token_revoked"):
        vault.session_for(token).put(cid, "profile", {"name": "b"}, purpose="service")
    entries = entries_after(Path(vault.path) / "data.db", start)
    assert [(e["action"], e["outcome"]) for e in entries] == [("record.put", "denied")]


def test_a_role_change_applies_to_a_remembered_session(vault: Vault) -> None:
    admin = vault.admin()
    cid = admin.add_customer()
    token = admin.add_principal("web", role="auditor")
    with pytest.raises(AccessDeniedError):
        vault.session_for(token).put(cid, "profile", {"name": "a"}, purpose="service")
    # a wrong token with the same lookup id is not the remembered session
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(AccessDeniedError, match="unknown_token"):
        vault.session_for(forged)


def test_an_unknown_token_is_denied_and_not_remembered(vault: Vault) -> None:
    start = vault.head.seq
    for _ in range(2):
        with pytest.raises(AccessDeniedError):
            vault.session_for("svp_000000000000_" + "x" * 43)
    assert _actions(vault, start) == ["auth.login", "auth.login"]


def test_threads_racing_on_a_new_token_log_in_once(vault: Vault) -> None:
    token = vault.admin().add_principal("web", role="operator")
    start = vault.head.seq
    go = threading.Barrier(4)

    def request() -> None:
        go.wait()
        vault.session_for(token)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _actions(vault, start) == ["auth.login"]


def test_reopening_logs_the_first_login_again(tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile) as v:
        token = v.admin().add_principal("web", role="operator")
        v.session_for(token)
        v.session_for(token)
    with Vault.open(tmp_path / "v", keyfile=keyfile) as v:
        start = v.head.seq
        v.session_for(token)
        v.session_for(token)
        assert _actions(v, start) == ["auth.login"]
