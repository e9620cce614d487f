"""A restore never serves a customer shredded after the snapshot unless a window of
unknown shreds was explicitly accepted, and then the restored log names the window
(issue 17, docs/backup.md).

Every source kind (the live vault, an exported log, receipts, none) in every condition
(complete, stale, empty, forged under another key, tampered, a shred that crashed at
the source after its keys were destroyed), on SQLite and PostgreSQL (the live vault's
data and the restored vault's data in the same back end).

The world: a backup at t0; then customer ``gone`` shredded (with a receipt), then a
shred of customer ``crashed`` killed after its keys were destroyed (intent logged, no
completion, no receipt); customer ``kept`` stays. An early log export is taken after
the backup and before any shred; a late one after the crash.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import SecretBytes, Signer
from shredvault.vault import (
    Auditor,
    ShreddedError,
    ShredSource,
    StorageError,
    Vault,
    VerificationError,
    restore_backup,
)
from shredvault.vault.audit import format_public_key
from shredvault.vault.canonical import canonical
from shredvault.vault.layout import RESTORE_MARKER

from processes import CRASH_EXIT_CODE, run_python

PURPOSE = "service"

_CRASHING_SHRED = r"""
import sys
from shredvault.vault import Vault
root, keyfile, url, customer = sys.argv[1:5]
vault = Vault.open(root, keyfile=keyfile, data_url=url or None)
vault.admin().shred(customer, reason="erasure request (crashes)")
"""


@dataclass
class World:
    root: Path
    url: str | None  # the live vault's data URL (None: data.db)
    target_url: Callable[[], str | None]  # a fresh empty database for a restore
    keyfile: Path
    archive: Path
    manifest: dict[str, Any]
    records: dict[str, str]  # "gone", "crashed", "kept" -> customer id
    rids: dict[str, str]  # customer id -> its record id
    shred_seq: dict[str, int]  # customer id -> seq of its shred (intent) entry
    early_export: Path
    late_export: Path
    receipts: Path
    public_key: bytes
    tmp: Path
    old_receipts: Path  # the receipt of a customer shredded before the backup

    @property
    def data_url(self) -> str:
        return self.url or f"sqlite:///{self.root / 'data.db'}"


def _export(world_root: Path, url: str | None, out: Path) -> None:
    with Auditor.open(world_root, data_url=url) as auditor, out.open("wb") as handle:
        auditor.export(handle)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path, keyfile: Path) -> Iterator[World]:
    if request.param == "sqlite":
        url, target_url = None, (lambda: None)
    else:
        make: Callable[[], str] = request.getfixturevalue("pg_schemas")
        url, target_url = make(), make
    root = tmp_path / "live"
    names = {}
    rids = {}
    old_receipts = tmp_path / "old-receipts"
    old_receipts.mkdir()
    with Vault.create(root, keyfile=keyfile, data_url=url) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        old = s.add_customer()
        s.shred(old, reason="erasure request #0").write(old_receipts / f"{old}.json")
        for who in ("gone", "crashed", "kept"):
            cid = s.add_customer()
            rids[cid] = s.put(cid, "profile", {"name": f"{who} person"}, purpose=PURPOSE)
            names[who] = cid
        archive = tmp_path / "t0.svb"
        manifest = s.backup(str(archive))
        public_key = v.public_key
    early = tmp_path / "early.jsonl"
    _export(root, url, early)
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    with Vault.open(root, keyfile=keyfile, data_url=url) as v:
        v.admin().shred(names["gone"], reason="erasure request #1").write(
            receipts / f"{names['gone']}.json"
        )
    done = run_python(
        _CRASHING_SHRED,
        str(root),
        str(keyfile),
        url or "",
        names["crashed"],
        crash_at="shred:after-keys",
    )
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    late = tmp_path / "late.jsonl"
    _export(root, url, late)  # an auditor does not finish the crashed shred
    shred_seq = {}
    with Auditor.open(root, data_url=url) as auditor:
        for entry in auditor.entries(since=int(manifest["seq"])):
            if entry["action"] == "customer.shred-intent":
                shred_seq[entry["subject"]] = entry["seq"]
    # subject tag -> customer: in the order shredded (gone first, then crashed)
    tags = list(shred_seq)
    assert len(tags) == 2
    by_customer = {names["gone"]: shred_seq[tags[0]], names["crashed"]: shred_seq[tags[1]]}
    yield World(
        root,
        url,
        target_url,
        keyfile,
        archive,
        manifest,
        names,
        rids,
        by_customer,
        early,
        late,
        receipts,
        public_key,
        tmp_path,
        old_receipts,
    )


# -- damaging a source --------------------------------------------------------------------

FORGER = Signer(SecretBytes(secrets.token_bytes(32)))


def _sql(world: World, work: Callable[[Any], None]) -> None:
    engine = create_engine(world.data_url)
    try:
        with engine.begin() as conn:
            work(conn)
    finally:
        engine.dispose()


def _live_cut_back(world: World) -> None:
    """The live data store put back to the moment after the backup (its log cut)."""
    keep = int(world.manifest["seq"]) + 1  # the backup.create entry

    def work(conn: Any) -> None:
        conn.execute(text("DELETE FROM sv_log WHERE seq > :s"), {"s": keep})
        conn.execute(text("DELETE FROM sv_checkpoints WHERE seq > :s"), {"s": keep})
        head = conn.execute(text("SELECT hash, ts FROM sv_log WHERE seq = :s"), {"s": keep}).one()
        conn.execute(
            text("UPDATE sv_log_head SET seq = :s, hash = :h, ts = :t"),
            {"s": keep, "h": head.hash, "t": head.ts},
        )

    _sql(world, work)


def _live_forged(world: World) -> None:
    """Every signed checkpoint of the live log re-signed under another key."""

    def work(conn: Any) -> None:
        rows = conn.execute(text("SELECT seq, body FROM sv_checkpoints")).all()
        for seq, body in rows:
            conn.execute(
                text("UPDATE sv_checkpoints SET signature = :g WHERE seq = :s"),
                {"g": FORGER.sign(bytes(body)), "s": seq},
            )

    _sql(world, work)


def _live_tampered(world: World) -> None:
    """The reason of the gone customer's shred edited in the stored log."""
    seq = world.shred_seq[world.records["gone"]]

    def work(conn: Any) -> None:
        body = bytes(
            conn.execute(text("SELECT body FROM sv_log WHERE seq = :s"), {"s": seq}).scalar_one()
        )
        edited = body.replace(b"erasure request #1", b"erasure request #2")
        assert edited != body
        conn.execute(text("UPDATE sv_log SET body = :b WHERE seq = :s"), {"b": edited, "s": seq})

    _sql(world, work)


