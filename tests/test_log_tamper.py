"""Tampering with the access log (DESIGN §6) is found, with the right reason and the
first bad seq: on an export (verify_export) and in the database (Auditor.verify and
Vault.open). Modified, deleted, inserted, reordered, truncated (with and without an
anchor), rewritten under another key, a foreign checkpoint, and a rolled-back data.db."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shredvault.keys import SecretBytes, Signer
from shredvault.vault import (
    AuditChainError,
    Auditor,
    Checkpoint,
    Vault,
    VerificationError,
    VerifyReport,
    read_anchor,
    verify_export,
)
from shredvault.vault.canonical import canonical

PREFIX = b"shredvault/log/v1\n"


def sha(body: bytes) -> str:
    return hashlib.sha256(PREFIX + body).hexdigest()


@dataclass
class Sealed:
    """A closed SQLite vault with a known log layout and an auditor's anchor file."""

    path: Path
    keyfile: Path
    public_key: bytes
    vault_id: str
    anchor_file: Path
    head_seq: int
    mid_checkpoint: int  # seq of a checkpoint in the middle of the log

    @property
    def db(self) -> Path:
        return self.path / "data.db"

    def anchor(self) -> Checkpoint:
        return read_anchor(self.anchor_file)


def build_vault(root: Path, keyfile: Path, *, before: int = 10, after: int = 6) -> Sealed:
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        c = s.add_customer()
        s.put_many([(c, "profile", {"name": f"n{i}"}) for i in range(before)], purpose="service")
        mid = v.checkpoint().seq
        for i in range(after):
            s.put(c, "profile", {"name": f"m{i}"}, purpose="service")
        last = v.checkpoint()
        anchor_file = root.parent / f"{root.name}-anchor.json"
        anchor_file.write_text(json.dumps(last.to_json()))
        return Sealed(root, keyfile, v.public_key, v.vault_id, anchor_file, last.seq, mid)


@pytest.fixture
def sealed(tmp_path: Path, keyfile: Path) -> Sealed:
    return build_vault(tmp_path / "v", keyfile)


# -- export helpers --------------------------------------------------------------------


@dataclass
class Export:
    header: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    entries: list[dict[str, Any]]  # with "hash"

    def write(self, path: Path, *, raw_entries: list[bytes] | None = None) -> Path:
        lines = [canonical(self.header)] + [canonical(c) for c in self.checkpoints]
        lines += raw_entries if raw_entries is not None else [canonical(e) for e in self.entries]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path


def export_of(sealed: Sealed, tmp_path: Path) -> Export:
    out = tmp_path / "export.jsonl"
    with Auditor.open(sealed.path) as auditor, out.open("wb") as handle:
        auditor.export(handle)
    lines = out.read_bytes().splitlines()
    header = json.loads(lines[0])
    cps = [json.loads(x) for x in lines[1:] if x.startswith(b'{"checkpoint":')]
    entries = [json.loads(x) for x in lines[1:] if not x.startswith(b'{"checkpoint":')]
    return Export(header, cps, entries)


def body_of(entry: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in entry.items() if k != "hash"})


def rechain(entries: list[dict[str, Any]], start: int = 0) -> None:
    """Recompute prev links and hashes from index ``start`` on (what an attacker without
    the signing key can do)."""
    for i in range(start, len(entries)):
        if i > 0:
            entries[i]["prev"] = entries[i - 1]["hash"]
        entries[i]["hash"] = sha(body_of(entries[i]))


def resign(checkpoint_body: dict[str, Any], signer: Signer) -> dict[str, Any]:
    return {
        "checkpoint": checkpoint_body,
        "signature": signer.sign(canonical(checkpoint_body)).hex(),
    }


def fresh_signer() -> Signer:
    return Signer(SecretBytes(os.urandom(32)))


def check(export: Export, tmp_path: Path, sealed: Sealed, **kwargs: Any) -> VerifyReport:
    return verify_export(
        export.write(tmp_path / "tampered.jsonl"), public_key=sealed.public_key, **kwargs
    )


def assert_bad(report: VerifyReport, reason: str, seq: int) -> None:
    assert not report.ok
    assert (report.reason, report.bad_seq) == (reason, seq), report.message


