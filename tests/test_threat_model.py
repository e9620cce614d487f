"""Claims of docs/threat-model.md that no other test shows, on real SQLite vaults
(keyfiles, so no Argon2id wait). Each test names the table row it backs.

Tests marked ``xfail(strict=True)`` state a property the code does NOT hold yet, with the
issue that is to make it hold. They fail today on their final assertion only
(``raises=AssertionError``: an error while setting up is a real failure). When one starts
passing, pytest reports it as XPASS and fails: remove the marker and move that row of
docs/threat-model.md from "not yet" to "cannot"."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from shredvault.keys import SecretBytes, Signer
from shredvault.vault import (
    Auditor,
    ShreddedError,
    ShredSource,
    Vault,
    VaultError,
    read_anchor,
    restore_backup,
)
from shredvault.vault.canonical import canonical
from shredvault.vault.markdown import render_markdown

from clirun import make_run

PURPOSE = "service"
LOG_PREFIX = b"shredvault/log/v1\n"


@dataclass
class World:
    """A closed vault: two customers with one record each, and an auditor's anchor
    (a signed checkpoint kept outside the vault) taken before the last few entries."""

    root: Path
    keyfile: Path
    public_key: bytes
    customers: dict[str, str]  # customer id -> record id
    refs: dict[str, str]  # customer id -> ref
    anchor_file: Path

    @property
    def data_db(self) -> Path:
        return self.root / "data.db"

    @property
    def keys_db(self) -> Path:
        return self.root / "keys.db"

    def open(self) -> Vault:
        return Vault.open(self.root, keyfile=self.keyfile)


@pytest.fixture
def world(tmp_path: Path, keyfile: Path) -> World:
    root = tmp_path / "vault"
    customers: dict[str, str] = {}
    refs: dict[str, str] = {}
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        for i, name in enumerate(["Ama Owusu", "Lin Hui"]):
            c = s.add_customer(ref=f"crm-{i}")
            customers[c] = s.put(c, "profile", {"name": name}, purpose=PURPOSE)
            refs[c] = f"crm-{i}"
        anchor_file = tmp_path / "auditor-anchor.json"
        anchor_file.write_text(json.dumps(v.checkpoint().to_json()))
        for c, rid in customers.items():
            s.get(c, rid, purpose=PURPOSE)
        public_key = v.public_key
    return World(root, keyfile, public_key, customers, refs, anchor_file)


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read a store with nothing but sqlite3, as someone holding only the file would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def execute(db: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def read_as(world: World, token: str | None = None) -> dict[str, Any]:
    """Open the vault and read the first customer's record, as ``token``'s principal
    (else as the administrator)."""
    cid, rid = next(iter(world.customers.items()))
    with world.open() as v:
        session = v.admin() if token is None else v.login(token)
        return session.get(cid, rid, purpose=PURPOSE).fields


def refused(attempt: Callable[[], object]) -> bool:
    """True when the vault refuses ``attempt`` with one of its errors."""
    try:
        attempt()
    except VaultError:
        return True
    return False


def rewrite_log(db: Path, signer: Signer, *, at_seq: int) -> bytes:
    """Change entry ``at_seq`` of a closed data.db, re-chain every later entry, re-sign
    every checkpoint with ``signer`` and fix the head row and the stored public key:
    the whole log rewritten by whoever holds ``signer``. Returns the newest re-signed
    checkpoint as JSON, in the form of an anchor file."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            stored = conn.execute("SELECT seq, body FROM sv_log ORDER BY seq").fetchall()
            entries = [json.loads(body) for _seq, body in stored]
            entries[at_seq - 1]["purpose"] = "rewritten"
            hashes: dict[int, str] = {}
            prev = "0" * 64
            if at_seq > 1:
                (prev,) = conn.execute(
                    "SELECT hash FROM sv_log WHERE seq = ?", (at_seq - 1,)
                ).fetchone()
            for entry in entries[at_seq - 1 :]:
                entry["prev"] = prev
                body = canonical(entry)
                prev = hashlib.sha256(LOG_PREFIX + body).hexdigest()
                hashes[entry["seq"]] = prev
                conn.execute(
                    "UPDATE sv_log SET prev = ?, hash = ?, body = ? WHERE seq = ?",
                    (entry["prev"], prev, body, entry["seq"]),
                )
            newest = b""
            for seq, body in conn.execute("SELECT seq, body FROM sv_checkpoints ORDER BY seq"):
                cp = json.loads(body)
                cp["head"] = hashes.get(seq, cp["head"])
                signature = signer.sign(canonical(cp))
                conn.execute(
                    "UPDATE sv_checkpoints SET body = ?, signature = ? WHERE seq = ?",
                    (canonical(cp), signature, seq),
                )
                newest = json.dumps({"checkpoint": cp, "signature": signature.hex()}).encode()
            conn.execute("UPDATE sv_log_head SET hash = ? WHERE id = 1", (prev,))
            conn.execute(
                "UPDATE sv_meta SET v = ? WHERE k = 'public_key'", (signer.public_key.hex(),)
            )
    finally:
        conn.close()
    return newest


