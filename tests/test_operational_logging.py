"""Operational events through stdlib ``logging`` (issue 21 item 5): opening, closing,
shredding, key rotation, backups, reconciliation and slow transactions are reported
on loggers under ``shredvault.``, and no record carries a token, a field value, a
shred reason or key material."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shredvault.vault import Vault

SECRET_VALUE = "Zebulon-Quartermain-555-0199"
REASON = "asked by Mrs Quartermain by phone"


def test_operations_are_logged_without_secrets_or_personal_data(
    tmp_path: Path, keyfile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shredvault")
    with Vault.create(tmp_path / "v", keyfile=keyfile) as vault:
        vault._ctx.slow_seconds = 0.0  # every transaction counts as slow here
        vault.declare_kind("profile", fields=["name"], purposes=["service"])
        admin = vault.admin()
        token = admin.add_principal("web", role="operator")
        cid = admin.add_customer(ref="crm-1")
        web = vault.session_for(token)
        rid = web.put(cid, "profile", {"name": SECRET_VALUE}, purpose="service")
        assert web.get(cid, rid, purpose="service").fields["name"] == SECRET_VALUE
        admin.rotate_kek()
        admin.backup(str(tmp_path / "b.svb"))
        admin.shred(cid, reason=REASON)
    with Vault.open(tmp_path / "v", keyfile=keyfile):
        pass

    records = [r for r in caplog.records if r.name.startswith("shredvault.")]
    text = "\n".join(r.getMessage() for r in records)
    for wanted in (
        "created",
        "opened",
        "closed",
        "KEK rotated",
        "backup",
        "shredded",
        "slow logged transaction",
    ):
        assert wanted in text, wanted
    secrets = [SECRET_VALUE, REASON, token, token.split("_")[-1], keyfile.read_bytes().hex()]
    for secret in secrets:
        assert secret not in text
    assert all(r.args is None or SECRET_VALUE not in repr(r.args) for r in records)