def _export_forged(world: World) -> Path:
    """The late export with every checkpoint re-signed and the header's key swapped."""
    lines = world.late_export.read_bytes().splitlines()
    header = json.loads(lines[0])
    header["public_key"] = format_public_key(FORGER.public_key)
    out = [canonical(header)]
    for line in lines[1:]:
        if line.startswith(b'{"checkpoint":'):
            cp = json.loads(line)
            cp["signature"] = FORGER.sign(canonical(cp["checkpoint"])).hex()
            out.append(canonical(cp))
        else:
            out.append(line)
    path = world.tmp / "forged.jsonl"
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def _export_tampered(world: World) -> Path:
    data = world.late_export.read_bytes()
    edited = data.replace(b"erasure request #1", b"erasure request #2")
    assert edited != data
    path = world.tmp / "tampered.jsonl"
    path.write_bytes(edited)
    return path


def _export_empty(world: World) -> Path:
    path = world.tmp / "empty.jsonl"
    path.write_bytes(b"")
    return path


def _receipts_copy(world: World, edit: Callable[[dict[str, Any]], None]) -> Path:
    folder = world.tmp / f"receipts-{secrets.token_hex(3)}"
    folder.mkdir()
    for path in world.receipts.glob("*.json"):
        document = json.loads(path.read_text())
        edit(document)
        (folder / path.name).write_text(json.dumps(document))
    return folder


