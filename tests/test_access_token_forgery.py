"""Issue 16's finding, replayed on SQLite and PostgreSQL: someone who can write the data
store (a DBA, a backup operator, a compromised app host) but holds neither the
passphrase nor the keyfile inserts a principal row whose token hash is the SHA-256 of
a token of their choosing, role admin. The login is denied (``unknown_token``, logged)
and nothing is served: a token verifier is a MAC under a key only the keystore holds.
Tokens keep working across what legitimately changes the keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shredvault.keys import generate_keyfile
from shredvault.vault import AccessDeniedError, Vault

from legacy import data_engine, sha256_hex

CHOSEN = "svp_a11ce0000000_" + "M" * 43  # well-formed: svp_<12 hex>_<secret>
CHOSEN_LOOKUP = "a11ce0000000"
PURPOSE = "service"


def insert_principal(
    v: Vault, data_url: str | None, *, name: str, lookup: str, token_hash: str
) -> None:
    """A principal row written straight into the data store, as an insider would."""
    engine = data_engine(v.path, data_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sv_principals (name, lookup, role, token_hash, expires, revoked,"
                    " created) VALUES (:n, :l, 'admin', :h, NULL, :r, '2026-01-01T00:00:00Z')"
                ),
                {"n": name, "l": lookup, "h": token_hash, "r": False},
            )
    finally:
        engine.dispose()


def forge_admin_row(v: Vault, data_url: str | None) -> None:
    """The finding: an admin row holding the SHA-256 of a token the insider chose."""
    insert_principal(
        v, data_url, name="mallory", lookup=CHOSEN_LOOKUP, token_hash=sha256_hex(CHOSEN)
    )


def stored_verifier(v: Vault, data_url: str | None, name: str) -> str:
    engine = data_engine(v.path, data_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT token_hash FROM sv_principals WHERE name = :n"), {"n": name}
            )
            return str(row.scalar_one())
    finally:
        engine.dispose()


def log_tail(v: Vault, data_url: str | None, after: int) -> list[dict[str, Any]]:
    engine = data_engine(v.path, data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT body FROM sv_log WHERE seq > :s ORDER BY seq"), {"s": after}
            )
            return [json.loads(bytes(body)) for (body,) in rows]
    finally:
        engine.dispose()


def with_a_record(v: Vault) -> tuple[str, str]:
    v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
    admin = v.admin()
    customer = admin.add_customer()
    return customer, admin.put(customer, "profile", {"name": "Amara Osei"}, purpose=PURPOSE)


def assert_denied_as_unknown(v: Vault, data_url: str | None, token: str) -> None:
    """The login raises, serves nothing, and leaves exactly one denied entry."""
    before = v.head.seq
    with pytest.raises(AccessDeniedError, match="unknown_token"):
        v.login(token)
    (entry,) = log_tail(v, data_url, before)
    assert (entry["action"], entry["outcome"]) == ("auth.login", "denied")
    assert (entry["actor"], entry["role"]) == ("unknown", "none")
    assert entry["detail"] == {"reason_code": "unknown_token"}


def test_a_row_holding_the_sha256_of_a_chosen_token_does_not_log_in(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    v = make_vault()
    with_a_record(v)
    insert_principal(
        v, backend, name="mallory", lookup=CHOSEN_LOOKUP, token_hash=sha256_hex(CHOSEN)
    )
    assert_denied_as_unknown(v, backend, CHOSEN)


def test_a_row_copying_another_principals_verifier_does_not_log_in_with_another_token(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    v = make_vault()
    with_a_record(v)
    v.admin().add_principal("olga", role="operator")
    copied = stored_verifier(v, backend, "olga")
    insert_principal(v, backend, name="mallory", lookup=CHOSEN_LOOKUP, token_hash=copied)
    assert_denied_as_unknown(v, backend, CHOSEN)


def test_a_row_copied_from_another_vault_on_the_same_keyfile_does_not_log_in(
    tmp_path: Path, keyfile: Path, backend: str | None, request: pytest.FixtureRequest
) -> None:
    """The insider holds a token of vault A and copies its row into vault B, which is
    unlocked with the same keyfile: B's verifiers are under B's own key."""
    other_url = request.getfixturevalue("pg_schemas")() if backend else None
    with (
        Vault.create(tmp_path / "a", keyfile=keyfile, data_url=backend) as a,
        Vault.create(tmp_path / "b", keyfile=keyfile, data_url=other_url) as b,
    ):
        token = a.admin().add_principal("olga", role="admin")
        lookup = token.split("_")[1]
        copied = stored_verifier(a, backend, "olga")
        insert_principal(b, other_url, name="olga", lookup=lookup, token_hash=copied)
        assert_denied_as_unknown(b, other_url, token)
        a.login(token)  # the token itself is good, in its own vault


def test_a_real_principal_still_logs_in_and_is_served(
    make_vault: Callable[..., Vault], backend: str | None
) -> None:
    v = make_vault()
    customer, record = with_a_record(v)
    token = v.admin().add_principal("olga", role="operator")
    insert_principal(
        v, backend, name="mallory", lookup=CHOSEN_LOOKUP, token_hash=sha256_hex(CHOSEN)
    )
    got = v.login(token).get(customer, record, purpose=PURPOSE)
    assert dict(got.fields) == {"name": "Amara Osei"}


# -- tokens survive what changes the keys --------------------------------------------


def test_tokens_keep_logging_in_after_a_keyfile_change_and_a_kek_rotation(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    v = Vault.create(tmp_path / "v", keyfile=keyfile, data_url=backend)
    customer, record = with_a_record(v)
    token = v.admin().add_principal("olga", role="operator")
    new_keyfile = tmp_path / "new.key"
    generate_keyfile(new_keyfile)
    v.admin().change_passphrase(keyfile=str(new_keyfile))
    v.admin().rotate_kek(retire=True)
    v.login(token)
    v.close()
    with Vault.open(tmp_path / "v", keyfile=new_keyfile, data_url=backend) as again:
        got = again.login(token).get(customer, record, purpose=PURPOSE)
        assert dict(got.fields) == {"name": "Amara Osei"}
        forge_admin_row(again, backend)
        assert_denied_as_unknown(again, backend, CHOSEN)


def test_tokens_keep_logging_in_after_a_passphrase_change(tmp_path: Path) -> None:
    old, new = b"correct horse battery staple", b"marble kettle 0947 heron"
    with Vault.create(tmp_path / "v", passphrase=old) as v:  # Argon2id 1
        token = v.admin().add_principal("olga", role="operator")
        v.admin().change_passphrase(passphrase=new)  # 2
    with Vault.open(tmp_path / "v", passphrase=new) as v:  # 3
        v.login(token)
