"""Chain verification (DESIGN §6), shared by the live store and offline exports.

Streams entries once, in seq order, with one entry of look-ahead (to tell a swap from a
deletion), and checks: each entry's hash over its exact bytes; its seq and ``prev``
link; every checkpoint's vault, signature and head; and that the log reaches the
anchor. Stops at the first failure and names its seq and reason. docs/log-format.md
specifies the same algorithm for independent verifiers.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .canonical import canonical
from .checkpoint import Checkpoint
from .entryshape import EntryShapes
from .inputs import parse_json
from .log import GENESIS, HASH_PREFIX, LOOKUP_COLUMNS, LogEntry, body_columns

__all__ = ["Row", "VerifyReport", "verify_chain"]

_PREV = b',"prev":"'
_SEQ = b',"seq":'
_SHA = hashlib.sha256(HASH_PREFIX)


@dataclass(slots=True)
class VerifyReport:
    """What verification found. ``ok`` is False iff ``reason`` is set."""

    entries: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    head: str = GENESIS
    checkpoints: int = 0
    last_checkpoint: int | None = None
    anchor_seq: int | None = None
    reason: str | None = None
    bad_seq: int | None = None
    message: str = "log verifies"
    notes: list[str] = field(default_factory=list)
    #: what the key checked against is (``vault.trust``): None for the live store
    trust: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def unsigned_tail(self) -> int:
        return self.last_seq - (self.last_checkpoint or 0)

    def fail(self, reason: str, seq: int | None, message: str) -> VerifyReport:
        if self.reason is None:
            self.reason, self.bad_seq, self.message = reason, seq, message
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "unsigned_tail": self.unsigned_tail,
            "anchor_seq": self.anchor_seq,
            "reason": self.reason,
            "bad_seq": self.bad_seq,
            "message": self.message,
            "notes": list(self.notes),
            "trust": self.trust,
        }


def _fields(body: bytes, strict: bool) -> tuple[int, str]:
    """(seq, prev) of an entry body. ``prev`` and ``seq`` are the last keys of their
    names in sorted order after the only nested object (``detail``), so the last
    occurrence is the top-level one. ``strict`` also demands canonical bytes."""
    if strict:
        raw = parse_json(body, what="entry", fail=ValueError)
        if not isinstance(raw, dict) or canonical(raw) != body or raw.get("v") != 1:
            raise ValueError("entry is not canonical v1 JSON")
        seq, prev = raw["seq"], raw["prev"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
            raise ValueError("entry has a malformed seq or prev")
        return seq, prev
    i = body.rindex(_PREV)
    j = body.rindex(_SEQ)
    return int(body[j + 7 : body.index(b",", j + 7)]), body[i + 9 : i + 73].decode("ascii")


def _column_mismatch(entry: LogEntry) -> str | None:
    """The first lookup column of a stored entry that differs from what its hashed
    body says (a hidden or redirected entry), or None."""
    try:
        said = body_columns(entry.body)
    except (ValueError, UnicodeDecodeError):
        return "body"
    assert entry.columns is not None
    for name, stored, expected in zip(LOOKUP_COLUMNS, entry.columns, said, strict=True):
        if stored != expected:
            return name
    return None


Row = tuple[Any, ...]
"""A stored entry as read in bulk: ``(seq, hash, body)``, then its
:data:`~vault.log.LOOKUP_COLUMNS` when they are checked. An export's rows carry
``None`` for ``seq``: the seq the body claims is taken when it is needed."""


@dataclass(slots=True)
class _Walk:
    """The state of one walk along the chain, shared by the fast path (whole batches)
    and the entry-by-entry path, which decides every case the fast one does not."""

    report: VerifyReport
    by_seq: dict[int, Checkpoint]
    marks: list[int]
    anchor: Checkpoint | None
    public_key: bytes | None
    strict: bool
    progress: Callable[[int], None] | None
    expected: int = 1
    prev: str = GENESIS
    prev_of_last: str | None = None
    peeking: bool = False
    shapes: EntryShapes = field(default_factory=EntryShapes)

    def advance(self, count: int) -> None:
        before = self.report.entries
        self.report.entries += count
        crossed = self.report.entries // 10_000 - before // 10_000
        if self.progress is not None and crossed:
            self.progress(10_000 * crossed)


def _claimed_seq(body: bytes) -> int:
    """The seq an export line's body claims (as :func:`vault.audit` splits lines)."""
    j = body.rfind(_SEQ)
    try:
        return int(body[j + 7 : body.index(b",", j + 7)]) if j >= 0 else -1
    except ValueError:
        return -1


def _entry(row: Row) -> LogEntry:
    seq, digest, body = row[0], row[1], row[2]
    # A tampered SQLite row can hold TEXT where bytes belong: verify it as bytes.
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    return LogEntry(
        _claimed_seq(raw) if seq is None else int(seq),
        str(digest),
        raw,
        tuple(row[3:]) if len(row) > 3 else None,
    )