def _forge_receipt(document: dict[str, Any]) -> None:
    document["checkpoint"]["signature"] = FORGER.sign(
        canonical(document["checkpoint"]["checkpoint"])
    ).hex()
    document["public_key"] = format_public_key(FORGER.public_key)


def _tamper_receipt(document: dict[str, Any]) -> None:
    document["entry"]["detail"]["reason"] = "erasure request #2"


def _empty_folder(world: World) -> Path:
    folder = world.tmp / "no-receipts"
    folder.mkdir()
    return folder


# -- the matrix -----------------------------------------------------------------------------
# "complete" sources are read after the crashed shred: the crash at the source is in every
# one of them (the live vault and the late export replay its intent; receipts have none).

COMPLETE = "complete"  # restored without acceptance; every later shred replayed
WINDOW = "window"  # refused unless accepted; then the window is logged
# otherwise: the VerificationError / StorageError reason expected, accepted or not

SOURCES: dict[tuple[str, str], tuple[Callable[[World], ShredSource], str, set[str]]] = {
    # (source, condition): (the source, expectation, customers shredded after restore)
    ("live vault", "complete"): (
        lambda w: ShredSource(vault_dir=w.root, vault_data_url=w.url),
        COMPLETE,
        {"gone", "crashed"},
    ),
    ("live vault", "stale"): (
        lambda w: (_live_cut_back(w), ShredSource(vault_dir=w.root, vault_data_url=w.url))[1],
        "rolled back",
        set(),
    ),
    ("live vault", "empty"): (
        lambda w: ShredSource(vault_dir=_empty_folder(w)),
        "storage",
        set(),
    ),
    ("live vault", "forged"): (
        lambda w: (_live_forged(w), ShredSource(vault_dir=w.root, vault_data_url=w.url))[1],
        "bad signature",
        set(),
    ),
    ("live vault", "tampered"): (
        lambda w: (_live_tampered(w), ShredSource(vault_dir=w.root, vault_data_url=w.url))[1],
        "modified",
        set(),
    ),
    ("exported log", "complete"): (
        lambda w: ShredSource(log_export=w.late_export),
        WINDOW,
        {"gone", "crashed"},
    ),
    ("exported log", "stale"): (
        lambda w: ShredSource(log_export=w.early_export),
        WINDOW,
        set(),
    ),
    ("exported log", "empty"): (
        lambda w: ShredSource(log_export=_export_empty(w)),
        "malformed",
        set(),
    ),
    ("exported log", "forged"): (
        lambda w: ShredSource(log_export=_export_forged(w)),
        "wrong key",  # it names its forger's key, not the vault's
        set(),
    ),
    ("exported log", "tampered"): (
        lambda w: ShredSource(log_export=_export_tampered(w)),
        "modified",
        set(),
    ),
    ("receipts", "complete"): (
        lambda w: ShredSource(receipts_dir=w.receipts),
        WINDOW,
        {"gone"},  # a shred that crashed issued no receipt
    ),
    ("receipts", "stale"): (
        lambda w: ShredSource(receipts_dir=w.old_receipts),  # shreds before the backup
        WINDOW,
        set(),
    ),
    ("receipts", "empty"): (
        lambda w: ShredSource(receipts_dir=_empty_folder(w)),
        WINDOW,
        set(),
    ),
    ("receipts", "forged"): (
        lambda w: ShredSource(receipts_dir=_receipts_copy(w, _forge_receipt)),
        "wrong key",  # it names its forger's key, not the vault's
        set(),
    ),
    ("receipts", "tampered"): (
        lambda w: ShredSource(receipts_dir=_receipts_copy(w, _tamper_receipt)),
        "modified",
        set(),
    ),
    ("none", "none"): (lambda w: ShredSource(), WINDOW, set()),
}


@dataclass
class Outcome:
    target: Path
    target_url: str | None
    result: dict[str, Any] | None = None
    error: Exception | None = None


