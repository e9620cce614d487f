"""Where the time goes in put_many / get_many: cProfile, and stage timings.

Usage::

    .venv/bin/python benchmarks/profile_put_many.py [put_many|get_many] [batches] [--url URL]
    .venv/bin/python benchmarks/profile_put_many.py stages

The first form builds a keyfile vault on SQLite (or on ``--url``'s PostgreSQL,
search_path set by the caller), warms it up, profiles ``batches`` calls and prints the
functions by own time, then the same grouped into buckets (database, AES-GCM, SHA-256,
JSON, ...) in microseconds per record. cProfile inflates call-heavy Python several
times over, so read the buckets as shares.

``stages`` times, without a profiler, each per-record step the two calls take outside
the database (the library's own functions on 1,000 1 KiB records; best of 30 runs).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shredvault.keys import generate_keyfile
from shredvault.keys.envelope import Envelope, record_aad_prefix, record_aad_suffix
from shredvault.keys.secret import SecretBytes
from shredvault.vault import ids
from shredvault.vault.canonical import canonical, canonical_text
from shredvault.vault.log import HASH_PREFIX, Event, LogEntry, encode_body
from shredvault.vault.model import Record
from shredvault.vault.schema import KindSpec, encode_fields
from shredvault.vault.sealing import parse_fields

from harness import ACTOR, BATCH, FIELDS, KIND, PURPOSE, make_workload, record_fields

# (bucket, substrings of "file:'function'" in pstats keys); first match wins.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("SQLAlchemy", ("sqlalchemy",)),
    ("database driver (sqlite3/psycopg execute, fetch, commit)", ("sqlite3", "psycopg")),
    ("AES-GCM (cryptography)", ("AESGCM",)),
    ("SHA-256 (hashlib)", ("_hashlib",)),
    ("JSON encode/decode (json module)", ("json/", "encode_basestring", "_json")),
    ("base32 ids (base64 module)", ("base64.py",)),
    ("checkpoint: Ed25519 + keystore anchor", ("signing.py", "checkpoint.py", "keys/store.py")),
    ("vault + keys Python", ("/vault/", "/keys/")),
]


def bucket_of(key: tuple[str, int, str]) -> str:
    name = f"{key[0]}:'{key[2]}'"
    for bucket, needles in BUCKETS:
        if any(n in name for n in needles):
            return bucket
    return "other (builtins, os.urandom, ...)"


def best_us(work: Callable[[], Any], per: int = BATCH) -> float:
    """Best of 30 runs of ``work``, in µs per record."""
    return min(timeit.repeat(work, number=1, repeat=30)) / per * 1e6


def stages() -> None:
    """Time each per-record step of put_many and get_many outside the database."""
    spec = KindSpec.build(KIND, FIELDS, [PURPOSE])
    fields = [record_fields(i) for i in range(BATCH)]
    cids = ids.new_ids(ids.CUSTOMER, BATCH)
    rids = ids.new_ids(ids.RECORD, BATCH)
    env = Envelope(SecretBytes(os.urandom(32)), 1)
    prefix = record_aad_prefix(ids.new_id(ids.VAULT), cids[0])
    plaintexts = [encode_fields(spec, f) for f in fields]
    contexts = [record_aad_suffix(prefix, r, KIND, 1) for r in rids]
    blobs = env.seal_many(plaintexts, contexts)
    tag = os.urandom(16)
    names = sorted(FIELDS)

    def events() -> list[Event]:
        return [
            Event(
                ACTOR,
                ACTOR,
                "record.put",
                subject=tag.hex(),
                record=r,
                purpose=PURPOSE,
                detail={"kind": KIND, "fields": sorted(f)},
            )
            for r, f in zip(rids, fields, strict=True)
        ]

    evs = events()
    ts = "2026-01-01T00:00:00.000000Z"

    def bodies() -> list[bytes]:
        text: dict[Any, str] = {}
        return [encode_body(e, i, ts, "0" * 64, e.detail, text) for i, e in enumerate(evs)]

    encoded = bodies()
    start = hashlib.sha256(HASH_PREFIX).copy

    def hashes() -> list[str]:
        out = []
        for body in encoded:
            hasher = start()
            hasher.update(body)
            out.append(hasher.hexdigest())
        return out

    digests = hashes()
    rows = [
        (i, "0" * 64, d, ts, ACTOR, "record.put", e.subject, e.record, "ok", b)
        for i, (d, e, b) in enumerate(zip(digests, evs, encoded, strict=True))
    ]
    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("put", "check ids (regex)", lambda: [ids.is_id(c, ids.CUSTOMER) for c in cids]),
        (
            "put",
            "encode_fields (validate + canonical JSON)",
            lambda: [encode_fields(spec, f) for f in fields],
        ),
        (
            "put",
            "  of which canonical JSON (flat ASCII path)",
            lambda: [canonical(f) for f in fields],
        ),
        (
            "put",
            "  the same through the JSON encoder (before)",
            lambda: [canonical_text(f).encode("utf-8") for f in fields],
        ),
        ("put", "ids.new_ids (base32 via base64 module)", lambda: ids.new_ids(ids.RECORD, BATCH)),
        ("put", "record_aad_suffix", lambda: [record_aad_suffix(prefix, r, KIND, 1) for r in rids]),
        ("put", "Envelope.seal_many (AES-256-GCM)", lambda: env.seal_many(plaintexts, contexts)),
        ("both", "Event objects (frozen dataclass)", events),
        ("both", "log.encode_body", bodies),
        ("both", "SHA-256 of the bodies", hashes),
        (
            "both",
            "LogEntry objects + row tuples",
            lambda: [(LogEntry(r[0], r[2], r[9]), tuple(r)) for r in rows],
        ),
        (
            "get",
            "Envelope.open (AES-256-GCM)",
            lambda: [env.open(b, c) for b, c in zip(blobs, contexts, strict=True)],
        ),
        (
            "get",
            "sealing.parse_fields of the plaintext",
            lambda: [parse_fields(p) for p in plaintexts],
        ),
        (
            "get",
            "  json.loads of the plaintext (before)",
            lambda: [json.loads(p) for p in plaintexts],
        ),
        (
            "get",
            "Record objects",
            lambda: [
                Record(r, c, KIND, f, 1, ts, ts) for r, c, f in zip(rids, cids, fields, strict=True)
            ],
        ),
        ("get", "sorted(field names) for the entry", lambda: [sorted(f) for f in fields]),
    ]
    print(f"{'call':<5} {'step (per 1 KiB record)':<46} {'µs':>6}")
    for call, name, work in steps:
        print(f"{call:<5} {name:<46} {best_us(work):>6.2f}")
    print(f"\n(entry body {len(encoded[0])} bytes; field names {names})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "op", nargs="?", default="put_many", choices=["put_many", "get_many", "stages"]
    )
    parser.add_argument("batches", nargs="?", type=int, default=10)
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.op == "stages":
        stages()
        return

    with tempfile.TemporaryDirectory() as tmp:
        keyfile = Path(tmp) / "vault.key"
        generate_keyfile(keyfile)
        backend = "postgres" if args.url else "sqlite"
        w = make_workload(Path(tmp) / "vault", keyfile, args.url, backend)
        items = w.items(BATCH)
        rids = w.session.put_many(items, purpose=PURPOSE)
        pairs = [(c, r) for (c, _k, _f), r in zip(items, rids, strict=True)]
        w.session.get_many(pairs, purpose=PURPOSE)  # warm every cache

        def call() -> None:
            if args.op == "put_many":
                w.session.put_many(items, purpose=PURPOSE)
            else:
                w.session.get_many(pairs, purpose=PURPOSE)

        profile = cProfile.Profile()
        for _ in range(args.batches):
            profile.runcall(call)
        w.vault.close()

    stats = pstats.Stats(profile)
    records = args.batches * BATCH
    print(f"{args.op} on {backend}: {args.batches} x {BATCH} records\n")
    stats.sort_stats("tottime").print_stats(args.top)
    totals: dict[str, float] = {}
    raw = stats.stats  # type: ignore[attr-defined]
    for key, (_cc, _nc, tottime, _ct, _callers) in raw.items():
        totals[bucket_of(key)] = totals.get(bucket_of(key), 0.0) + tottime
    whole = sum(totals.values())
    print(f"{'bucket':<58} {'µs/record':>10} {'share':>7}")
    for bucket, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{bucket:<58} {seconds / records * 1e6:>10.2f} {seconds / whole:>7.1%}")
    print(f"{'total (profiled, inflated by cProfile)':<58} {whole / records * 1e6:>10.2f}")


if __name__ == "__main__":
    main()
