"""Reconciliation at open (issue 16, item 4): the keystore and the log must agree.

The finding replayed on real stores: shred customer X, put back the keys.db copy from
before the shred, edit X's row back to ``active`` with plain SQL, open. The vault must
erase X again before it serves (keys destroyed, row tombstoned, one entry by the vault
itself), keep everyone else readable, and never let an entry someone appended to the
log make it erase a customer (the shred entry's key fingerprints must name keys the
keystore holds). SQLite and PostgreSQL data stores; the keystore is always a file.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import dek_aad
from shredvault.vault import (
    AuditChainError,
    Auditor,
    ShreddedError,
    TamperError,
    Vault,
    verify_receipt,
)
from shredvault.vault.log import Event, encode_body, entry_hash
from shredvault.vault.reconcile import RECONCILED_SEQ_KEY

from processes import CRASH_EXIT_CODE, run_python
from residue import scan_keystore

PURPOSE = "service"
KEYSTORE_PARTS = ("keys.db", "keys.db-wal")

_SHRED = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, customer = sys.argv[1:5]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
vault.admin().shred(customer, reason="erasure request")
vault.close()
"""

_OPEN = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url = sys.argv[1:4]
Vault.open(path, keyfile=keyfile, data_url=data_url or None).close()
"""


# -- a vault with a target and bystanders, and the stores an insider can touch ------------


@dataclass
class World:
    path: Path
    keyfile: Path
    data_url: str | None
    target: str
    target_rids: list[str]
    tag: str
    bystanders: dict[str, str]  # customer -> one of its record ids
    pre_shred_keys: Path  # a copy of keys.db taken before the shred

    def open(self) -> Vault:
        return Vault.open(self.path, keyfile=self.keyfile, data_url=self.data_url)

    def args(self) -> list[str]:
        return [str(self.path), str(self.keyfile), self.data_url or ""]

    # The insider's side: plain SQL on the data store, files on the keystore.

    def sql(self, statement: str, **params: Any) -> list[Any]:
        if self.data_url is None:
            conn = sqlite3.connect(self.path / "data.db")
            try:
                with conn:  # sqlite3 takes :name parameters as well
                    return list(conn.execute(statement, params).fetchall())
            finally:
                conn.close()
        engine = create_engine(self.data_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return list(result.fetchall()) if result.returns_rows else []
        finally:
            engine.dispose()

    def set_state(self, customer: str, state: str) -> None:
        self.sql("UPDATE sv_customers SET state = :state WHERE id = :id", state=state, id=customer)

    def put_back_keystore(self, copy: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            (self.path / f"keys.db{suffix}").unlink(missing_ok=True)
        for name in KEYSTORE_PARTS:
            if (copy / name).exists():
                shutil.copy2(copy / name, self.path / name)

    def entries(self) -> list[dict[str, Any]]:
        with Auditor.open(self.path, data_url=self.data_url) as auditor:
            return list(auditor.entries())

    def recoveries(self) -> list[dict[str, Any]]:
        """Entries that record this vault erasing the target again."""
        return [
            e
            for e in self.entries()
            if e["subject"] == self.tag
            and e["detail"].get("recovered") is True
            and e["action"] in ("customer.shred", "customer.reconcile")
        ]

    def keystore_holds(self, customer: str) -> bool:
        conn = sqlite3.connect(f"file:{self.path / 'keys.db'}?mode=ro", uri=True)
        try:
            deks = conn.execute("SELECT COUNT(*) FROM deks WHERE customer_id = ?", (customer,))
            tags = conn.execute(
                "SELECT COUNT(*) FROM subject_tags WHERE customer_id = ?", (customer,)
            )
            return bool(deks.fetchone()[0] or tags.fetchone()[0])
        finally:
            conn.close()


def copy_keystore(path: Path, to: Path) -> Path:
    """keys.db as it is now (the vault closed), as an operator's file copy takes it."""
    to.mkdir()
    for name in KEYSTORE_PARTS:
        if (path / name).exists():
            shutil.copy2(path / name, to / name)
    return to


def build(tmp_path: Path, keyfile: Path, data_url: str | None) -> World:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile, data_url=data_url)
    try:
        v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
        s = v.admin()
        target = s.add_customer(ref="crm-target")
        rids = s.put_many(
            [(target, "profile", {"name": f"Target {i}"}) for i in range(3)], purpose=PURPOSE
        )
        bystanders = {}
        for i in range(3):
            cid = s.add_customer(ref=f"crm-{i}")
            bystanders[cid] = s.put(cid, "profile", {"name": f"Bystander {i}"}, purpose=PURPOSE)
        tag = v._ctx.keys.customer_keys([target])[target].subject_tag.hex()
    finally:
        v.close()
    copy = copy_keystore(tmp_path / "vault", tmp_path / "pre-shred")
    return World(tmp_path / "vault", keyfile, data_url, target, rids, tag, bystanders, copy)


