"""What checking record rows adds to a read, per record, old way against new, interleaved
in one process (benchmarks/README.md, "Authenticated rows").

    python benchmarks/rowcheck_steps.py [--data-url URL] [--records 1000] [--rounds 30]

Builds a vault with ``--records`` records of one customer, then times, round by round in
turn, three reads of all of them by id in one transaction each:

* ``bare``: ``SELECT sv_records.* WHERE id IN (...)`` — no check (the floor);
* ``old``: the same rows, then ``check_rows`` (a mapping and ``hmac.digest`` per row,
  then the freshness lookup as a second grouped query over the log's targets);
* ``new``: ``records_select()`` (freshness as a correlated ``max(seq)`` in the same
  query), then ``check_records`` (tuples, HMAC keyed once per batch);
* ``query``: ``records_select()`` alone (what the freshness column costs the query).

Prints the best round of each in µs per record and what ``old`` and ``new`` add to
``bare``. Reaches into the open vault's context for its row-auth key (a benchmark, not
an API).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, select, text

from shredvault.keys import generate_keyfile
from shredvault.vault import Vault
from shredvault.vault.rowauth import check_records, check_rows, records_select
from shredvault.vault.store import records

PURPOSE = "service"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-url", default=None)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.data_url is None:
        build(None, args)
        return
    # PostgreSQL: a schema of its own, dropped afterwards (the server is shared)
    schema = "svb_" + secrets.token_hex(6)
    engine = create_engine(args.data_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in args.data_url else "?"
    try:
        build(f"{args.data_url}{sep}options=-csearch_path%3D{schema}", args)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def build(url: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keyfile = Path(tmp) / "key"
        generate_keyfile(keyfile)
        with Vault.create(Path(tmp) / "v", keyfile=keyfile, data_url=url) as v:
            v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
            s = v.admin()
            cid = s.add_customer(ref="bench")
            rids = s.put_many(
                [(cid, "profile", {"name": f"n{i}"}) for i in range(args.records)],
                purpose=PURPOSE,
            )
            # a few updates, so the log holds more than one entry per some targets
            for rid in rids[:50]:
                s.update(cid, rid, {"name": "changed"}, purpose=PURPOSE)
            run(v, rids, args.rounds)


def run(v: Vault, rids: list[str], rounds: int) -> None:
    ctx = v._ctx  # the benchmark needs the row-auth key
    auth = ctx.keys.row_auth
    where = records.c.id.in_(bindparam("ids", expanding=True))
    params = {"ids": rids}

    def bare(conn: Any) -> None:
        rows = [r._mapping for r in conn.execute(select(records).where(where), params)]
        assert len(rows) == len(rids)

    def old(conn: Any) -> None:
        rows = [r._mapping for r in conn.execute(select(records).where(where), params)]
        assert check_rows(conn, auth, "sv_records", rows) == []

    def new(conn: Any) -> None:
        fetched = conn.execute(records_select().where(where), params).all()
        assert check_records(auth, fetched) == []
        rows = [r._mapping for r in fetched]
        assert len(rows) == len(rids)

    def query(conn: Any) -> None:
        rows = [r._mapping for r in conn.execute(records_select().where(where), params).all()]
        assert len(rows) == len(rids)

    steps: dict[str, Callable[[Any], None]] = {
        "bare": bare,
        "old": old,
        "query": query,
        "new": new,
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            ctx.data.read(step)
            best[name] = min(best[name], time.perf_counter() - start)
    per = {name: t / len(rids) * 1e6 for name, t in best.items()}
    backend = "postgres" if not ctx.data.is_sqlite else "sqlite"
    print(
        f"{backend} {len(rids)} records, best of {rounds}: "
        f"bare {per['bare']:.2f}  old {per['old']:.2f} (+{per['old'] - per['bare']:.2f})  "
        f"new {per['new']:.2f} (+{per['new'] - per['bare']:.2f}; its query alone "
        f"+{per['query'] - per['bare']:.2f}) µs/record"
    )


if __name__ == "__main__":
    main()