# -- someone with only keys.db -----------------------------------------------------------


def test_keys_db_alone_maps_each_live_customer_id_to_the_subject_tag_of_its_log_entries(
    world: World,
) -> None:
    """Row "only keys.db": subject tags are stored raw, so the keystore file alone (no
    secret) names the customer behind every log entry of a customer not yet shredded."""
    tags = {
        cid: bytes(tag).hex()
        for cid, tag in rows(world.keys_db, "SELECT customer_id, tag FROM subject_tags")
    }
    assert set(tags) == set(world.customers)
    subjects = {
        s for (s,) in rows(world.data_db, "SELECT subject FROM sv_log WHERE subject IS NOT NULL")
    }
    assert set(tags.values()) == subjects
    # ... and nothing in it opens a record: no field value is there.
    blob = world.keys_db.read_bytes()
    assert b"Ama Owusu" not in blob and b"Lin Hui" not in blob


# -- someone with only data.db ------------------------------------------------------------


def test_data_db_alone_links_a_live_customers_log_entries_to_its_id_and_ref(
    world: World,
) -> None:
    """Row "only data.db, reading": log entries name a subject tag, not the customer, but
    they also name record ids, and the record rows name the customer: for a customer not
    yet shredded, data.db alone (no keystore, no secret) links the two."""
    linked = dict(
        rows(
            world.data_db,
            "SELECT DISTINCT r.customer_id, l.subject FROM sv_log l "
            "JOIN sv_records r ON r.id = l.record WHERE l.subject IS NOT NULL",
        )
    )
    tags = {
        cid: bytes(tag).hex()
        for cid, tag in rows(world.keys_db, "SELECT customer_id, tag FROM subject_tags")
    }
    assert linked == tags  # the keystore only confirms what data.db already said
    assert dict(rows(world.data_db, "SELECT id, ref FROM sv_customers")) == world.refs


# -- a token -------------------------------------------------------------------------------


def test_a_token_without_the_vault_secret_opens_nothing_at_the_command_line(
    world: World,
) -> None:
    """Row "a token": the CLI needs the passphrase or keyfile to open the vault; a token
    alone is a usage error (exit 2) and prints nothing of the record."""
    with world.open() as v:
        token = v.admin().add_principal("ops-1", role="operator")
    cid, rid = next(iter(world.customers.items()))
    run = make_run(world.root, None)
    result = run("record", "get", cid, rid, "--purpose", PURPOSE, SHREDVAULT_TOKEN=token)
    assert result.exit_code == 2, result.output
    assert "Ama Owusu" not in result.output and "Lin Hui" not in result.output


# -- the passphrase / keyfile holder, and both files put back ------------------------------


def test_the_secret_holder_can_rewrite_and_re_sign_the_log_and_only_an_outside_anchor_shows_it(
    world: World,
) -> None:
    """Row "the admin passphrase/keyfile": with the signing key, the whole log can be
    rewritten and re-signed, and the keystore's anchor replaced; the vault opens and
    verifies it. Only a checkpoint kept outside (the auditor's anchor) shows the fork."""
    with world.open() as v:
        signer = v._ctx.keys.signer  # the key a passphrase or keyfile holder unwraps
    anchor_seq = read_anchor(world.anchor_file).seq
    newest = json.loads(rewrite_log(world.data_db, signer, at_seq=anchor_seq - 1))
    cp = newest["checkpoint"]
    execute(
        world.keys_db,
        "UPDATE anchor SET seq = ?, body = ?, signature = ? WHERE id = 1",
        cp["seq"],
        canonical(cp),
        bytes.fromhex(newest["signature"]),
    )
    with Auditor.open(world.root) as auditor:
        assert auditor.verify(public_key=world.public_key).ok
        outside = auditor.verify(public_key=world.public_key, anchor=read_anchor(world.anchor_file))
    assert (outside.ok, outside.reason) == (False, "forked")
    with world.open() as v:  # the vault itself notices nothing
        assert v.verify_log().ok


