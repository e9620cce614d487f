"""Principal tokens (DESIGN §6): random (>= 128 bits), shown once, stored only as their
verifier (HMAC-SHA-256 under the token-MAC key of their SHA-256; docs/keys.md),
compared in constant time, and never written anywhere: not in the stores' files, the
access log, error messages, a session's repr or the principal listing. A refused login
is logged as a denied ``auth.login`` without token material.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import load_keyfile
from shredvault.vault import AccessDeniedError, Vault

from verifiers import verifier_by_hand

TOKEN_RE = re.compile(r"^svp_(?P<lookup>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 20, 9, 0, tzinfo=UTC))


@pytest.fixture
def v(tmp_path: Path, keyfile: Path, clock: ManualClock) -> Iterator[Vault]:
    """A keyfile vault (``keyfile`` is its root key) with one declared kind."""
    with Vault.create(tmp_path / "vault", keyfile=keyfile, clock=clock) as opened:
        opened.declare_kind("profile", fields=["name"], purposes=["service"])
        yield opened


def parts(token: str) -> tuple[str, str]:
    match = TOKEN_RE.match(token)
    assert match is not None, "token does not have the svp_<12 hex>_<43 urlsafe> form"
    return match["lookup"], match["secret"]


def log_bodies(v: Vault) -> list[bytes]:
    conn = sqlite3.connect(f"file:{v.path / 'data.db'}?mode=ro", uri=True)
    try:
        return [bytes(b) for (b,) in conn.execute("SELECT body FROM sv_log ORDER BY seq")]
    finally:
        conn.close()


def newest_entry(v: Vault) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(log_bodies(v)[-1])
    return entry


def stored_hash(v: Vault, name: str) -> str:
    conn = sqlite3.connect(f"file:{v.path / 'data.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT token_hash FROM sv_principals WHERE name = ?", (name,))
        return str(row.fetchone()[0])
    finally:
        conn.close()


def secret_forms(token: str) -> list[bytes]:
    """Every spelling of the token's material worth looking for in stored bytes."""
    _lookup, secret = parts(token)
    return [
        token.encode(),
        secret.encode(),
        base64.urlsafe_b64decode(secret + "="),
        token.encode("utf-16-le"),
    ]


# -- shape and storage ------------------------------------------------------------------


def test_token_carries_at_least_128_random_bits(v: Vault) -> None:
    token = v.admin().add_principal("olga", role="operator")
    _lookup, secret = parts(token)
    assert len(base64.urlsafe_b64decode(secret + "=")) * 8 >= 128


def test_every_token_and_lookup_id_is_fresh(v: Vault) -> None:
    tokens = [v.admin().add_principal(f"p{i}", role="operator") for i in range(16)]
    assert len({parts(t)[0] for t in tokens}) == len(tokens)
    assert len({parts(t)[1] for t in tokens}) == len(tokens)


def test_token_is_stored_only_as_its_mac_under_the_token_key(v: Vault, keyfile: Path) -> None:
    token = v.admin().add_principal("olga", role="operator")
    stored = stored_hash(v, "olga")
    assert stored == verifier_by_hand(v.path / "keys.db", load_keyfile(keyfile), token)
    assert stored != hashlib.sha256(token.encode("utf-8")).hexdigest()


def test_token_never_reaches_any_file_of_the_vault(v: Vault) -> None:
    admin = v.admin()
    token = admin.add_principal("olga", role="operator")
    lookup, secret = parts(token)
    session = v.login(token)
    session.add_customer()
    for wrong in (token + "x", f"svp_{lookup}_{secret[::-1]}"):
        with pytest.raises(AccessDeniedError):
            v.login(wrong)
    admin.revoke_principal("olga")
    with pytest.raises(AccessDeniedError):
        v.login(token)

    def assert_absent() -> None:
        files = [f for f in v.path.iterdir() if f.is_file()]
        names = {f.name for f in files}
        assert {"data.db", "keys.db"} <= names
        for path in files:
            content = path.read_bytes()
            for form in secret_forms(token):
                assert form not in content, f"token material in {path.name}"

    assert_absent()  # while open: the -wal files still hold recent pages
    v.close()
    assert_absent()  # after close: checkpointed into the main files


def test_token_and_its_hash_are_absent_from_every_log_entry(v: Vault) -> None:
    admin = v.admin()
    token = admin.add_principal("olga", role="operator", expires=datetime(2099, 1, 1, tzinfo=UTC))
    v.login(token).list_customers()
    admin.revoke_principal("olga")
    with pytest.raises(AccessDeniedError):
        v.login(token)
    digest = stored_hash(v, "olga").encode()
    bodies = log_bodies(v)
    assert any(b'"auth.login"' in body for body in bodies)
    for body in bodies:
        assert digest not in body
        for form in secret_forms(token):
            assert form not in body


# -- where a token could leak from the API ------------------------------------------------


def test_session_repr_shows_actor_and_role_only(v: Vault) -> None:
    token = v.admin().add_principal("olga", role="operator")
    session = v.login(token)
    shown = repr(session) + str(session)
    assert "olga" in shown
    assert "operator" in shown
    for form in secret_forms(token)[:2]:
        assert form.decode() not in shown
    assert parts(token)[0] not in shown


def test_listing_principals_shows_no_token_or_hash(v: Vault) -> None:
    admin = v.admin()
    token = admin.add_principal("olga", role="operator")
    digest = stored_hash(v, "olga")
    listed = admin.list_principals()
    shown = repr(listed) + json.dumps([p.to_json() for p in listed])
    assert [p.name for p in listed] == ["olga"]
    for material in (token, parts(token)[1], parts(token)[0], digest):
        assert material not in shown


