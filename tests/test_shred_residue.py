"""No residue of a shredded customer's keys on disk (DESIGN §2, §7): after the shred,
the bytes of keys.db and its WAL/SHM/journal hold none of the customer's raw DEKs,
wrapped DEKs or subject tag, in a keystore of thousands of customers. A copy of the
vault made before the shred is the negative control: there the same scan finds the
keys, and they still open the ciphertext the copy's data store keeps."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from shredvault.keys import Envelope, SecretBytes, dek_aad, record_aad
from shredvault.vault import ShreddedError, Vault
from shredvault.vault.ids import CUSTOMER, new_ids
from shredvault.vault.store import records

from residue import scan_keystore

PURPOSE = "service"
FILLER_CUSTOMERS = 3000
TARGETS = 4


@dataclass
class Secrets:
    """What must not survive a shred, per target customer."""

    raw_deks: dict[str, bytes] = field(default_factory=dict)
    wrapped_deks: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, bytes] = field(default_factory=dict)

    def needles(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for cid in self.tags:
            out[f"{cid} raw DEK"] = self.raw_deks[cid]
            out[f"{cid} wrapped DEK"] = self.wrapped_deks[cid]
            out[f"{cid} subject tag"] = self.tags[cid]
            out[f"{cid} subject tag (hex)"] = self.tags[cid].hex().encode()
        return out


@dataclass
class Shredded:
    vault: Vault
    path: Path
    copy: Path
    keyfile: Path
    targets: list[str]
    rids: dict[str, str]
    bystander: str
    bystander_rid: str
    secrets: Secrets
    deks_before: int


def read_secrets(v: Vault, cids: list[str]) -> Secrets:
    """Wrapped rows straight from keys.db, unwrapped with the KEK of their epoch."""
    found = Secrets()
    conn = sqlite3.connect(v.path / "keys.db")
    try:
        for cid in cids:
            ((version, epoch, wrapped),) = conn.execute(
                "SELECT version, epoch, wrapped FROM deks WHERE customer_id = ?", (cid,)
            ).fetchall()
            ((tag,),) = conn.execute(
                "SELECT tag FROM subject_tags WHERE customer_id = ?", (cid,)
            ).fetchall()
            raw = v._ctx.keys._kek(epoch).open(wrapped, dek_aad(v.vault_id, cid, version, epoch))
            assert len(raw) == 32 and len(tag) == 16
            found.raw_deks[cid], found.wrapped_deks[cid], found.tags[cid] = raw, wrapped, tag
    finally:
        conn.close()
    return found


@pytest.fixture
def shredded(tmp_path: Path, keyfile: Path) -> Iterator[Shredded]:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    try:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        # Keystore rows for 3,000 other customers in one keystore transaction (through
        # add_customer each costs two fsynced commits): the keystore is as big as a real one.
        v._ctx.keys.create_customers(
            new_ids(CUSTOMER, FILLER_CUSTOMERS), "2030-01-01T00:00:00.000000Z"
        )
        targets = [s.add_customer() for _ in range(TARGETS)]
        rids = {
            c: s.put(c, "profile", {"name": f"Target {c[-4:]}"}, purpose=PURPOSE) for c in targets
        }
        bystander = s.add_customer()
        bystander_rid = s.put(bystander, "profile", {"name": "Bystander"}, purpose=PURPOSE)
        secrets = read_secrets(v, targets)
        deks_before = v._ctx.keys.store.count_deks()
        assert deks_before >= FILLER_CUSTOMERS + TARGETS + 1
        # A copy of the whole directory, as a backup would take it (both stores idle).
        shutil.copytree(v.path, tmp_path / "copy", ignore=shutil.ignore_patterns("*-shm"))
        for cid in targets:
            s.shred(cid, reason="erasure request")
        yield Shredded(
            v,
            v.path,
            tmp_path / "copy",
            keyfile,
            targets,
            rids,
            bystander,
            bystander_rid,
            secrets,
            deks_before,
        )
    finally:
        v.close()


def test_keystore_files_hold_no_shredded_key_bytes_while_the_vault_is_open(
    shredded: Shredded,
) -> None:
    assert scan_keystore(shredded.path, shredded.secrets.needles()) == {}


def test_keystore_files_hold_no_shredded_key_bytes_after_close(shredded: Shredded) -> None:
    shredded.vault.close()
    assert scan_keystore(shredded.path, shredded.secrets.needles()) == {}


def test_the_same_scan_finds_the_keys_in_a_copy_taken_before_the_shred(
    shredded: Shredded,
) -> None:
    needles = shredded.secrets.needles()
    found = {name for names in scan_keystore(shredded.copy, needles).values() for name in names}
    # The keystore stores DEKs wrapped and tags raw; raw DEKs and hex tags never reach it.
    expected = {n for n in needles if n.endswith(("wrapped DEK", "subject tag"))}
    assert found == expected


def test_shred_destroys_only_the_targets_keys(shredded: Shredded) -> None:
    store = shredded.vault._ctx.keys.store
    assert store.count_deks() == shredded.deks_before - TARGETS
    assert store.deks(shredded.targets) == []
    assert store.subject_tags(shredded.targets) == {}
    s = shredded.vault.admin()
    assert s.get(shredded.bystander, shredded.bystander_rid, purpose=PURPOSE).fields == {
        "name": "Bystander"
    }


def test_key_bytes_never_reach_the_data_store(shredded: Shredded) -> None:
    shredded.vault.close()
    needles = {n: b for n, b in shredded.secrets.needles().items() if n.endswith("DEK")}
    for path in sorted(shredded.path.glob("data.db*")):
        data = path.read_bytes()
        assert [n for n, b in needles.items() if b in data] == [], path.name


def test_a_pre_shred_copy_of_keys_db_still_opens_the_ciphertext_of_its_time(
    shredded: Shredded,
) -> None:
    """The receipt's scope statement, measured: the ciphertext is still in any copy of
    the data store made before the shred (the live one deleted the rows at the shred),
    and the copy's keystore still holds a key that opens it, while the live keystore
    does not."""
    live = shredded.vault
    for cid in shredded.targets:
        assert (
            live._ctx.data.read(
                lambda c, cid=cid: c.execute(
                    select(records.c.id).where(records.c.customer_id == cid)
                ).all()
            )
            == []
        )
    with Vault.open(shredded.copy, keyfile=shredded.keyfile) as copy:
        for cid in shredded.targets:
            rid = shredded.rids[cid]
            blob, version, record_version = copy._ctx.data.read(
                lambda c, rid=rid: c.execute(
                    select(records.c.ciphertext, records.c.dek_version, records.c.version).where(
                        records.c.id == rid
                    )
                ).one()
            )
            (dek,) = copy._ctx.keys.store.deks([cid])
            raw = copy._ctx.keys._kek(dek.epoch).open(
                dek.wrapped, dek_aad(copy.vault_id, cid, dek.version, dek.epoch)
            )
            assert raw == shredded.secrets.raw_deks[cid]
            plain = Envelope(SecretBytes(raw), version).open(
                bytes(blob),
                record_aad(live.vault_id, cid, rid, "profile", version, record_version),
            )
            assert json.loads(plain) == {"name": f"Target {cid[-4:]}"}
            assert live._ctx.keys.store.deks([cid]) == []


def test_a_pre_shred_copy_still_serves_the_records_while_the_live_vault_cannot(
    shredded: Shredded,
) -> None:
    cid = shredded.targets[0]
    rid = shredded.rids[cid]
    with pytest.raises(ShreddedError):
        shredded.vault.admin().get(cid, rid, purpose=PURPOSE)
    with Vault.open(shredded.copy, keyfile=shredded.keyfile) as copy:
        record = copy.admin().get(cid, rid, purpose=PURPOSE)
    assert record.fields == {"name": f"Target {cid[-4:]}"}


# -- erasure in place at scale: shreds interleaved with inserts ----------------------------


def shred_among_inserts(v: Vault, customers: int, shreds: int) -> tuple[dict[str, bytes], int]:
    """Grow the keystore to ``customers`` in batches, shredding a real customer (with a
    record) between batches, and scan the keystore's files after every shred for every
    shredded customer so far: raw and wrapped DEKs, subject tag (raw and hex) and the
    receipt's salt. Returns (needles of the shredded, keystore rows of one survivor)."""
    s = v.admin()
    batch = max(1, (customers - 2 * shreds) // shreds)
    needles: dict[str, bytes] = {}
    survivor = s.add_customer()
    for _ in range(shreds):
        v._ctx.keys.create_customers(new_ids(CUSTOMER, batch), "2030-01-01T00:00:00.000000Z")
        cid = s.add_customer()
        s.put(cid, "profile", {"name": "Target"}, purpose=PURPOSE)
        needles.update({k: b for k, b in read_secrets(v, [cid]).needles().items()})
        receipt = s.shred(cid, reason="erasure request")
        needles[f"{cid} receipt salt"] = bytes.fromhex(receipt.document["salt"])
        assert scan_keystore(v.path, needles) == {}
    return needles, survivor


@pytest.mark.parametrize(
    ("customers", "shreds"),
    [(2_000, 12), pytest.param(10_000, 40, marks=pytest.mark.slow)],
    ids=["2k", "10k"],
)
def test_shreds_among_inserts_leave_no_key_material_without_any_rebuild(
    tmp_path: Path, keyfile: Path, customers: int, shreds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No scrub epoch closes during the run: erasure in place alone must do it.
    monkeypatch.setattr("shredvault.keys.erasure.scrub_every", lambda keys: 10**9)
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        epoch = v._ctx.keys.scrub_epoch
        needles, survivor = shred_among_inserts(v, customers, shreds)
        assert v._ctx.keys.store.count_deks() >= customers - 3 * shreds
        # No rebuild ran: erasure in place alone removed every byte.
        assert v._ctx.keys.scrub_epoch == epoch
        (row,) = v._ctx.keys.store.deks([survivor])
        assert scan_keystore(v.path, {"survivor": row.wrapped}) == {"keys.db": ["survivor"]}
    assert scan_keystore(tmp_path / "vault", needles) == {}


def test_the_scrub_epoch_closes_at_the_next_open_and_removes_the_filler_rows(
    tmp_path: Path, keyfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shredvault.keys.erasure.scrub_every", lambda keys: 10**9)
    with Vault.create(tmp_path / "vault", keyfile=keyfile) as v:
        s = v.admin()
        cid = s.add_customer()
        epoch = v._ctx.keys.scrub_epoch
        receipt = s.shred(cid, reason="erasure request")
        assert receipt.document["v"] == 2
        erasure = receipt.document["entry"]["detail"]["keystore_erasure"]
        assert erasure == {"method": "in-place/v1", "scrub_epoch": epoch}
        assert v._ctx.keys.store.scrub_state().pending == 1
    conn = sqlite3.connect(tmp_path / "vault" / "keys.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM deks WHERE customer_id >= '~'").fetchone() == (1,)
    finally:
        conn.close()
    with Vault.open(tmp_path / "vault", keyfile=keyfile) as v:
        assert v._ctx.keys.scrub_epoch == epoch + 1
        assert v._ctx.keys.store.scrub_state().pending == 0
    conn = sqlite3.connect(tmp_path / "vault" / "keys.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM deks WHERE customer_id >= '~'").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM subject_tags").fetchone() == (0,)
    finally:
        conn.close()
