"""Fail closed (DESIGN §6): an access whose log entry cannot be written returns no data
and changes nothing; and every public access path writes exactly one entry per
record it touches (one for calls that touch none)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from shredvault.vault import (
    NotFoundError,
    PurposeError,
    Role,
    StorageError,
    Vault,
    VaultBusyError,
)


class DataProbe:
    """A separate connection to the vault's data store, for counting and sabotage."""

    def __init__(self, v: Vault, backend: str | None) -> None:
        self.sqlite_path = None if backend else v.path / "data.db"
        self.engine: Engine = create_engine(backend or f"sqlite:///{self.sqlite_path}")

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()

    def log_rows(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM sv_log"))

    def record_rows(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM sv_records"))

    def customer_rows(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM sv_customers"))

    def new_entries(self, after: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT body FROM sv_log WHERE seq > :s ORDER BY seq"), {"s": after}
            ).all()
        return [json.loads(bytes(r.body)) for r in rows]

    def refuse_log_writes(self) -> None:
        """Make the database itself reject every insert into the log."""
        with self.engine.begin() as conn:
            if self.sqlite_path is not None:
                conn.execute(
                    text(
                        "CREATE TRIGGER sv_test_refuse BEFORE INSERT ON sv_log "
                        "BEGIN SELECT RAISE(ABORT, 'log refused by test'); END"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE FUNCTION sv_test_refuse() RETURNS trigger LANGUAGE plpgsql "
                        "AS $$ BEGIN RAISE EXCEPTION 'log refused by test'; END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER sv_test_refuse BEFORE INSERT ON sv_log "
                        "FOR EACH ROW EXECUTE FUNCTION sv_test_refuse()"
                    )
                )

    def allow_log_writes(self) -> None:
        with self.engine.begin() as conn:
            if self.sqlite_path is not None:
                conn.execute(text("DROP TRIGGER sv_test_refuse"))
            else:
                conn.execute(text("DROP TRIGGER sv_test_refuse ON sv_log"))
                conn.execute(text("DROP FUNCTION sv_test_refuse()"))


@pytest.fixture
def world(make_vault: Any, backend: str | None) -> Iterator[tuple[Vault, DataProbe]]:
    v: Vault = make_vault(busy_timeout=0.5)
    v.declare_kind("profile", fields=["name"], purposes=["service", "billing"])
    v.declare_kind("note", fields=["text"], purposes=["service"])
    probe = DataProbe(v, backend)
    yield v, probe
    probe.engine.dispose()


def keystore_deks(v: Vault) -> int:
    conn = sqlite3.connect(v.path / "keys.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM deks").fetchone()[0])
    finally:
        conn.close()


# -- a log write that fails ------------------------------------------------------------


def test_when_the_log_refuses_writes_no_access_returns_data_or_changes_anything(
    world: tuple[Vault, DataProbe],
) -> None:
    v, probe = world
    s = v.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Before"}, purpose="service")
    head, logs, recs, custs, deks = (
        v.head,
        probe.log_rows(),
        probe.record_rows(),
        probe.customer_rows(),
        keystore_deks(v),
    )
    probe.refuse_log_writes()

    attempts: list[Callable[[], object]] = [
        lambda: s.get(c, rid, purpose="service"),
        lambda: s.get_many([(c, rid)], purpose="service"),
        lambda: s.list_records(c, purpose="service"),
        lambda: s.put(c, "profile", {"name": "Never"}, purpose="service"),
        lambda: s.put_many([(c, "note", {"text": "never"})] * 3, purpose="service"),
        lambda: s.update(c, rid, {"name": "Changed"}, purpose="service"),
        lambda: s.delete(c, rid, purpose="service"),
        lambda: s.customer(c),
        lambda: s.list_customers(),
        lambda: s.add_customer(ref="never"),
        lambda: v.declare_kind("extra", fields=["a"], purposes=["p"]),
    ]
    for attempt in attempts:
        with pytest.raises(StorageError):
            attempt()
        assert v.head == head

    assert probe.log_rows() == logs
    assert probe.record_rows() == recs
    assert probe.customer_rows() == custs
    assert keystore_deks(v) == deks  # the refused customer's new keys were destroyed
    assert "extra" not in v.kinds()

    probe.allow_log_writes()
    rec = s.get(c, rid, purpose="service")
    assert rec.fields == {"name": "Before"} and rec.version == 1
    assert v.verify_log().ok


def test_a_denial_that_cannot_be_logged_still_returns_nothing(
    world: tuple[Vault, DataProbe],
) -> None:
    v, probe = world
    s = v.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "x"}, purpose="service")
    head = v.head
    probe.refuse_log_writes()
    # Not PurposeError/NotFoundError: a decision that cannot be logged is not reported
    # as made; the caller learns the log failed.
    with pytest.raises(StorageError):
        s.get(c, rid, purpose="marketing")
    with pytest.raises(StorageError):
        s.get(c, "rec_" + "a" * 26, purpose="service")
    assert v.head == head