def attempt(world: World, source: ShredSource, accept: bool) -> Outcome:
    target = world.tmp / f"restored-{secrets.token_hex(4)}"
    outcome = Outcome(target, world.target_url())
    try:
        outcome.result = restore_backup(
            world.archive,
            target,
            keyfile=world.keyfile,
            data_url=outcome.target_url,
            source=source,
            accept_unreplayed_window=accept,
        )
    except (VerificationError, StorageError) as error:
        outcome.error = error
    return outcome


def readable(world: World, outcome: Outcome) -> set[str]:
    """Which of gone / crashed / kept the restored vault serves."""
    served = set()
    with Vault.open(outcome.target, keyfile=world.keyfile, data_url=outcome.target_url) as v:
        s = v.admin()
        for who, cid in world.records.items():
            try:
                s.get(cid, world.rids[cid], purpose=PURPOSE)
            except ShreddedError:
                continue
            served.add(who)
    return served


def logged_window(world: World, outcome: Outcome) -> dict[str, Any] | None:
    with Auditor.open(outcome.target, data_url=outcome.target_url) as auditor:
        (entry,) = [e for e in auditor.entries() if e["action"] == "vault.restore"]
    with Vault.open(outcome.target, keyfile=world.keyfile, data_url=outcome.target_url) as v:
        assert v.admin().key_status().unreplayed_window == entry["detail"]["unreplayed_window"]
    window: dict[str, Any] | None = entry["detail"]["unreplayed_window"]
    assert entry["detail"]["unreplayed_shreds_accepted"] is (window is not None)
    return window


def assert_never_served_silently(world: World, outcome: Outcome, accepted: bool) -> None:
    """The property: a customer shredded at the live vault after the snapshot is served
    only if a window was accepted, the log names it, and the shred lies inside it."""
    served = readable(world, outcome)
    assert "kept" in served
    window = logged_window(world, outcome)
    for who in ("gone", "crashed"):
        if who in served:
            assert accepted and window is not None, f"{who} came back with no window accepted"
            assert window["from_seq"] < world.shred_seq[world.records[who]]


@pytest.mark.parametrize("case", sorted(SOURCES), ids=" / ".join)
def test_a_shredded_customer_is_never_served_unless_a_window_was_accepted(
    world: World, case: tuple[str, str]
) -> None:
    make, expected, shredded = SOURCES[case]
    source = make(world)
    refused = attempt(world, source, accept=False)
    if expected == COMPLETE:
        assert refused.error is None, refused.error
        assert_never_served_silently(world, refused, accepted=False)
        served = readable(world, refused)
        assert served == {"gone", "crashed", "kept"} - shredded
        assert logged_window(world, refused) is None
        return
    # Not complete: without acceptance nothing is written.
    assert refused.error is not None
    assert not refused.target.exists()
    if expected != WINDOW:
        # A broken source is refused whether or not a window would be accepted.
        accepted = attempt(world, source, accept=True)
        assert accepted.error is not None and not accepted.target.exists()
        for error in (refused.error, accepted.error):
            if expected == "storage" or (error is refused.error and case[0] != "live vault"):
                assert isinstance(error, StorageError)  # (the window, refused first)
            else:
                assert isinstance(error, VerificationError)
                assert error.reason == expected
        return
    assert isinstance(refused.error, StorageError)
    assert "accept-unreplayed-window" in str(refused.error)
    accepted = attempt(world, source, accept=True)
    assert accepted.error is None, accepted.error
    assert not (accepted.target / RESTORE_MARKER).exists()
    assert_never_served_silently(world, accepted, accepted=True)
    assert readable(world, accepted) == {"gone", "crashed", "kept"} - shredded
    window = logged_window(world, accepted)
    assert window is not None
    assert accepted.result is not None and accepted.result["unreplayed_window"] == window


