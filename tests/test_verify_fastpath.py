"""Verification's fast path (vault/entryshape.py) decides exactly as the full checks.

Chains are built in memory with the vault's own encoder; one entry is then changed
(the chain re-linked after it, so hashes and links hold) in ways the fast test must
not accept on its own: the verdict has to be the one docs/log-format.md §6 gives,
whether the rows come in one batch, in small batches, or as entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shredvault.vault.log import GENESIS, Event, LogEntry, body_columns, encode_body, entry_hash
from shredvault.vault.verify import verify_chain

Change = Callable[[bytes, tuple[Any, ...]], tuple[bytes, tuple[Any, ...]]]
N = 40
AT = 23


def build(changes: dict[int, Change] | None = None) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    prev = GENESIS
    for seq in range(1, N + 1):
        action = "record.put" if seq % 3 == 0 else "record.get"
        ev = Event(
            "olga",
            "operator",
            action,
            subject="ab" * 16,
            record=f"rec_{seq:026d}",
            purpose="service",
            detail={"fields": ["name", "phone"], "kind": "profile"},
        )
        body = encode_body(ev, seq, "2026-11-23T09:00:00.000000Z", prev, ev.detail, {})
        columns = body_columns(body)
        if changes and seq in changes:
            body, columns = changes[seq](body, columns)
        digest = entry_hash(body)
        rows.append((seq, digest, body, *columns))
        prev = digest
    return rows


def verdicts(rows: list[tuple[Any, ...]], strict: bool) -> set[tuple[Any, ...]]:
    """The report's (ok, reason, seq, message) through every way rows can arrive."""
    seen = set()
    for size in (N, 7, 1):
        batches = [rows[i : i + size] for i in range(0, len(rows), size)]
        report = verify_chain(rows=batches, vault_id="v", public_key=None, strict=strict)
        seen.add((report.ok, report.reason, report.bad_seq, report.message, report.entries))
    entries = [LogEntry(r[0], r[1], r[2], tuple(r[3:])) for r in rows]
    report = verify_chain(entries, vault_id="v", public_key=None, strict=strict)
    seen.add((report.ok, report.reason, report.bad_seq, report.message, report.entries))
    return seen


def replace(old: bytes, new: bytes) -> Change:
    def change(body: bytes, columns: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...]]:
        assert old in body
        return body.replace(old, new), columns

    return change


def set_column(index: int, value: Any) -> Change:
    def change(body: bytes, columns: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...]]:
        return body, (*columns[:index], value, *columns[index + 1 :])

    return change


def both(first: Change, then: Change) -> Change:
    return lambda body, columns: then(*first(body, columns))


def test_an_intact_chain_verifies_every_way() -> None:
    assert verdicts(build(), strict=True) == {(True, None, None, f"{N} entries verify; last "
                                               f"signed checkpoint at seq None; unsigned tail {N}",
                                               N)}  # fmt: skip


CASES: dict[str, tuple[Change, Any, Any]] = {
    # name: (change, (reason, bad_seq) live, (reason, bad_seq) strict)
    "whitespace": (replace(b'"actor":"olga"', b'"actor": "olga"'), None, ("malformed", AT)),
    "escaped purpose": (
        replace(b'"purpose":"service"', b'"purpose":"serv\\u0069ce"'),
        None,
        ("malformed", AT),
    ),
    "duplicate actor in head": (
        replace(b'"detail":{', b'"detail":{},"actor":"eve","x":{'),
        ("modified", AT),
        ("malformed", AT),
    ),
    "non-ascii actor, columns agree": (
        both(replace(b'"actor":"olga"', '"actor":"ölga"'.encode()), set_column(1, "ölga")),
        None,
        None,
    ),
    "subject column edited": (set_column(3, "cd" * 16), ("modified", AT), None),
    "record column edited": (set_column(4, "rec_other"), ("modified", AT), None),
    "target column edited": (set_column(6, "record:rec_other"), ("modified", AT), None),
    "ts column edited": (set_column(0, "2026-11-23T09:00:00.000001Z"), ("modified", AT), None),
    "outcome in body": (replace(b'"outcome":"ok"', b'"outcome":"denied"'), ("modified", AT), None),
    "seq in body": (replace(b'"seq":23,', b'"seq":24,'), ("modified", AT), ("modified", AT)),
    "null record": (
        both(
            replace(b'"record":"rec_00000000000000000000000023"', b'"record":null'),
            both(set_column(4, None), set_column(6, None)),
        ),
        None,
        None,
    ),
    "text column of another type": (set_column(2, 5), ("modified", AT), None),
    # canonical (keys sorted) and v1: the format tolerates unknown members after "v"
    "extra member": (replace(b',"v":1}', b',"v":1,"w":2}'), None, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_changed_entry_gets_the_full_checks_verdict(name: str) -> None:
    change, live, strict = CASES[name]
    rows = build({AT: change})
    for is_strict, expected in ((False, live), (True, strict)):
        # Exports carry no lookup columns: strict mode is checked on bodies alone.
        use = rows if not is_strict else [r[:3] for r in rows]
        found = verdicts(use, strict=is_strict)
        assert len(found) == 1, found
        ((ok, reason, seq, _message, _entries),) = found
        assert (reason, seq) == (expected or (None, None)), (is_strict, found)
        assert ok is (expected is None)


def test_the_same_head_later_with_another_body_is_still_checked() -> None:
    # Entry 5 teaches the cache its head; entry 23 shares the head but hides a second
    # member after it: the fast test must not take it on the head's word.
    rows = build({AT: replace(b',"v":1}', b',"v":1,"subject":"ff"}')})
    assert {v[1:3] for v in verdicts(rows, strict=False)} == {("modified", AT)}