def _exact(walk: _Walk, row: Row, seq: int, prev: str) -> bool:
    """The entry-by-entry checks of a hash-verified entry at its expected place."""
    try:
        body_seq, body_prev = _fields(row[2], walk.strict)
    except (ValueError, KeyError, UnicodeDecodeError):
        return False
    if body_seq != seq or body_prev != prev:
        return False
    return len(row) == 3 or _column_mismatch(LogEntry(seq, row[1], row[2], row[3:])) is None


def _fast(walk: _Walk, batch: Sequence[Row]) -> bool:
    """Verify a whole batch that continues the chain exactly where it stands, and
    advance the walk over it; False (nothing changed) if any entry needs the
    entry-by-entry path, which then judges the batch from the start."""
    report, start, count = walk.report, walk.expected, len(batch)
    if walk.peeking or report.first_seq is None or not count:
        return False
    seqs, digests, bodies = list(zip(*batch, strict=True))[:3]
    if seqs[0] is not None and seqs != tuple(range(start, start + count)):
        return False
    try:
        joined = b"".join(bodies)
    except TypeError:  # a body stored as text: the careful path converts it
        return False
    # Without strict form or columns to check, the careful test is two searches:
    # cheaper than the shape test.
    plain = (walk.strict or len(batch[0]) > 3) and walk.shapes.plain(bodies, joined)
    fits, learn, sha = walk.shapes.fits, walk.shapes.learn, _SHA.copy
    prev, seq = walk.prev, start
    for row in batch:
        body, digest = row[2], row[1]
        hasher = sha()
        hasher.update(body)
        if hasher.hexdigest() != digest:
            return False
        if not (plain and fits(body, seq, prev, row[3:] if len(row) > 3 else None)):
            if not _exact(walk, row, seq, prev):
                return False
            if plain:
                learn(body)
        prev, seq = digest, seq + 1
    last = start + count - 1
    signed = walk.marks[bisect_left(walk.marks, start) : bisect_right(walk.marks, last)]
    for at_seq in signed:
        digest = digests[at_seq - start]
        cp = walk.by_seq.get(at_seq)
        if cp is not None and cp.head != digest:
            return False
        if walk.anchor is not None and walk.anchor.seq == at_seq and walk.anchor.head != digest:
            return False
    covered = [s for s in signed if s in walk.by_seq]
    report.checkpoints += len(covered)
    if covered and walk.public_key is not None:
        report.last_checkpoint = covered[-1]
    walk.prev_of_last = digests[-2] if count > 1 else walk.prev
    walk.prev = report.head = digests[-1]
    report.last_seq, walk.expected = last, last + 1
    walk.advance(count)
    return True


def _walked(walk: _Walk, batches: Iterable[Sequence[Row]]) -> Iterator[LogEntry]:
    """The entries the fast path leaves to the entry-by-entry walk."""
    for rows in batches:
        batch = rows
        if walk.report.first_seq is None and batch:
            # The first entry sets where the walk starts: the careful path takes it.
            yield _entry(batch[0])
            batch = batch[1:]
        if not _fast(walk, batch):
            for row in batch:
                yield _entry(row)