def shred(world: World) -> None:
    with world.open() as v:
        v.admin().shred(world.target, reason="erasure request")


@pytest.fixture
def world(tmp_path: Path, keyfile: Path, backend: str | None) -> World:
    return build(tmp_path, keyfile, backend)


@dataclass
class Replayed:
    """The finding replayed, then the vault opened once (and closed)."""

    world: World
    secrets: dict[str, bytes]
    seq_before_open: int


def key_secrets(world: World) -> dict[str, bytes]:
    """The target's raw DEK, wrapped DEK and subject tag, straight from the pre-shred copy."""
    conn = sqlite3.connect(world.pre_shred_keys / "keys.db")
    try:
        ((version, epoch, wrapped),) = conn.execute(
            "SELECT version, epoch, wrapped FROM deks WHERE customer_id = ?", (world.target,)
        ).fetchall()
        ((tag,),) = conn.execute(
            "SELECT tag FROM subject_tags WHERE customer_id = ?", (world.target,)
        ).fetchall()
    finally:
        conn.close()
    with world.open() as v:  # any open vault's KEK unwraps it: same vault
        raw = v._ctx.keys._kek(epoch).open(
            wrapped, dek_aad(v.vault_id, world.target, version, epoch)
        )
    return {"raw DEK": raw, "wrapped DEK": wrapped, "tag": tag, "tag hex": tag.hex().encode()}


@pytest.fixture
def replayed(world: World) -> Replayed:
    secrets = key_secrets(world)
    shred(world)
    world.put_back_keystore(world.pre_shred_keys)
    world.set_state(world.target, "active")
    seq = len(world.entries())
    world.open().close()
    return Replayed(world, secrets, seq)


# -- the finding replayed ------------------------------------------------------------------


def test_the_finding_replayed_leaves_the_target_unreadable(replayed: Replayed) -> None:
    w = replayed.world
    with w.open() as v:
        s = v.admin()
        with pytest.raises(ShreddedError):
            s.get(w.target, w.target_rids[0], purpose=PURPOSE)
        with pytest.raises(ShreddedError):
            s.list_records(w.target, purpose=PURPOSE)
        with pytest.raises(ShreddedError):
            s.customer_report(w.target)
        assert s.customer(w.target).state == "shredded"


def test_the_finding_replayed_destroys_the_restored_keys(replayed: Replayed) -> None:
    assert not replayed.world.keystore_holds(replayed.world.target)


def test_the_finding_replayed_leaves_no_residue_of_the_keys(replayed: Replayed) -> None:
    assert scan_keystore(replayed.world.path, replayed.secrets) == {}


def test_the_finding_replayed_is_logged_once_by_the_vault(replayed: Replayed) -> None:
    w = replayed.world
    (entry,) = w.recoveries()
    assert entry["action"] == "customer.reconcile"
    assert (entry["actor"], entry["role"], entry["outcome"]) == ("vault", "system", "ok")
    detail = entry["detail"]
    assert detail["reason_code"] == "reconciled"
    assert detail["row_state"] == "active"
    (shred_entry,) = [
        e for e in w.entries() if e["action"] == "customer.shred" and e["subject"] == w.tag
    ]
    assert detail["shred_seq"] == shred_entry["seq"]
    assert detail["key_fingerprints"] == shred_entry["detail"]["key_fingerprints"]
    assert entry["seq"] > replayed.seq_before_open


def test_the_finding_replayed_keeps_the_bystanders_readable(replayed: Replayed) -> None:
    w = replayed.world
    with w.open() as v:
        s = v.admin()
        for i, (cid, rid) in enumerate(w.bystanders.items()):
            assert s.get(cid, rid, purpose=PURPOSE).fields == {"name": f"Bystander {i}"}
            assert w.keystore_holds(cid)


def test_the_log_verifies_after_reconciliation(replayed: Replayed) -> None:
    w = replayed.world
    with Auditor.open(w.path, data_url=w.data_url) as auditor:
        report = auditor.verify(strict=True)
    assert report.ok, report.message