def wrong_tokens(token: str) -> dict[str, object]:
    lookup, secret = parts(token)
    return {
        "wrong-secret": f"svp_{lookup}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",
        "extended": token + "A",
        "no-prefix": token[len("svp_") :],
        "upper-case": token.upper(),
        "unknown-lookup": f"svp_{'0' * 12}_{secret}",
    }


@pytest.mark.parametrize(
    "variant", ["wrong-secret", "extended", "no-prefix", "upper-case", "unknown-lookup"]
)
def test_near_miss_token_is_unknown_and_logged_without_material(v: Vault, variant: str) -> None:
    token = v.admin().add_principal("olga", role="operator")
    presented = wrong_tokens(token)[variant]
    assert isinstance(presented, str)
    with pytest.raises(AccessDeniedError) as info:
        v.login(presented)
    message = str(info.value)
    for material in (token, presented, parts(token)[1], parts(token)[0]):
        assert material not in message
    entry = newest_entry(v)
    assert (entry["action"], entry["outcome"]) == ("auth.login", "denied")
    assert (entry["actor"], entry["role"]) == ("unknown", "none")
    assert entry["detail"] == {"reason_code": "unknown_token"}
    body = log_bodies(v)[-1]
    for material in (token, presented, parts(token)[1], parts(token)[0]):
        assert material.encode() not in body


@pytest.mark.parametrize(
    "garbage",
    ["", "garbage", "svp_", "svp_abc_def", "svp_" + "a" * 12 + "_", "x" * 10_000, None, b"svp_"],
    ids=["empty", "word", "prefix", "short-lookup", "no-secret", "huge", "none", "bytes"],
)
def test_garbage_token_is_denied_and_logged_as_unknown(v: Vault, garbage: Any) -> None:
    before = len(log_bodies(v))
    with pytest.raises(AccessDeniedError) as info:
        v.login(garbage)
    assert str(info.value) == "access denied: unknown_token"
    bodies = log_bodies(v)
    assert len(bodies) == before + 1
    entry = json.loads(bodies[-1])
    assert (entry["action"], entry["outcome"], entry["actor"]) == (
        "auth.login",
        "denied",
        "unknown",
    )
    assert entry["detail"] == {"reason_code": "unknown_token"}


@pytest.mark.parametrize("why", ["revoked", "expired"])
def test_refused_matching_token_names_its_principal_not_the_token(
    v: Vault, clock: ManualClock, why: str
) -> None:
    admin = v.admin()
    expires = clock.now + timedelta(hours=1)
    token = admin.add_principal("olga", role="operator", expires=expires)
    if why == "revoked":
        admin.revoke_principal("olga")
    else:
        clock.now = expires
    with pytest.raises(AccessDeniedError) as info:
        v.login(token)
    assert token not in str(info.value)
    assert parts(token)[1] not in str(info.value)
    entry = newest_entry(v)
    assert (entry["action"], entry["outcome"], entry["actor"]) == ("auth.login", "denied", "olga")
    assert entry["detail"] == {"reason_code": f"token_{why}"}


def test_successful_login_is_logged_with_principal_and_role(v: Vault) -> None:
    token = v.admin().add_principal("olga", role="operator")
    v.login(token)
    entry = newest_entry(v)
    assert (entry["action"], entry["outcome"]) == ("auth.login", "ok")
    assert (entry["actor"], entry["role"]) == ("olga", "operator")
    assert token.encode() not in log_bodies(v)[-1]


# -- constant-time comparison ---------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    """Record every hmac.compare_digest call made by keys.tokenmac, the one place token
    verifiers are compared (the real function still decides)."""
    real = hmac.compare_digest
    calls: list[tuple[object, object]] = []

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("shredvault.keys.tokenmac.hmac.compare_digest", recording)
    return calls


def test_login_compares_the_token_verifier_with_compare_digest(
    v: Vault, keyfile: Path, compare_calls: list[tuple[object, object]]
) -> None:
    token = v.admin().add_principal("olga", role="operator")
    compare_calls.clear()
    v.login(token)
    expected = verifier_by_hand(v.path / "keys.db", load_keyfile(keyfile), token)
    stored = stored_hash(v, "olga").encode()
    # (the row's authenticator is compared too, after the token: vault/rowauth.py)
    assert [c for c in compare_calls if stored in c] == [(expected.encode(), stored)]


def test_login_compares_even_when_no_principal_matches(
    v: Vault, compare_calls: list[tuple[object, object]]
) -> None:
    token = v.admin().add_principal("olga", role="operator")
    compare_calls.clear()
    for presented in (wrong_tokens(token)["unknown-lookup"], "garbage"):
        with pytest.raises(AccessDeniedError):
            v.login(presented)  # type: ignore[arg-type]
    assert len(compare_calls) == 2


def test_wrong_secret_is_rejected_by_the_real_comparison(
    v: Vault, compare_calls: list[tuple[object, object]]
) -> None:
    token = v.admin().add_principal("olga", role="operator")
    compare_calls.clear()
    with pytest.raises(AccessDeniedError):
        v.login(wrong_tokens(token)["wrong-secret"])  # type: ignore[arg-type]
    ((presented, stored),) = compare_calls
    assert stored == stored_hash(v, "olga").encode()
    assert presented != stored