def _batched(entries: Iterable[LogEntry], size: int = 5_000) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for entry in entries:
        batch.append((entry.seq, entry.hash, entry.body, *(entry.columns or ())))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def verify_chain(
    entries: Iterable[LogEntry] = (),
    *,
    vault_id: str,
    public_key: bytes | None,
    checkpoints: Sequence[Checkpoint] = (),
    anchor: Checkpoint | None = None,
    anchor_shortfall: str = "truncated",
    from_genesis: bool = True,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    last_seq_before: int = 0,
    rows: Iterable[Sequence[Row]] | None = None,
    after: tuple[int, str] | None = None,
) -> VerifyReport:
    """Verify a stream of entries (or ``rows``, batches of :data:`Row`, read in bulk);
    never raises for bad input, returns a report.

    ``last_seq_before`` is the seq known to precede the stream (for a stream that
    starts after genesis and turns out empty, where the log is known to end).

    ``after``: the seq and hash of an entry verified before (an authenticated mark);
    the stream must continue it, linked to that hash, from the next seq.

    ``anchor_shortfall`` names a log that ends before the anchor: ``"truncated"`` for an
    auditor's anchor, ``"rolled back"`` for the keystore's. Without ``public_key``
    signatures cannot be checked; the report says so in ``notes``.
    """
    report = VerifyReport(last_seq=last_seq_before)
    by_seq: dict[int, Checkpoint] = {}
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if cp.vault != vault_id:
            return report.fail(
                "foreign vault", cp.seq, f"checkpoint at seq {cp.seq} names another vault"
            )
        if public_key is not None and not cp.verify(public_key):
            return report.fail(
                "bad signature", cp.seq, f"checkpoint at seq {cp.seq} has a bad signature"
            )
        by_seq[cp.seq] = cp
    if anchor is not None:
        report.anchor_seq = anchor.seq
        if anchor.vault != vault_id:
            return report.fail("foreign vault", anchor.seq, "the anchor names another vault")
        if public_key is not None and not anchor.verify(public_key):
            return report.fail("bad signature", anchor.seq, "the anchor has a bad signature")
    if public_key is None:
        report.notes.append("no public key: checkpoint signatures were not checked")

    marks = sorted({*by_seq, *(() if anchor is None else (anchor.seq,))})
    walk = _Walk(report, by_seq, marks, anchor, public_key, strict, progress)
    if after is not None:
        from_genesis = True
        report.last_seq, report.head = after
        walk.expected, walk.prev = after[0] + 1, after[1]
    stream = _walked(walk, _batched(entries) if rows is None else rows)
    ahead: deque[LogEntry] = deque()

    def peek(k: int) -> int | None:
        """Seq of the k-th entry after the current one (1-based), if any."""
        walk.peeking = True
        while len(ahead) < k:
            nxt = next(stream, None)
            if nxt is None:
                return None
            ahead.append(nxt)
        return ahead[k - 1].seq

    while True:
        # Look-ahead is filled only when an entry is out of place; the common path
        # takes whole batches in _fast and never comes here.
        entry = ahead.popleft() if ahead else next(stream, None)
        if entry is None:
            break
        if report.first_seq is None:
            report.first_seq = entry.seq
            if not from_genesis:
                walk.expected = entry.seq
        expected, prev = walk.expected, walk.prev
        # Strict mode judges the form before the hash: bytes that are not canonical
        # JSON are "malformed" even if someone re-hashed them (docs/log-format.md §6).
        try:
            parsed = _fields(entry.body, strict) if strict else None
        except (ValueError, KeyError, UnicodeDecodeError):
            return report.fail("malformed", entry.seq, f"entry {entry.seq} is malformed")
        hasher = _SHA.copy()
        hasher.update(entry.body)
        if hasher.hexdigest() != entry.hash:
            return report.fail("modified", entry.seq, f"entry {entry.seq} does not match its hash")
        try:
            seq, body_prev = parsed if parsed is not None else _fields(entry.body, strict)
        except (ValueError, KeyError, UnicodeDecodeError):
            return report.fail("malformed", entry.seq, f"entry {entry.seq} is malformed")
        if seq != entry.seq:
            if peek(1) is not None:
                try:
                    next_seq = _fields(ahead[0].body, strict)[0]
                except (ValueError, KeyError, UnicodeDecodeError):
                    next_seq = None
                if next_seq == entry.seq and seq == entry.seq + 1:
                    return report.fail(
                        "reordered",
                        entry.seq,
                        f"entries {entry.seq} and {seq} are stored in each other's place",
                    )
            return report.fail("modified", entry.seq, f"entry stored at {entry.seq} says seq {seq}")
        if seq != expected:
            nxt = peek(1)
            if seq > expected and nxt == expected:
                if peek(2) == expected + 1:
                    return report.fail(
                        "inserted", seq, f"entry {seq} appears out of place before {expected}"
                    )
                return report.fail(
                    "reordered", expected, f"entry {expected} appears after entry {seq}"
                )
            if seq > expected:
                return report.fail("deleted", expected, f"entry {expected} is missing")
            if seq == expected - 1 and body_prev == walk.prev_of_last:
                return report.fail(
                    "inserted", seq, f"two entries claim seq {seq} after the same predecessor"
                )
            if nxt == expected:
                return report.fail("inserted", seq, f"entry {seq} appears again out of place")
            return report.fail("reordered", seq, f"entry {seq} appears after entry {expected - 1}")
        if report.entries == 0 and not from_genesis:
            prev = body_prev
        if entry.columns is not None:
            bad = _column_mismatch(entry)
            if bad is not None:
                return report.fail(
                    "modified",
                    seq,
                    f"entry {seq}'s {bad} column does not match its signed body",
                )
        if body_prev != prev:
            return report.fail(
                "modified",
                seq - 1,
                f"entry {seq - 1}'s hash does not match entry {seq}'s prev link",
            )
        at = by_seq.get(seq)
        if at is not None:
            if at.head != entry.hash:
                return report.fail(
                    "forked", seq, f"the log differs from the signed checkpoint at seq {seq}"
                )
            report.checkpoints += 1
            if public_key is not None:
                report.last_checkpoint = seq
        if anchor is not None and anchor.seq == seq and anchor.head != entry.hash:
            return report.fail("forked", seq, f"the log differs from the anchor at seq {seq}")
        walk.prev_of_last, walk.prev = prev, entry.hash
        report.last_seq, report.head = seq, entry.hash
        walk.expected = seq + 1
        walk.advance(1)
    if progress is not None:
        progress(report.entries % 10_000)

    beyond = [s for s in by_seq if s > report.last_seq]
    if beyond:
        return report.fail(
            "truncated",
            report.last_seq + 1,
            f"the log ends at seq {report.last_seq} but a signed checkpoint "
            f"covers seq {max(beyond)}",
        )
    if anchor is not None and anchor.seq > report.last_seq:
        return report.fail(
            anchor_shortfall,
            report.last_seq + 1,
            f"the log ends at seq {report.last_seq}, before the anchor at seq {anchor.seq}",
        )
    if report.ok:
        report.message = (
            f"{report.entries} entries verify; last signed checkpoint at seq "
            f"{report.last_checkpoint}; unsigned tail {report.unsigned_tail}"
        )
    return report