def test_the_live_vault_replays_a_shred_that_crashed_after_its_intent(world: World) -> None:
    """Intent logged, keys destroyed, no completion: the live vault's log shows the
    intent, and the restore shreds that customer again."""
    outcome = attempt(world, ShredSource(vault_dir=world.root, vault_data_url=world.url), False)
    assert outcome.result is not None
    assert world.records["crashed"] in outcome.result["replayed"]
    assert "crashed" not in readable(world, outcome)


def test_an_export_taken_after_the_crash_replays_the_intent_and_its_window_starts_signed(
    world: World,
) -> None:
    outcome = attempt(world, ShredSource(log_export=world.late_export), True)
    assert outcome.result is not None
    assert set(outcome.result["replayed"]) == {world.records["gone"], world.records["crashed"]}
    window = logged_window(world, outcome)
    assert window is not None
    # The crashed shred signed nothing: the export's last signed head is before its intent.
    assert window["from_seq"] < world.shred_seq[world.records["crashed"]]
    with Auditor.open(world.root, data_url=world.url) as auditor:
        stored = {e["seq"]: e for e in auditor.entries(since=window["from_seq"])}
    assert stored[window["from_seq"]]["hash"] == window["from_head"]
    assert stored[window["from_seq"]]["ts"] == window["from_ts"]


def test_a_stale_export_names_a_window_that_holds_the_later_shreds(world: World) -> None:
    """The issue's finding: a log exported before the shred was taken as complete."""
    outcome = attempt(world, ShredSource(log_export=world.early_export), True)
    window = logged_window(world, outcome)
    assert window is not None
    assert window["from_seq"] >= int(world.manifest["seq"])
    assert window["from_seq"] < min(world.shred_seq.values())
    assert {"gone", "crashed"} <= readable(world, outcome)


def test_without_any_source_the_window_runs_from_the_snapshot(world: World) -> None:
    outcome = attempt(world, ShredSource(), True)
    window = logged_window(world, outcome)
    assert window is not None
    assert (window["from_seq"], window["from_head"], window["from_ts"]) == (
        world.manifest["seq"],
        world.manifest["head"],
        world.manifest["created"],
    )


def test_the_source_key_is_never_trusted_over_the_archives(world: World) -> None:
    """A forged export verifies under the key it carries; the restore pins the vault's."""
    from shredvault.vault import verify_export

    forged = _export_forged(world)
    assert verify_export(forged, trust_embedded_key=True).ok  # under its own key
    outcome = attempt(world, ShredSource(log_export=forged), True)
    assert isinstance(outcome.error, VerificationError)
    assert outcome.error.reason == "wrong key"
    shutil.rmtree(outcome.target, ignore_errors=True)


def test_a_copy_of_the_whole_vault_directory_passes_as_the_live_vault(
    tmp_path: Path, keyfile: Path
) -> None:
    """The limit of the live-vault source (docs/backup.md): a copy of both files made
    after the backup and before a shred is self-consistent — its log and its keystore's
    anchor agree — so a restore from it replays nothing and serves the customer. Only
    pointing --replay-from at the vault in service prevents it."""
    root = tmp_path / "live"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        cid = s.add_customer()
        rid = s.put(cid, "profile", {"name": "Copied Before"}, purpose=PURPOSE)
        s.backup(str(tmp_path / "t0.svb"))
    shutil.copytree(root, tmp_path / "copy")
    with Vault.open(root, keyfile=keyfile) as v:
        v.admin().shred(cid, reason="erasure request")
    result = restore_backup(
        tmp_path / "t0.svb",
        tmp_path / "restored",
        keyfile=keyfile,
        source=ShredSource(vault_dir=tmp_path / "copy"),
    )
    assert result["replayed"] == [] and result["unreplayed_window"] is None
    with Vault.open(tmp_path / "restored", keyfile=keyfile) as r:
        assert r.admin().get(cid, rid, purpose=PURPOSE).fields == {"name": "Copied Before"}
    # The real live vault, given instead, replays the shred.
    again = restore_backup(
        tmp_path / "t0.svb",
        tmp_path / "restored-live",
        keyfile=keyfile,
        source=ShredSource(vault_dir=root),
    )
    assert again["replayed"] == [cid]
