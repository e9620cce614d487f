"""Adding customers in batches (issue 19 item 4): one keystore transaction and one
logged transaction per batch, one ``customer.add`` entry per customer, every spec
checked before anything is written, and a process killed between the keystore and the
data transaction leaves no half-added customer: the next open destroys the keys the
crash left without rows. Real vaults, real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shredvault.vault import DuplicateRefError, SchemaError, Vault
from shredvault.vault.customers import ADDING_PREFIX
from shredvault.vault.store import customers, log

from processes import CRASH_EXIT_CODE, paused_python, run_python

_ADD_MANY = r"""
import sys
from shredvault.vault import Vault

path, keyfile, data_url, count, batch = sys.argv[1:6]
vault = Vault.open(path, keyfile=keyfile, data_url=data_url or None)
specs = [{"ref": f"crm-{i}"} for i in range(int(count))]
vault.admin().add_customers(specs, batch_size=int(batch), on_batch=lambda ids: print(*ids))
vault.close()
"""


def customer_ids(v: Vault) -> set[str]:
    return v._ctx.data.read(lambda c: {str(r) for r in c.execute(select(customers.c.id)).scalars()})


def keystore_customers(v: Vault) -> set[str]:
    rows = v._ctx.keys.store._conn.execute("SELECT customer_id FROM subject_tags")
    return {str(r[0]) for r in rows}


def add_entries(v: Vault) -> list[dict[str, Any]]:
    stmt = select(log.c.body).where(log.c.action == "customer.add").order_by(log.c.seq)
    return [json.loads(bytes(b)) for b in v._ctx.data.read(lambda c: c.execute(stmt).scalars())]


def test_add_customers_returns_ids_in_order_with_one_entry_and_key_each(make_vault: Any) -> None:
    v = make_vault()
    s = v.admin()
    specs = [{"ref": f"crm-{i}", "consent": {"transfer": i % 2 == 0}} for i in range(7)]
    batches: list[list[str]] = []

    cids = s.add_customers(specs, batch_size=3, on_batch=batches.append)

    assert [len(b) for b in batches] == [3, 3, 1]
    assert [c for batch in batches for c in batch] == cids
    assert [s.customer(c).ref for c in cids] == [f"crm-{i}" for i in range(7)]
    assert s.customer(cids[1]).consent == {"transfer": False}
    entries = add_entries(v)
    tags = v._ctx.keys.customer_keys(cids)
    assert [e["subject"] for e in entries] == [tags[c].subject_tag.hex() for c in cids]
    assert keystore_customers(v) == set(cids)
    assert v._ctx.keys.store.meta_with_prefix(ADDING_PREFIX) == {}
    rid = (
        s.put(cids[6], "note", {"text": "x"}, purpose="service")
        if "note" in v._ctx.kinds()
        else None
    )
    assert rid is None or s.get(cids[6], rid, purpose="service")
    report = v.verify_log()
    assert report.ok, report.message


def test_a_bad_spec_anywhere_writes_nothing(sqlite_vault: Vault) -> None:
    s = sqlite_vault.admin()
    head = sqlite_vault.head.seq
    for bad in ([{"ref": "a"}, {"rfe": "b"}], [{"ref": ""}], [{"consent": {"x": "yes"}}], ["x"]):
        with pytest.raises(SchemaError):
            s.add_customers(bad)
    with pytest.raises(SchemaError):
        s.add_customers([{"ref": "a"}], batch_size=0)
    assert customer_ids(sqlite_vault) == set() and keystore_customers(sqlite_vault) == set()
    assert sqlite_vault.head.seq == head


def test_a_duplicate_ref_refuses_its_batch_only_and_erases_its_keys(
    tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, unique_refs=True) as v:
        s = v.admin()
        s.add_customer(ref="taken")
        specs = [{"ref": "a"}, {"ref": "b"}, {"ref": "c"}, {"ref": "taken"}]
        with pytest.raises(DuplicateRefError, match="2 customer"):
            s.add_customers(specs, batch_size=2)
        assert {s.customer(c).ref for c in customer_ids(v)} == {"taken", "a", "b"}
        assert keystore_customers(v) == customer_ids(v)
        with pytest.raises(DuplicateRefError):
            s.add_customers([{"ref": "x"}, {"ref": "x"}])
        assert keystore_customers(v) == customer_ids(v)


@pytest.mark.parametrize("crash_at", ["add-customers:after-keys", "add-customers:after-data"])
def test_a_crash_mid_batch_leaves_no_half_added_customer(
    tmp_path: Path, keyfile: Path, backend: str | None, crash_at: str
) -> None:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile, data_url=backend) as v:
        first = v.admin().add_customers([{"ref": "before"}])
    done = run_python(
        _ADD_MANY, str(path), str(keyfile), backend or "", "5", "3", crash_at=crash_at
    )
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with Vault.open(path, keyfile=keyfile, data_url=backend) as v:
        rows = customer_ids(v)
        # after-keys: the first batch died before its rows; after-data: it committed.
        assert rows == set(first) | (
            set() if crash_at.endswith("keys") else set(done.stdout.split() or rows - set(first))
        )
        assert len(rows) == (1 if crash_at.endswith("keys") else 4)
        assert keystore_customers(v) == rows  # no key without its row, no row without keys
        assert v._ctx.keys.store.meta_with_prefix(ADDING_PREFIX) == {}
        assert len(add_entries(v)) == len(rows)
        assert not list(path.glob("adding-*.lock"))
        report = v.verify_log()
        assert report.ok, report.message
        # the vault goes on adding
        more = v.admin().add_customers([{"ref": "after"}])
        assert keystore_customers(v) == rows | set(more)


def test_an_open_leaves_alone_a_batch_still_under_way_in_another_process(
    tmp_path: Path, keyfile: Path
) -> None:
    path = tmp_path / "vault"
    with Vault.create(path, keyfile=keyfile) as v:
        v.admin().add_customer()
    args = (str(path), str(keyfile), "", "2", "2")
    with paused_python(
        _ADD_MANY, *args, pause_at="add-customers:after-keys", pause_dir=tmp_path / "p"
    ) as child:
        with Vault.open(path, keyfile=keyfile) as v:
            assert len(keystore_customers(v)) == 3  # the paused batch's keys stay
        done = child.release()
    assert done.returncode == 0, done.stderr
    with Vault.open(path, keyfile=keyfile) as v:
        assert keystore_customers(v) == customer_ids(v) and len(customer_ids(v)) == 3