def test_a_writer_holding_sqlite_longer_than_busy_timeout_gives_vault_busy_and_no_data(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        c = s.add_customer()
        rid = s.put(c, "profile", {"name": "Held"}, purpose="service")
    with Vault.open(tmp_path / "v", keyfile=keyfile, busy_timeout=0.5) as v:
        s = v.admin()
        head = v.head
        blocker = sqlite3.connect(tmp_path / "v" / "data.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(VaultBusyError):
                s.get(c, rid, purpose="service")
            assert time.monotonic() - started < 5
            with pytest.raises(VaultBusyError):
                s.put(c, "profile", {"name": "Never"}, purpose="service")
            with pytest.raises(VaultBusyError):
                s.delete(c, rid, purpose="service")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert v.head == head
        assert s.get(c, rid, purpose="service").fields == {"name": "Held"}
        assert len(s.list_records(c, purpose="service")) == 1


@pytest.mark.postgres
def test_a_writer_holding_the_postgres_log_head_gives_vault_busy_and_no_data(
    tmp_path: Path, keyfile: Path, pg_url: str
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=pg_url, busy_timeout=0.5) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        c = s.add_customer()
        rid = s.put(c, "profile", {"name": "Held"}, purpose="service")
        head = v.head
        blocker = create_engine(pg_url)
        try:
            with blocker.connect() as conn:
                conn.execute(text("SELECT seq FROM sv_log_head WHERE id = 1 FOR UPDATE"))
                started = time.monotonic()
                with pytest.raises(VaultBusyError):
                    s.get(c, rid, purpose="service")
                assert time.monotonic() - started < 5
                with pytest.raises(VaultBusyError):
                    s.put(c, "profile", {"name": "Never"}, purpose="service")
                conn.rollback()
        finally:
            blocker.dispose()
        assert v.head == head
        assert [r.id for r in s.list_records(c, purpose="service")] == [rid]


# -- one entry per record touched ------------------------------------------------------


def test_every_public_access_path_logs_exactly_one_entry_per_record_touched(
    world: tuple[Vault, DataProbe],
) -> None:
    v, probe = world
    s = v.admin()

    def logged(call: Callable[[], object], expected: int, action: str) -> Any:
        before = probe.log_rows()
        seq = v.head.seq
        result = call()
        new = probe.new_entries(seq)
        assert probe.log_rows() - before == expected == len(new), action
        assert [e["seq"] for e in new] == list(range(seq + 1, seq + 1 + expected))
        assert {e["action"] for e in new} == {action}
        return result

    def refused(call: Callable[[], object], error: type[Exception], action: str) -> None:
        seq = v.head.seq
        with pytest.raises(error):
            call()
        new = probe.new_entries(seq)
        assert [e["action"] for e in new] == [action]
        assert new[0]["outcome"] in {"denied", "error"}

    c = logged(lambda: s.add_customer(), 1, "customer.add")
    empty = logged(lambda: s.add_customer(), 1, "customer.add")
    rids = logged(
        lambda: s.put_many(
            [(c, "profile", {"name": f"n{i}"}) for i in range(5)], purpose="service"
        ),
        5,
        "record.put",
    )
    one = logged(lambda: s.put(c, "note", {"text": "t"}, purpose="service"), 1, "record.put")
    logged(lambda: s.get_many([(c, r) for r in rids[:3]], purpose="service"), 3, "record.get")
    logged(lambda: s.get(c, one, purpose="service"), 1, "record.get")
    listed = logged(lambda: s.list_records(c, purpose="service"), 6, "record.list")
    assert len(listed) == 6
    logged(lambda: s.list_records(c, purpose="billing"), 5, "record.list")
    logged(lambda: s.list_records(c, purpose="service", kind="note"), 1, "record.list")
    assert logged(lambda: s.list_records(empty, purpose="service"), 1, "record.list") == []
    logged(lambda: s.update(c, rids[0], {"name": "u"}, purpose="service"), 1, "record.update")
    logged(lambda: s.delete(c, rids[1], purpose="service"), 1, "record.delete")
    logged(lambda: s.customer(c), 1, "customer.show")
    logged(lambda: s.list_customers(), 1, "customer.list")
    logged(lambda: v.declare_kind("pet", fields=["a"], purposes=["p"]), 1, "schema.declare")
    logged(lambda: v.checkpoint(), 1, "audit.checkpoint")
    logged(lambda: s.checkpoint(), 1, "audit.checkpoint")
    logged(lambda: s.kinds(), 1, "schema.list")
    logged(lambda: s.hold(empty), 1, "customer.hold")
    logged(lambda: s.release(empty), 1, "customer.release")
    logged(lambda: s.set_retention(empty, None), 1, "customer.retain")
    logged(lambda: s.expired_customers(), 1, "customer.list")
    token = logged(lambda: s.add_principal("walker", role="operator"), 1, "principal.add")
    logged(lambda: s.list_principals(), 1, "principal.list")
    logged(lambda: v.login(token), 1, "auth.login")
    logged(lambda: s.revoke_principal("walker"), 1, "principal.revoke")
    logged(lambda: s.add_role(Role.build("walk-role", actions=["list"])), 1, "role.add")
    logged(lambda: s.list_roles(), 1, "role.list")
    logged(lambda: s.key_status(), 1, "keys.status")
    logged(lambda: s.backups(), 1, "backup.list")
    logged(lambda: s.audit_query(actor="admin"), 1, "audit.query")
    # One entry per record the subject access report decrypts (5 live records of c).
    logged(lambda: s.customer_report(c), 5, "customer.report")
    seq = v.head.seq
    s.shred(empty, reason="walk")
    assert [e["action"] for e in probe.new_entries(seq)] == [
        "customer.shred-intent",
        "customer.shred",
    ]
    logged(lambda: s.compact(), 1, "vault.compact")  # nothing to remove: one entry

    refused(lambda: s.get(c, rids[2], purpose="billing_x"), PurposeError, "record.get")
    refused(lambda: s.get(c, rids[1], purpose="service"), NotFoundError, "record.get")
    refused(lambda: s.customer("cus_" + "z" * 26), NotFoundError, "customer.show")
    refused(lambda: s.put(c, "note", {"text": "t"}, purpose="billing"), PurposeError, "record.put")

    # A refused batch logs one entry for the refusal, not one per record.
    seq = v.head.seq
    with pytest.raises(NotFoundError):
        s.get_many([(c, rids[0]), (c, rids[1]), (c, rids[2])], purpose="service")
    assert [e["outcome"] for e in probe.new_entries(seq)] == ["error"]

    # The entries of a batch name each record once, in the order touched.
    seq = v.head.seq
    s.get_many([(c, rids[4]), (c, rids[2]), (c, rids[4])], purpose="service")
    assert [e["record"] for e in probe.new_entries(seq)] == [rids[4], rids[2], rids[4]]
    assert v.verify_log().ok