def test_data_db_rewritten_and_re_signed_under_a_new_key_verifies_unless_the_key_is_pinned(
    world: World, tmp_path: Path
) -> None:
    """Rows "only data.db, editing" and "the log": a data.db holder (a DBA) can rewrite
    the log under a key of their own and store that key in data.db. Verified from data.db
    alone without a pinned key, it passes; with the vault's public key, it fails."""
    alone = tmp_path / "data-only"
    alone.mkdir()
    shutil.copy(world.data_db, alone / "data.db")
    rewrite_log(alone / "data.db", Signer(SecretBytes(secrets.token_bytes(32))), at_seq=3)
    with Auditor.open(alone) as auditor:
        assert auditor.verify().ok  # the key came from the same file
        pinned = auditor.verify(public_key=world.public_key)
    assert (pinned.ok, pinned.reason) == (False, "bad signature")


def test_both_files_rewritten_under_a_new_key_pass_an_unpinned_verify_but_not_the_unlock(
    world: World,
) -> None:
    """Row "both files, without the secret": the public key and the anchor sit unencrypted
    in keys.db, so a writer of both files can swap them for a key of their own and
    rewrite the log under it. `audit verify` without a pinned key passes; a pinned key
    and the next unlock (which checks the key against the wrapped seed) do not."""
    forger = Signer(SecretBytes(secrets.token_bytes(32)))
    newest = json.loads(rewrite_log(world.data_db, forger, at_seq=3))
    cp = newest["checkpoint"]
    execute(world.keys_db, "UPDATE signing SET public_key = ?", forger.public_key)
    execute(
        world.keys_db,
        "UPDATE anchor SET seq = ?, body = ?, signature = ? WHERE id = 1",
        cp["seq"],
        canonical(cp),
        bytes.fromhex(newest["signature"]),
    )
    with Auditor.open(world.root) as auditor:
        assert auditor.verify().ok
        pinned = auditor.verify(public_key=world.public_key)
    assert (pinned.ok, pinned.reason) == (False, "bad signature")
    assert refused(world.open)


def test_the_members_of_a_backup_archive_open_as_a_vault_with_no_replay(
    world: World, tmp_path: Path
) -> None:
    """Row "a backup archive": the archive is a tar file; with the secret of its time,
    its two stores open as a vault directly. The replay of later shreds binds only
    those who restore through `backup restore`."""
    cid, rid = next(iter(world.customers.items()))
    archive = tmp_path / "nightly.svb"
    with world.open() as v:
        v.admin().backup(str(archive))
        v.admin().shred(cid, reason="erasure request")
    copy = tmp_path / "from-the-archive"
    copy.mkdir()
    with tarfile.open(archive, "r:") as tar:
        for name in ("data.db", "keys.db"):
            member = tar.extractfile(name)
            assert member is not None
            (copy / name).write_bytes(member.read())
    with Vault.open(copy, keyfile=world.keyfile) as v:
        assert v.admin().get(cid, rid, purpose=PURPOSE).fields == {"name": "Ama Owusu"}


def test_an_older_pair_of_both_files_opens_and_only_an_outside_anchor_shows_the_rollback(
    world: World, tmp_path: Path
) -> None:
    """Rows "both files" and "the log": putting back an older copy of data.db AND keys.db
    together is a consistent older vault. The vault cannot tell; an anchor kept outside,
    taken after the copy, can."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("data.db", "keys.db"):
        shutil.copy(world.root / name, old / name)
    with world.open() as v:
        v.admin().add_customer(ref="after-the-copy")
        later = tmp_path / "later-anchor.json"
        later.write_text(json.dumps(v.checkpoint().to_json()))
    for name in ("data.db", "keys.db"):
        for suffix in ("", "-wal", "-shm"):
            (world.root / f"{name}{suffix}").unlink(missing_ok=True)
        shutil.copy(old / name, world.root / name)
    with world.open() as v:
        assert v.verify_log().ok
        assert "after-the-copy" not in {c.ref for c in v.admin().list_customers()}
    with Auditor.open(world.root) as auditor:
        report = auditor.verify(public_key=world.public_key, anchor=read_anchor(later))
    assert (report.ok, report.reason) == (False, "truncated")


# -- not yet: the data store is not authenticated (issue 16) -------------------------------


def test_a_role_raised_in_data_db_is_not_obeyed(world: World) -> None:
    """Row "only data.db, editing": an auditor's row set to admin reads plaintext."""
    with world.open() as v:
        token = v.admin().add_principal("audra", role="auditor")
    execute(world.data_db, "UPDATE sv_principals SET role = 'admin' WHERE name = 'audra'")
    assert refused(lambda: read_as(world, token))


