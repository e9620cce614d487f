"""Retiring backups, where they are, archives through pipes, and progress (issue 17
item 3): ``forget_backup`` stops a backup counting on the key-copy clock and is logged;
``backups()`` shows each one's path and state; an archive written to a stream verifies
and restores from a stream; restore reports progress with totals."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shredvault.vault import (
    Auditor,
    NotFoundError,
    ShreddedError,
    ShredSource,
    StorageError,
    Vault,
    restore_backup,
    verify_backup,
)

PURPOSE = "service"


def _entries(v: Vault, url: str | None, action: str) -> list[dict[str, Any]]:
    with Auditor.open(v.path, data_url=url) as auditor:
        return [e for e in auditor.entries() if e["action"] == action]


def test_a_forgotten_backup_stops_counting_on_the_key_copy_clock_and_is_logged(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    v = make_vault("live")
    s = v.admin()
    first, second = s.add_customer(), s.add_customer()
    old = s.backup(str(tmp_path / "old.svb"))["backup"]
    new = s.backup(str(tmp_path / "new.svb"))["backup"]
    s.shred(first, reason="erasure request")
    s.shred(second, reason="erasure request")
    assert s.key_status().backup_key_copies == 4
    info = s.forget_backup(old)
    assert (info.id, info.state, info.shredded_since) == (old, "forgotten", 2)
    assert info.forgotten is not None
    assert s.key_status().backup_key_copies == 2  # only the one still held
    listed = {b.id: b for b in s.backups()}
    assert (listed[old].state, listed[new].state) == ("forgotten", "held")
    assert listed[old].path == str(tmp_path / "old.svb")
    (entry,) = _entries(v, backend, "backup.forget")
    assert entry["outcome"] == "ok" and entry["actor"] == "admin"
    assert entry["detail"] == {"backup": old, "seq": info.seq, "shredded_since": 2}
    assert v.verify_log().ok


def test_forgetting_twice_or_an_unknown_backup_is_refused_and_changes_nothing(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    v = make_vault("live")
    s = v.admin()
    bid = s.backup(str(tmp_path / "a.svb"))["backup"]
    s.shred(s.add_customer(), reason="erasure request")  # created after: not on its clock
    first = s.forget_backup(bid)
    with pytest.raises(StorageError, match="already forgotten"):
        s.forget_backup(bid)
    with pytest.raises(NotFoundError, match="no backup"):
        s.forget_backup("bak_" + "a" * 26)
    with pytest.raises(NotFoundError, match="not a backup id"):
        s.forget_backup("../../etc/passwd")
    (again,) = s.backups()
    assert again.forgotten == first.forgotten and again.state == "forgotten"
    outcomes = [
        (e["outcome"], e["detail"].get("reason_code"))
        for e in _entries(v, backend, "backup.forget")
    ]
    assert outcomes == [("ok", None), ("error", "already_forgotten"), ("error", "backup_not_found")]
    assert v.verify_log().ok


def test_an_expired_backup_shows_as_expired_until_forgotten(tmp_path: Path, keyfile: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    with Vault.create(tmp_path / "live", keyfile=keyfile, clock=lambda: now[0]) as v:
        s = v.admin()
        bid = s.backup(str(tmp_path / "a.svb"), expires_days=1)["backup"]
        assert [b.state for b in s.backups()] == ["held"]
        now[0] += timedelta(days=2)
        assert [b.state for b in s.backups()] == ["expired"]
        s.forget_backup(bid)
        assert [b.state for b in s.backups()] == ["forgotten"]


def test_a_backup_recorded_before_paths_were_lists_without_one_and_can_be_forgotten(
    make_vault: Callable[..., Vault], backend: str | None, tmp_path: Path
) -> None:
    v = make_vault("live")
    s = v.admin()
    bid = s.backup(str(tmp_path / "a.svb"))["backup"]
    with v._ctx.data.engine.begin() as conn:
        conn.execute(text("DROP TABLE sv_backup_state"))  # as a data store made earlier
    (info,) = s.backups()
    assert (info.path, info.state) == (None, "held")
    assert s.forget_backup(bid).state == "forgotten"
    assert s.key_status().backup_key_copies == 0


def test_an_archive_written_to_a_stream_verifies_and_restores_from_a_stream(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        gone, kept = s.add_customer(), s.add_customer()
        rid = s.put(kept, "profile", {"name": "Kept Piped"}, purpose=PURPOSE)
        gone_rid = s.put(gone, "profile", {"name": "Gone Piped"}, purpose=PURPOSE)
        piped = io.BytesIO()
        manifest = s.backup(piped)  # type: ignore[arg-type]
        s.shred(gone, reason="erasure request")
        (listed,) = s.backups()
        public_key = v.public_key
    assert listed.path == "-"
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]
    report = verify_backup(io.BytesIO(piped.getvalue()), public_key=public_key)
    assert report.ok, report.message
    assert report.manifest == manifest
    target = tmp_path / "restored"
    restore_backup(
        io.BytesIO(piped.getvalue()),
        target,
        keyfile=keyfile,
        source=ShredSource(vault_dir=tmp_path / "live"),
    )
    for name in ("keys.db", "data.db"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    with Vault.open(target, keyfile=keyfile) as r:
        assert r.admin().get(kept, rid, purpose=PURPOSE).fields == {"name": "Kept Piped"}
        with pytest.raises(ShreddedError):
            r.admin().get(gone, gone_rid, purpose=PURPOSE)


def test_a_stream_cut_short_fails_verification_and_restores_nothing(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        piped = io.BytesIO()
        v.admin().backup(piped)  # type: ignore[arg-type]
    cut = piped.getvalue()[: len(piped.getvalue()) * 2 // 3]
    report = verify_backup(io.BytesIO(cut))
    assert not report.ok and report.reason in {"malformed", "modified"}
    with pytest.raises(Exception) as caught:
        restore_backup(
            io.BytesIO(cut),
            tmp_path / "restored",
            keyfile=keyfile,
            source=ShredSource(vault_dir=tmp_path / "live"),
        )
    assert caught.type.__name__ == "VerificationError"
    assert not (tmp_path / "restored").exists()


def test_restore_reports_progress_with_totals_for_verifying_and_replaying(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        s = v.admin()
        people = [s.add_customer() for _ in range(12)]
        manifest = s.backup(str(tmp_path / "a.svb"))
        for cid in people[:7]:
            s.shred(cid, reason="erasure request")
    steps: list[tuple[str, int, int]] = []
    restore_backup(
        tmp_path / "a.svb",
        tmp_path / "restored",
        keyfile=keyfile,
        source=ShredSource(vault_dir=tmp_path / "live"),
        progress=lambda phase, n, total: steps.append((phase, n, total)),
    )
    verifying = [(n, t) for p, n, t in steps if p == "verifying"]
    replaying = [(n, t) for p, n, t in steps if p == "replaying"]
    size = sum(int(m["size"]) for m in manifest["members"].values())
    assert verifying and {t for _, t in verifying} == {size}
    assert sum(n for n, _ in verifying) == size
    assert replaying == [(1, 7)] * 7
    assert [p for p, _, _ in steps] == sorted(
        (p for p, _, _ in steps), key=["verifying", "replaying"].index
    )


def test_the_restore_entry_is_json_that_names_its_window(tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "live", keyfile=keyfile) as v:
        manifest = v.admin().backup(str(tmp_path / "a.svb"))
    result = restore_backup(
        tmp_path / "a.svb", tmp_path / "restored", keyfile=keyfile, accept_unreplayed_window=True
    )
    assert json.loads(json.dumps(result["unreplayed_window"]))["from_seq"] == manifest["seq"]
    with Vault.open(tmp_path / "restored", keyfile=keyfile) as r:
        status = r.admin().key_status()
    assert status.unreplayed_window == result["unreplayed_window"]
    assert status.to_json()["unreplayed_window"] == result["unreplayed_window"]