# -- exports ------------------------------------------------------------------------------


def test_an_untouched_export_verifies_with_the_public_key_and_the_anchor(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    report = check(ex, tmp_path, sealed, anchor=sealed.anchor())
    assert report.ok, report.message
    assert report.last_seq == sealed.head_seq == report.anchor_seq
    assert report.last_checkpoint == sealed.head_seq


def test_export_a_modified_field_is_found_at_its_seq(sealed: Sealed, tmp_path: Path) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries[5]["purpose"] = "marketing"
    assert_bad(check(ex, tmp_path, sealed), "modified", 6)


def test_export_a_modified_and_rehashed_entry_breaks_the_next_link(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries[5]["detail"] = {"kind": "profile", "fields": []}
    ex.entries[5]["hash"] = sha(body_of(ex.entries[5]))
    assert_bad(check(ex, tmp_path, sealed), "modified", 6)


def test_export_a_rewritten_tail_is_caught_by_the_next_signed_checkpoint(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries[5]["actor"] = "mallory"
    rechain(ex.entries, 5)
    ex.header["head"] = ex.entries[-1]["hash"]
    assert_bad(check(ex, tmp_path, sealed), "forked", sealed.mid_checkpoint)


def test_export_a_deleted_entry_is_found(sealed: Sealed, tmp_path: Path) -> None:
    ex = export_of(sealed, tmp_path)
    del ex.entries[6]
    assert_bad(check(ex, tmp_path, sealed), "deleted", 7)


def test_export_a_deleted_first_entry_is_found(sealed: Sealed, tmp_path: Path) -> None:
    ex = export_of(sealed, tmp_path)
    del ex.entries[0]
    assert_bad(check(ex, tmp_path, sealed), "deleted", 1)


def test_export_a_duplicated_entry_is_found_as_inserted(sealed: Sealed, tmp_path: Path) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries.insert(7, dict(ex.entries[6]))
    assert_bad(check(ex, tmp_path, sealed), "inserted", 7)


def test_export_a_forged_entry_chained_in_is_found_as_inserted(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    forged = {**ex.entries[6], "seq": 8, "prev": ex.entries[6]["hash"], "action": "record.get"}
    forged["hash"] = sha(body_of(forged))
    ex.entries.insert(7, forged)  # between the real 7 and the real 8
    assert_bad(check(ex, tmp_path, sealed), "inserted", 8)


def test_export_two_swapped_entries_are_found_as_reordered(sealed: Sealed, tmp_path: Path) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries[5], ex.entries[6] = ex.entries[6], ex.entries[5]
    assert_bad(check(ex, tmp_path, sealed), "reordered", 6)


def test_export_a_cut_tail_is_found_by_the_checkpoints_that_cover_it(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries = ex.entries[:-3]
    keep = sealed.head_seq - 3
    assert_bad(check(ex, tmp_path, sealed), "truncated", keep + 1)


def test_export_a_cut_tail_with_header_rewritten_is_found_by_the_export_header_or_checkpoints(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    keep = sealed.head_seq - 3
    ex.entries = ex.entries[:keep]
    ex.checkpoints = [c for c in ex.checkpoints if c["checkpoint"]["seq"] <= keep]
    assert_bad(check(ex, tmp_path, sealed), "truncated", keep + 1)  # the header still says more


def test_export_a_clean_tail_cut_is_caught_only_with_an_anchor(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    keep = sealed.head_seq - 3
    ex.entries = ex.entries[:keep]
    ex.checkpoints = [c for c in ex.checkpoints if c["checkpoint"]["seq"] <= keep]
    ex.header["head_seq"], ex.header["head"] = keep, ex.entries[-1]["hash"]
    # Without an anchor nothing in the export itself can tell (the documented limit) ...
    assert check(ex, tmp_path, sealed).ok
    # ... the auditor's anchor from Vault.checkpoint() can.
    assert_bad(check(ex, tmp_path, sealed, anchor=sealed.anchor()), "truncated", keep + 1)


def test_export_a_cut_tail_with_checkpoints_dropped_and_regrown_fails_against_the_header(
    sealed: Sealed, tmp_path: Path
) -> None:
    """A tail cut with its checkpoints, then grown back to the header's head_seq with
    entries of the cutter's own: every link holds and no checkpoint covers them, so
    only the header's head hash tells (docs/log-format.md §6 step 3)."""
    ex = export_of(sealed, tmp_path)
    keep = sealed.head_seq - 3
    ex.checkpoints = [c for c in ex.checkpoints if c["checkpoint"]["seq"] <= keep]
    ex.entries = ex.entries[:keep]
    for seq in range(keep + 1, sealed.head_seq + 1):
        ex.entries.append({**ex.entries[-1], "seq": seq, "action": "record.list"})
    rechain(ex.entries, keep)
    assert ex.header["head_seq"] == ex.entries[-1]["seq"] == sealed.head_seq
    assert_bad(check(ex, tmp_path, sealed), "forked", sealed.head_seq)
    # Only cut (not regrown): the header's head_seq says more entries belong.
    ex.entries = ex.entries[:keep]
    assert_bad(check(ex, tmp_path, sealed), "truncated", keep + 1)


def test_export_entries_appended_after_the_header_head_are_found_as_inserted(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries.append({**ex.entries[-1], "seq": sealed.head_seq + 1, "action": "record.list"})
    rechain(ex.entries, len(ex.entries) - 1)
    assert_bad(check(ex, tmp_path, sealed), "inserted", sealed.head_seq + 1)


def test_export_a_non_canonical_line_is_malformed_in_strict_mode_hash_or_not(
    sealed: Sealed, tmp_path: Path
) -> None:
    """Strict verification judges the form before the hash: a re-spaced line is
    malformed whether or not its hash was recomputed over the new bytes."""
    ex = export_of(sealed, tmp_path)
    raw = [canonical(e) for e in ex.entries]
    raw[4] = raw[4].replace(b'"outcome":', b'"outcome": ')
    assert_bad(
        verify_export(
            ex.write(tmp_path / "spaced.jsonl", raw_entries=raw), public_key=sealed.public_key
        ),
        "malformed",
        5,
    )
    body = body_of(ex.entries[4]).replace(b'"outcome":', b'"outcome": ')
    raw[4] = raw[4].replace(ex.entries[4]["hash"].encode(), sha(body).encode())
    rehashed = ex.write(tmp_path / "rehashed.jsonl", raw_entries=raw)
    assert_bad(verify_export(rehashed, public_key=sealed.public_key), "malformed", 5)
    # The non-strict reader (the live store's path) hashes the bytes as stored.
    lenient = verify_export(rehashed, public_key=sealed.public_key, strict=False)
    assert_bad(lenient, "modified", 5)


def test_export_rewritten_and_re_signed_under_another_key_fails_with_bad_signature(
    sealed: Sealed, tmp_path: Path
) -> None:
    ex = export_of(sealed, tmp_path)
    ex.entries[3]["purpose"] = "rewritten"
    rechain(ex.entries, 3)
    by_seq = {e["seq"]: e for e in ex.entries}
    forger = fresh_signer()
    ex.checkpoints = [
        resign({**c["checkpoint"], "head": by_seq[c["checkpoint"]["seq"]]["hash"]}, forger)
        for c in ex.checkpoints
    ]
    ex.header["head"] = ex.entries[-1]["hash"]
    first_cp = min(c["checkpoint"]["seq"] for c in ex.checkpoints)
    assert_bad(check(ex, tmp_path, sealed), "bad signature", first_cp)
    # Naming the forger's key in the header changes nothing for a verifier with the
    # trusted key: an embedded key that differs from it is a failure of its own.
    ex.header["public_key"] = "ed25519:" + forger.public_key.hex()
    wrong = check(ex, tmp_path, sealed)
    assert (wrong.ok, wrong.reason, wrong.bad_seq) == (False, "wrong key", None)
    # Trusting the key named in the export itself is exactly what an attacker wants:
    # without a trust root the forgery is never ok (issue 18) ...
    untrusted = verify_export(tmp_path / "tampered.jsonl")
    assert not untrusted.ok and untrusted.reason == "no trusted key"
    assert untrusted.trust is None
    # ... only an explicit opt-in checks it under its own key, and says self-asserted ...
    self_trusted = verify_export(tmp_path / "tampered.jsonl", trust_embedded_key=True)
    assert self_trusted.ok and self_trusted.trust == "self-asserted"
    assert any("self-asserted" in note for note in self_trusted.notes)
    # ... and an anchor the auditor kept is a trust root the forger's key cannot sign.
    anchored = verify_export(tmp_path / "tampered.jsonl", anchor=sealed.anchor())
    assert not anchored.ok and anchored.reason == "bad signature"


def test_export_a_checkpoint_spliced_in_from_another_vault_is_foreign(
    sealed: Sealed, tmp_path: Path, keyfile: Path
) -> None:
    other = build_vault(tmp_path / "other", keyfile, before=3, after=1)
    ours = export_of(sealed, tmp_path)
    theirs = export_of(other, tmp_path)
    spliced = theirs.checkpoints[-1]
    ours.checkpoints.append(spliced)
    assert_bad(check(ours, tmp_path, sealed), "foreign vault", spliced["checkpoint"]["seq"])


def test_export_checked_against_another_vaults_anchor_is_foreign(
    sealed: Sealed, tmp_path: Path, keyfile: Path
) -> None:
    other = build_vault(tmp_path / "other", keyfile, before=2, after=1)
    ex = export_of(sealed, tmp_path)
    report = check(ex, tmp_path, sealed, anchor=other.anchor())
    assert_bad(report, "foreign vault", other.head_seq)


def test_export_with_an_anchor_signed_by_another_key_fails_with_bad_signature(
    sealed: Sealed, tmp_path: Path
) -> None:
    real = sealed.anchor()
    forged = tmp_path / "forged-anchor.json"
    forged.write_text(json.dumps(resign(json.loads(real.body), fresh_signer())))
    report = check(export_of(sealed, tmp_path), tmp_path, sealed, anchor=read_anchor(forged))
    assert_bad(report, "bad signature", real.seq)


def test_read_anchor_refuses_a_malformed_anchor_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"checkpoint": {"v": 1}, "signature": "zz"}')
    with pytest.raises(VerificationError) as caught:
        read_anchor(bad)
    assert caught.value.reason == "malformed"


# -- the database ------------------------------------------------------------------------


def db_exec(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def db_rows(db: Path) -> list[tuple[int, str, str, bytes]]:
    conn = sqlite3.connect(db)
    try:
        return [
            (int(s), str(p), str(h), bytes(b))
            for s, p, h, b in conn.execute("SELECT seq, prev, hash, body FROM sv_log ORDER BY seq")
        ]
    finally:
        conn.close()


def audit(sealed: Sealed, **kwargs: Any) -> VerifyReport:
    with Auditor.open(sealed.path) as auditor:
        return auditor.verify(**kwargs)


def test_an_untouched_database_verifies(sealed: Sealed) -> None:
    report = audit(sealed)
    assert report.ok and report.last_seq == sealed.head_seq
    assert audit(sealed, anchor=sealed.anchor()).ok


def test_db_a_modified_field_is_found_at_its_seq(sealed: Sealed) -> None:
    entry = json.loads(db_rows(sealed.db)[5][3])
    entry["purpose"] = "marketing"
    db_exec(sealed.db, ("UPDATE sv_log SET body = ? WHERE seq = 6", (canonical(entry),)))
    assert_bad(audit(sealed), "modified", 6)


def test_db_a_body_rewritten_as_text_is_reported_not_crashed_on(sealed: Sealed) -> None:
    db_exec(
        sealed.db,
        ("UPDATE sv_log SET body = replace(body, 'record.put', 'record.get') WHERE seq = 6", ()),
    )
    report = audit(sealed)
    assert not report.ok and report.bad_seq == 6


def test_db_a_deleted_entry_is_found(sealed: Sealed) -> None:
    db_exec(sealed.db, ("DELETE FROM sv_log WHERE seq = 7", ()))
    assert_bad(audit(sealed), "deleted", 7)


def test_db_an_entry_appended_behind_the_head_row_is_found_as_inserted(sealed: Sealed) -> None:
    last = json.loads(db_rows(sealed.db)[-1][3])
    prev = db_rows(sealed.db)[-1][2]
    extra = {**last, "seq": sealed.head_seq + 1, "prev": prev, "action": "record.get"}
    body = canonical(extra)
    db_exec(
        sealed.db,
        (
            "INSERT INTO sv_log (seq, prev, hash, ts, actor, action, subject, record, outcome,"
            " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                extra["seq"],
                prev,
                sha(body),
                extra["ts"],
                extra["actor"],
                extra["action"],
                extra["subject"],
                extra["record"],
                extra["outcome"],
                body,
            ),
        ),
    )
    assert_bad(audit(sealed), "inserted", sealed.head_seq + 1)


def swap_rows(db: Path, a: int, b: int) -> None:
    db_exec(
        db,
        ("UPDATE sv_log SET seq = -1 WHERE seq = ?", (a,)),
        ("UPDATE sv_log SET seq = ? WHERE seq = ?", (a, b)),
        ("UPDATE sv_log SET seq = ? WHERE seq = -1", (b,)),
    )


def test_db_two_swapped_entries_are_found_at_the_first(sealed: Sealed) -> None:
    swap_rows(sealed.db, 6, 7)
    report = audit(sealed)
    assert not report.ok and report.bad_seq == 6


def test_db_two_swapped_entries_are_reported_as_reordered(sealed: Sealed) -> None:
    swap_rows(sealed.db, 6, 7)
    assert_bad(audit(sealed), "reordered", 6)


def cut_tail(sealed: Sealed, keep: int) -> None:
    """Delete every entry after ``keep``, the checkpoints that cover them, and point the
    head row at the new tail: a clean truncation."""
    tail = db_rows(sealed.db)[keep - 1]
    ts = json.loads(tail[3])["ts"]
    db_exec(
        sealed.db,
        ("DELETE FROM sv_log WHERE seq > ?", (keep,)),
        ("DELETE FROM sv_checkpoints WHERE seq > ?", (keep,)),
        ("UPDATE sv_log_head SET seq = ?, hash = ?, ts = ?", (keep, tail[2], ts)),
    )


def test_db_a_cut_tail_is_found_by_the_checkpoints_that_cover_it(sealed: Sealed) -> None:
    keep = sealed.head_seq - 3
    db_exec(sealed.db, ("DELETE FROM sv_log WHERE seq > ?", (keep,)))
    assert_bad(audit(sealed), "truncated", keep + 1)


def test_db_a_clean_tail_cut_is_rolled_back_against_the_keystore_anchor(
    sealed: Sealed,
) -> None:
    keep = sealed.head_seq - 3
    cut_tail(sealed, keep)
    assert_bad(audit(sealed), "rolled back", keep + 1)


def test_db_a_clean_tail_cut_is_truncated_against_an_auditors_anchor(
    sealed: Sealed, tmp_path: Path
) -> None:
    keep = sealed.head_seq - 3
    cut_tail(sealed, keep)
    assert_bad(audit(sealed, anchor=sealed.anchor()), "truncated", keep + 1)
    # Without keys.db and without an anchor, a clean cut cannot be seen (the limit).
    alone = tmp_path / "data-only"
    alone.mkdir()
    shutil.copy(sealed.db, alone / "data.db")
    with Auditor.open(alone) as auditor:
        assert auditor.verify().ok
        assert_bad(auditor.verify(anchor=sealed.anchor()), "truncated", keep + 1)


def test_vault_open_refuses_a_clean_tail_cut_as_rolled_back(sealed: Sealed) -> None:
    keep = sealed.head_seq - 3
    cut_tail(sealed, keep)
    with pytest.raises(AuditChainError) as caught:
        Vault.open(sealed.path, keyfile=sealed.keyfile)
    assert caught.value.reason == "rolled back"


def test_vault_open_names_the_first_missing_seq_of_a_rolled_back_log(sealed: Sealed) -> None:
    keep = sealed.head_seq - 3
    cut_tail(sealed, keep)
    with pytest.raises(AuditChainError) as caught:
        Vault.open(sealed.path, keyfile=sealed.keyfile)
    assert (caught.value.reason, caught.value.seq) == ("rolled back", keep + 1)
    assert f"ends at seq {keep}" in str(caught.value)


def rewrite_database_under(sealed: Sealed, signer: Signer, *, from_seq: int) -> None:
    """Alter entry ``from_seq``, re-chain everything after it, re-sign every checkpoint
    with ``signer`` and fix the head row: a complete forgery without the vault's key."""
    rows = db_rows(sealed.db)
    entries = [json.loads(r[3]) | {"hash": r[2]} for r in rows]
    entries[from_seq - 1]["purpose"] = "forged"
    rechain(entries, from_seq - 1)
    conn = sqlite3.connect(sealed.db)
    with conn:
        for e in entries[from_seq - 1 :]:
            conn.execute(
                "UPDATE sv_log SET prev = ?, hash = ?, body = ? WHERE seq = ?",
                (e["prev"], e["hash"], body_of(e), e["seq"]),
            )
        for seq, body in conn.execute("SELECT seq, body FROM sv_checkpoints").fetchall():
            cp = {**json.loads(body), "head": entries[seq - 1]["hash"]}
            conn.execute(
                "UPDATE sv_checkpoints SET body = ?, signature = ? WHERE seq = ?",
                (canonical(cp), signer.sign(canonical(cp)), seq),
            )
        last = entries[-1]
        conn.execute("UPDATE sv_log_head SET hash = ? WHERE id = 1", (last["hash"],))
        conn.execute("UPDATE sv_meta SET v = ? WHERE k = 'public_key'", (signer.public_key.hex(),))
    conn.close()


def test_db_rewritten_and_re_signed_under_another_key_fails_with_bad_signature(
    sealed: Sealed,
) -> None:
    rewrite_database_under(sealed, fresh_signer(), from_seq=4)
    conn = sqlite3.connect(sealed.db)
    first_cp = conn.execute("SELECT MIN(seq) FROM sv_checkpoints").fetchone()[0]
    conn.close()
    assert_bad(audit(sealed), "bad signature", first_cp)
    with pytest.raises(AuditChainError) as caught:
        Vault.open(sealed.path, keyfile=sealed.keyfile)
    assert caught.value.reason == "bad signature"


def test_db_a_checkpoint_spliced_in_from_another_vault_is_foreign(
    sealed: Sealed, tmp_path: Path, keyfile: Path
) -> None:
    other = build_vault(tmp_path / "other", keyfile, before=3, after=1)
    conn = sqlite3.connect(other.db)
    ours = {s for (s,) in sqlite3.connect(sealed.db).execute("SELECT seq FROM sv_checkpoints")}
    seq, body, sig = next(
        row
        for row in conn.execute("SELECT seq, body, signature FROM sv_checkpoints ORDER BY seq")
        if row[0] not in ours
    )
    conn.close()
    db_exec(
        sealed.db,
        ("INSERT INTO sv_checkpoints (seq, body, signature) VALUES (?, ?, ?)", (seq, body, sig)),
    )
    assert_bad(audit(sealed), "foreign vault", seq)


def test_a_rolled_back_data_store_makes_open_fail_and_audit_fail(
    sealed: Sealed, tmp_path: Path
) -> None:
    old_copy = tmp_path / "data-old.db"
    shutil.copy(sealed.db, old_copy)
    with Vault.open(sealed.path, keyfile=sealed.keyfile) as v:
        s = v.admin()
        c = s.add_customer()
        v.declare_kind("note", fields=["text"], purposes=["service"])
        s.put(c, "note", {"text": "after the copy"}, purpose="service")
        newer_head = v.head.seq
    for suffix in ("-wal", "-shm"):
        (sealed.path / f"data.db{suffix}").unlink(missing_ok=True)
    shutil.copy(old_copy, sealed.db)
    keys_before = hashlib.sha256((sealed.path / "keys.db").read_bytes()).hexdigest()
    data_before = hashlib.sha256(sealed.db.read_bytes()).hexdigest()

    with pytest.raises(AuditChainError) as caught:
        Vault.open(sealed.path, keyfile=sealed.keyfile)
    assert caught.value.reason == "rolled back"
    assert newer_head > sealed.head_seq
    assert hashlib.sha256((sealed.path / "keys.db").read_bytes()).hexdigest() == keys_before
    assert hashlib.sha256(sealed.db.read_bytes()).hexdigest() == data_before

    report = audit(sealed)
    assert_bad(report, "rolled back", sealed.head_seq + 1)
