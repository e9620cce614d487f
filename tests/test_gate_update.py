"""An update is never a way to read: a role that may write a kind but not read it gets
back only the fields it wrote (found by an audit: `update(c, r, {})` by a write-only
role returned the whole decrypted record)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shredvault import AccessDeniedError, Role, Vault
from shredvault.vault import generate_keyfile


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    key = tmp_path / "vault.key"
    generate_keyfile(key)
    v = Vault.create(tmp_path / "vault", keyfile=key)
    v.declare_kind("payment", fields=["card", "holder"], purposes=["billing"])
    return v


def test_a_write_only_role_gets_back_only_what_it_wrote(vault: Vault) -> None:
    admin = vault.admin()
    customer = admin.add_customer()
    rid = admin.put(
        customer, "payment", {"card": "4111111111111111", "holder": "ALICE"}, purpose="billing"
    )
    admin.add_role(Role.build("clerk", actions=["write"], kinds=["payment"]))
    clerk = vault.login(admin.add_principal("clerk-1", role="clerk"))
    with pytest.raises(AccessDeniedError):
        clerk.get(customer, rid, purpose="billing")

    nothing = clerk.update(customer, rid, {}, purpose="billing")
    assert nothing.fields == {}
    renamed = clerk.update(customer, rid, {"holder": "ALICE B"}, purpose="billing")
    assert renamed.fields == {"holder": "ALICE B"}
    assert "4111111111111111" not in repr(renamed)
    # the record itself was updated whole
    assert admin.get(customer, rid, purpose="billing").fields == {
        "card": "4111111111111111",
        "holder": "ALICE B",
    }
    vault.close()


def test_a_role_that_may_read_gets_the_merged_record(vault: Vault) -> None:
    admin = vault.admin()
    customer = admin.add_customer()
    rid = admin.put(customer, "payment", {"card": "4111", "holder": "ALICE"}, purpose="billing")
    updated = admin.update(customer, rid, {"holder": "BOB"}, purpose="billing")
    assert updated.fields == {"card": "4111", "holder": "BOB"}
    vault.close()