def test_a_second_open_logs_nothing_more(replayed: Replayed) -> None:
    w = replayed.world
    before = len(w.entries())
    w.open().close()
    after = w.entries()[before:]
    assert [e["action"] for e in after] == ["vault.unlock"]
    assert len(w.recoveries()) == 1


def test_an_old_keystore_alone_is_reconciled_and_the_row_left_as_it_was(world: World) -> None:
    """No edit to the data store: the row already says shredded, the keys come back with
    the copy; they are destroyed again and the tombstone is not rewritten."""
    shred(world)
    row_before = world.sql(
        "SELECT state, ref, created, shredded FROM sv_customers WHERE id = :id", id=world.target
    )
    world.put_back_keystore(world.pre_shred_keys)
    world.open().close()
    assert not world.keystore_holds(world.target)
    (entry,) = world.recoveries()
    assert entry["detail"]["row_state"] == "shredded"
    row_after = world.sql(
        "SELECT state, ref, created, shredded FROM sv_customers WHERE id = :id", id=world.target
    )
    assert row_after == row_before


# -- only the intent logged -------------------------------------------------------------------


def crash_after_intent(world: World) -> None:
    done = run_python(_SHRED, *world.args(), world.target, crash_at="shred:after-intent")
    assert done.returncode == CRASH_EXIT_CODE, done.stderr


def test_an_intent_alone_with_an_old_keystore_and_an_edited_row_is_finished(world: World) -> None:
    crash_after_intent(world)
    world.put_back_keystore(world.pre_shred_keys)
    world.set_state(world.target, "active")
    with world.open() as v, pytest.raises(ShreddedError):
        v.admin().get(world.target, world.target_rids[0], purpose=PURPOSE)
    assert not world.keystore_holds(world.target)
    (entry,) = world.recoveries()
    (intent,) = [e for e in world.entries() if e["action"] == "customer.shred-intent"]
    # The shred never finished, so the recovery finishes it: a customer.shred entry
    # carrying the intent's detail, counted once like any shred.
    assert entry["action"] == "customer.shred"
    assert entry["detail"]["intent_seq"] == intent["seq"]
    assert entry["detail"]["key_fingerprints"] == intent["detail"]["key_fingerprints"]
    world.open().close()
    assert len(world.recoveries()) == 1


def test_an_intent_alone_with_an_edited_row_still_gets_its_receipt(world: World) -> None:
    """The live keystore still holds the receipt salt: after reconciliation the
    roll-forward finds the finishing entry by its commitment and issues the receipt."""
    crash_after_intent(world)
    world.set_state(world.target, "active")
    with world.open() as v:
        (receipt,) = v.recovered_receipts
        assert verify_receipt(receipt.to_json(), public_key=v.public_key).ok
    assert receipt.to_json()["customer"] == world.target
    assert not world.keystore_holds(world.target)
    assert len(world.recoveries()) == 1


# -- nothing to reconcile ------------------------------------------------------------------


def test_a_vault_with_nothing_to_reconcile_logs_nothing_extra(world: World) -> None:
    shred(world)
    before = len(world.entries())
    world.open().close()
    world.open().close()
    actions = [e["action"] for e in world.entries()[before:]]
    assert actions == ["vault.unlock", "vault.unlock"]


