"""Rotation alongside live traffic (DESIGN §3, §6): while one process re-wraps 6,000+
DEKs under a new KEK epoch and another rotates every customer's DEK three times, this
process and a third one keep writing, updating and reading records of those same
customers. No read or write fails, every record reads back afterwards, each customer is
left with one DEK version that all its records use, and the chain verifies. SQLite and
PostgreSQL data stores; every loop stops by itself (a deadline bounds each backend)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import Auditor, Session, Vault, ids
from shredvault.vault.store import customers, log, records

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PURPOSE = "service"
CUSTOMERS = 8
RECORDS_EACH = 20
KEYSTORE_ONLY_DEKS = 6000
DEK_ROUNDS = 3
DEADLINE_S = 15.0  # the rotations take ~2 s; this only bounds a hung run
PAUSE_S = 0.005  # between loop iterations: busy traffic, not a tight loop that starves
KEYSTORE_TS = "2026-01-01T00:00:00.000000Z"

Expected = dict[str, tuple[str, dict[str, str]]]  # record id -> (customer, fields)


def wait_for(flag: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {flag}")
        time.sleep(0.002)


def read_write_loop(
    session: Session, cids: list[str], seed: Expected, who: str, keep_going: Callable[[], bool]
) -> dict[str, Any]:
    """Put, read back, update and batch-read records until told to stop; every result is
    checked on the spot. Returns the records written with their final fields."""
    seed_pairs = [(c, rid) for rid, (c, _f) in seed.items()]
    written: dict[str, tuple[str, dict[str, str]]] = {}
    i = 0
    while keep_going():
        cid = cids[i % len(cids)]
        fields = {"name": f"{who}-{i}", "phone": "0"}
        rid = session.put(cid, "profile", fields, purpose=PURPOSE)
        assert dict(session.get(cid, rid, purpose=PURPOSE).fields) == fields, rid
        if i % 2 == 0:
            fields = {**fields, "phone": str(i)}
            updated = session.update(cid, rid, {"phone": str(i)}, purpose=PURPOSE)
            assert dict(updated.fields) == fields, rid
        if i % 3 == 0:
            start = (7 * i) % len(seed_pairs)
            sample = seed_pairs[start : start + 10]
            got = session.get_many(sample, purpose=PURPOSE)
            assert [dict(r.fields) for r in got] == [seed[r][1] for _c, r in sample]
        written[rid] = (cid, fields)
        i += 1
        time.sleep(PAUSE_S)
    return {"iterations": i, "written": written}


def worker_main(role: str, setup_file: str, flags_dir: str) -> None:
    """A subprocess: open the vault when allowed, then rotate or loop once told to go."""
    setup = json.loads(Path(setup_file).read_text())
    flags = Path(flags_dir)
    wait_for(flags / f"open.{role}")
    vault = Vault.open(setup["path"], keyfile=setup["keyfile"], data_url=setup["data_url"])
    session = vault.admin()
    (flags / f"ready.{role}").touch()
    wait_for(flags / "go")
    out: Any
    if role == "kek":
        # Pausing between batches keeps the rotation open long enough for the loops.
        out = session.rotate_kek(progress=lambda _n: time.sleep(0.25))
    elif role == "deks":
        out = [session.rotate_deks(progress=lambda _n: time.sleep(0.01)) for _ in range(DEK_ROUNDS)]
    else:
        deadline = time.monotonic() + DEADLINE_S + 5
        seed = {rid: (c, f) for rid, (c, f) in setup["seed"].items()}
        out = read_write_loop(
            session,
            setup["customers"],
            seed,
            role,
            lambda: not (flags / "stop").exists() and time.monotonic() < deadline,
        )
    vault.close()
    print(json.dumps(out))


def spawn(role: str, setup_file: Path, flags: Path) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
        "import test_rotate_concurrency as t; t.worker_main(*sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, role, str(setup_file), str(flags)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], role: str) -> Any:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{role}: {err.decode(errors='replace')[-3000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


def log_entries(v: Vault) -> list[dict[str, Any]]:
    rows = v._ctx.data.read(lambda c: c.execute(select(log.c.body).order_by(log.c.seq)).all())
    return [json.loads(bytes(r.body)) for r in rows]


def records_touched_between(entries: list[dict[str, Any]], first: int, last: int) -> set[str]:
    return {
        e["record"]
        for e in entries
        if first < e["seq"] < last and e["action"] in ("record.put", "record.get", "record.update")
    }


@pytest.mark.slow
def test_records_stay_readable_and_writable_while_keys_rotate(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    path = tmp_path / "vault"
    v = Vault.create(path, keyfile=keyfile, data_url=backend)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        v.declare_kind("profile", fields=["name", "phone"], purposes=[PURPOSE])
        s = v.admin()
        cids = [s.add_customer() for _ in range(CUSTOMERS)]
        items = [
            (c, "profile", {"name": f"seed-{c[-5:]}-{i}", "phone": str(i)})
            for c in cids
            for i in range(RECORDS_EACH)
        ]
        rids = s.put_many(items, purpose=PURPOSE)
        seed: Expected = {rid: (c, dict(f)) for rid, (c, _k, f) in zip(rids, items, strict=True)}
        bulk = ids.new_ids(ids.CUSTOMER, KEYSTORE_ONLY_DEKS)
        v._ctx.keys.create_customers(bulk, KEYSTORE_TS)
        setup_file = tmp_path / "setup.json"
        setup_file.write_text(
            json.dumps(
                {
                    "path": str(path),
                    "keyfile": str(keyfile),
                    "data_url": backend,
                    "customers": cids,
                    "seed": seed,
                }
            )
        )
        flags = tmp_path / "flags"
        flags.mkdir()
        # Unlock one process at a time; then let all of them start at the same moment.
        for role in ("kek", "deks", "rw"):
            procs[role] = spawn(role, setup_file, flags)
            (flags / f"open.{role}").touch()
            wait_for(flags / f"ready.{role}", timeout=30)
        (flags / "go").touch()
        deadline = time.monotonic() + DEADLINE_S

        def rotating() -> bool:
            busy = procs["kek"].poll() is None or procs["deks"].poll() is None
            return busy and time.monotonic() < deadline

        mine = read_write_loop(s, cids, seed, "test", rotating)
        (flags / "stop").touch()
        assert time.monotonic() < deadline, "the rotations did not finish in time"
        kek = finish(procs["kek"], "kek")
        dek_rounds = finish(procs["deks"], "deks")
        theirs = finish(procs["rw"], "rw")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        v.close()

    assert kek["epoch"] == 2 and kek["new_epoch"] is True
    assert kek["rewrapped"] >= KEYSTORE_ONLY_DEKS
    assert [sorted(done) for done in dek_rounds] == [sorted(cids)] * DEK_ROUNDS
    assert mine["iterations"] > 0 and theirs["iterations"] > 0

    expected: Expected = dict(seed)
    for result in (mine, theirs):
        expected.update({rid: (c, dict(f)) for rid, (c, f) in result["written"].items()})

    with Vault.open(path, keyfile=keyfile, data_url=backend) as reopened:
        entries = log_entries(reopened)
        start, done = (
            next(e["seq"] for e in entries if e["action"] == action)
            for action in ("keys.rotate-kek.start", "keys.rotate-kek.done")
        )
        during_kek = records_touched_between(entries, start, done)
        assert during_kek & set(mine["written"]) and during_kek & set(theirs["written"])
        dek_seqs = [e["seq"] for e in entries if e["action"] == "keys.rotate-dek"]
        assert len(dek_seqs) == CUSTOMERS * DEK_ROUNDS
        assert records_touched_between(entries, dek_seqs[0], dek_seqs[-1])

        session = reopened.admin()
        pairs = [(c, rid) for rid, (c, _f) in expected.items()]
        got = {r.id: dict(r.fields) for r in session.get_many(pairs, purpose=PURPOSE)}
        assert got == {rid: f for rid, (_c, f) in expected.items()}

        final = DEK_ROUNDS + 1
        versions = reopened._ctx.data.read(
            lambda c: {
                str(r.id): int(r.dek_version)
                for r in c.execute(select(customers.c.id, customers.c.dek_version))
            }
        )
        assert versions == dict.fromkeys(cids, final)
        record_versions = reopened._ctx.data.read(
            lambda c: set(c.execute(select(records.c.dek_version)).scalars())
        )
        assert record_versions == {final}
        keystore = reopened._ctx.keys.store
        assert sorted((r.customer_id, r.version) for r in keystore.deks(cids)) == sorted(
            (c, final) for c in cids
        )
        reopened._ctx.keys.forget(cids + bulk)
        assert len(reopened._ctx.keys.customer_keys(cids + bulk)) == len(cids) + len(bulk)

        report = reopened.verify_log()
        assert report.ok, report.message
        with Auditor.open(path, data_url=backend) as auditor:
            audit = auditor.verify()
        assert audit.ok, audit.message

        # Whatever the race left (a DEK version made under the old epoch while the
        # rotation ran), one more rotation ends with a single epoch.
        session.rotate_kek(retire=True)
        assert len(keystore.dek_counts()) == 1 and len(keystore.epochs()) == 1