def test_a_principal_row_written_without_the_vault_key_cannot_log_in(world: World) -> None:
    """Row "only data.db, editing": token hashes are plain SHA-256, so a row inserted
    with the hash of a token of the writer's choosing logs in as admin."""
    lookup = secrets.token_hex(6)
    token = f"svp_{lookup}_{secrets.token_urlsafe(32)}"
    execute(
        world.data_db,
        "INSERT INTO sv_principals (name, lookup, role, token_hash, expires, revoked, created) "
        "VALUES ('mallory', ?, 'admin', ?, NULL, 0, '2026-01-01T00:00:00.000000Z')",
        lookup,
        hashlib.sha256(token.encode()).hexdigest(),
    )
    assert refused(lambda: read_as(world, token))


def test_an_older_ciphertext_of_a_record_written_back_is_not_served(world: World) -> None:
    """Row "only data.db, editing": the record AAD binds the record id, not its version,
    so an older ciphertext of the same record is served as current."""
    cid, rid = next(iter(world.customers.items()))
    ((old,),) = rows(world.data_db, "SELECT ciphertext FROM sv_records WHERE id = ?", rid)
    with world.open() as v:
        v.admin().update(cid, rid, {"name": "Ama Mensah"}, purpose=PURPOSE)
    execute(world.data_db, "UPDATE sv_records SET ciphertext = ? WHERE id = ?", old, rid)
    served: list[dict[str, Any]] = []
    assert refused(lambda: served.append(read_as(world))) or served == [{"name": "Ama Mensah"}]


def test_an_old_keys_db_put_back_loses_the_keys_of_customers_the_log_shows_shredded(
    world: World, tmp_path: Path
) -> None:
    """Row "an old copy of keys.db put back": the vault should see in its log that the
    customer was shredded and destroy the keys again (issue 16, reconciliation at open)."""
    old_keys = tmp_path / "keys-before-the-shred.db"
    shutil.copy(world.keys_db, old_keys)
    cid, rid = next(iter(world.customers.items()))
    with world.open() as v:
        v.admin().shred(cid, reason="erasure request")
    for suffix in ("", "-wal", "-shm"):
        (world.root / f"keys.db{suffix}").unlink(missing_ok=True)
    shutil.copy(old_keys, world.keys_db)
    try:
        v = world.open()
    except VaultError:
        return  # refusing to open also keeps the customer shredded
    with v, pytest.raises(ShreddedError):  # today the state row still refuses reads ...
        v.admin().get(cid, rid, purpose=PURPOSE)
    # ... but the keys came back with the old file, and the vault keeps them.
    assert rows(world.keys_db, "SELECT customer_id FROM deks WHERE customer_id = ?", cid) == []


# -- not yet: a restore can take an empty source (issue 17) --------------------------------


def test_a_restore_from_an_empty_folder_of_receipts_does_not_serve_a_later_shred(
    world: World, tmp_path: Path
) -> None:
    """Row "a backup archive": a folder of receipts is never a complete source."""
    cid, rid = next(iter(world.customers.items()))
    archive = tmp_path / "nightly.svb"
    with world.open() as v:
        v.admin().backup(str(archive))
        v.admin().shred(cid, reason="erasure request")
    empty = tmp_path / "receipts"
    empty.mkdir()

    def restore_then_read() -> None:
        restore_backup(
            archive,
            tmp_path / "restored",
            keyfile=world.keyfile,
            source=ShredSource(receipts_dir=empty),
        )
        with Vault.open(tmp_path / "restored", keyfile=world.keyfile) as r:
            r.admin().get(cid, rid, purpose=PURPOSE)

    assert refused(restore_then_read)


# -- not yet: reports render values as they are (issue 18) ---------------------------------


def test_a_field_value_cannot_put_html_into_the_markdown_report(world: World) -> None:
    """Row "operator token": a value it writes must be inert in a rendered report."""
    cid, rid = next(iter(world.customers.items()))
    with world.open() as v:
        s = v.admin()
        s.update(cid, rid, {"name": "<img src=x onerror=alert(1)>"}, purpose=PURPOSE)
        page = render_markdown(s.customer_report(cid))
    # Rendered by a standard CommonMark library (raw HTML on, as most have it), the
    # value is text, not a tag (tests/test_markdown_safety.py tries many more).
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(page)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