def test_the_mark_follows_the_head_and_an_old_copy_keeps_its_own(world: World) -> None:
    shred(world)
    head = len(world.entries())

    def mark(keys_dir: Path) -> int:
        conn = sqlite3.connect(f"file:{keys_dir / 'keys.db'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (RECONCILED_SEQ_KEY,)).fetchone()
        finally:
            conn.close()
        return int(row[0])

    assert mark(world.path) == head
    assert mark(world.pre_shred_keys) < head


def test_a_keystore_without_a_mark_verifies_the_whole_log(world: World) -> None:
    """The mark is where verification starts if it is before the anchor: an entry
    modified long before the anchor is found (with no mark: from the first entry)."""
    conn = sqlite3.connect(world.path / "keys.db")
    with conn:
        conn.execute("DELETE FROM meta WHERE k = ?", (RECONCILED_SEQ_KEY,))
    conn.close()
    (body,) = world.sql("SELECT body FROM sv_log WHERE seq = 2")[0]
    edited = bytes(body).replace(b'"actor":"admin"', b'"actor":"admix"')
    world.sql("UPDATE sv_log SET body = :body WHERE seq = 2", body=edited)
    with pytest.raises(AuditChainError) as caught:
        world.open()
    assert (caught.value.reason, caught.value.seq) == ("modified", 2)


# -- crashes during reconciliation ------------------------------------------------------------


@pytest.mark.parametrize("point", ["reconcile:after-entries", "reconcile:after-keys"])
def test_a_crash_during_reconciliation_is_finished_by_the_next_open(
    world: World, point: str
) -> None:
    shred(world)
    world.put_back_keystore(world.pre_shred_keys)
    world.set_state(world.target, "active")
    done = run_python(_OPEN, *world.args(), crash_at=point)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with world.open() as v, pytest.raises(ShreddedError):
        v.admin().get(world.target, world.target_rids[0], purpose=PURPOSE)
    assert not world.keystore_holds(world.target)
    assert len(world.recoveries()) == 1
    world.open().close()
    assert len(world.recoveries()) == 1


# -- what a data-store writer cannot do -----------------------------------------------------


def forge_shred_entry(world: World, tag: str) -> int:
    """Append a chain-consistent ``customer.shred`` entry naming ``tag``, as anyone
    who can write the data store can (no key is needed to extend a hash chain)."""
    ((seq, prev, ts),) = world.sql("SELECT seq, hash, ts FROM sv_log_head")
    seq += 1
    event = Event(
        "admin",
        "admin",
        "customer.shred",
        subject=tag,
        detail={"key_fingerprints": ["0" * 64], "reason": "forged", "records": 0},
    )
    body = encode_body(event, seq, ts, prev, event.detail, {})
    digest = entry_hash(body)
    world.sql(
        "INSERT INTO sv_log (seq, prev, hash, ts, actor, action, subject, record, outcome, body, "
        "target) VALUES (:seq, :prev, :hash, :ts, 'admin', 'customer.shred', :tag, NULL, 'ok', "
        ":body, :target)",
        seq=seq,
        prev=prev,
        hash=digest,
        ts=ts,
        tag=tag,
        body=body,
        target=f"subject:{tag}",
    )
    world.sql("UPDATE sv_log_head SET seq = :seq, hash = :hash", seq=seq, hash=digest)
    return seq


def tag_of(world: World, customer: str) -> str:
    conn = sqlite3.connect(f"file:{world.path / 'keys.db'}?mode=ro", uri=True)
    try:
        ((tag,),) = conn.execute(
            "SELECT tag FROM subject_tags WHERE customer_id = ?", (customer,)
        ).fetchall()
    finally:
        conn.close()
    return bytes(tag).hex()


def test_a_forged_shred_of_an_active_customer_refuses_the_open_and_destroys_nothing(
    world: World,
) -> None:
    victim = next(iter(world.bystanders))
    seq = forge_shred_entry(world, tag_of(world, victim))
    with pytest.raises(AuditChainError) as caught:
        world.open()
    assert (caught.value.reason, caught.value.seq) == ("unconfirmed shred", seq)
    assert world.keystore_holds(victim)
    assert len(world.entries()) == seq  # nothing was logged


def test_a_forged_shred_with_an_edited_row_is_refused_not_erased(world: World) -> None:
    victim, rid = next(iter(world.bystanders.items()))
    seq = forge_shred_entry(world, tag_of(world, victim))
    world.set_state(victim, "shredded")
    # The edited row fails its authenticator (vault/rowauth.py): refused as tampered.
    with world.open() as v, pytest.raises(TamperError):
        v.admin().get(victim, rid, purpose=PURPOSE)
    assert world.keystore_holds(victim)
    (noted,) = [e for e in world.entries() if e["action"] == "customer.reconcile"]
    assert noted["outcome"] == "error"
    assert noted["detail"]["reason_code"] == "unconfirmed_shred"
    assert noted["detail"]["claim_seq"] == seq
    world.open().close()  # noted once
    assert len([e for e in world.entries() if e["action"] == "customer.reconcile"]) == 1


def test_a_row_edited_to_shredded_is_refused_and_logged_as_a_conflict(world: World) -> None:
    victim, rid = next(iter(world.bystanders.items()))
    world.set_state(victim, "shredded")
    # The edited row fails its authenticator before its state is looked at.
    with world.open() as v:
        with pytest.raises(TamperError):
            v.admin().get(victim, rid, purpose=PURPOSE)
        with pytest.raises(TamperError):
            v.admin().customer_report(victim)
    assert world.keystore_holds(victim)
    refusals = [e for e in world.entries() if e["detail"].get("reason_code") == "row_tampered"]
    assert [(e["action"], e["outcome"]) for e in refusals] == [
        ("record.get", "error"),
        ("customer.report", "error"),
    ]
