"""The stored chain as a whole: its head row, and verifying a data store end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from sqlalchemy import Connection, func, inspect, select

from .checkpoint import Checkpoint, load_checkpoints
from .log import LogEntry, iter_entries, iter_rows
from .store import DataStore, LogHead, log, log_head
from .verify import Row, VerifyReport, verify_chain

__all__ = ["read_head", "verify_store"]


def read_head(conn: Connection) -> LogHead:
    """The log head row: seq, hash and time of the last committed entry."""
    row = conn.execute(select(log_head.c.seq, log_head.c.hash, log_head.c.ts)).one()
    return LogHead(int(row.seq), str(row.hash), str(row.ts))


def verify_store(
    data: DataStore,
    *,
    vault_id: str,
    public_key: bytes | None,
    since: int = 1,
    anchor: Checkpoint | None = None,
    anchor_shortfall: str = "truncated",
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[LogEntry], None] | None = None,
    columns: bool | None = None,
    after: tuple[int, str] | None = None,
    tap: Callable[[Sequence[Row]], None] | None = None,
) -> VerifyReport:
    """Verify a data store's chain, its checkpoints and its head row.

    ``columns``: also check each entry's lookup columns against its body (the log's
    ``target`` column exists from data schema 3 on); None: when the column exists.

    ``observe`` sees every entry as it is read, in the same pass (so a caller that
    needs the entries' content pays no second read); what it saw is verified only if
    the report is ok. ``tap`` does the same for whole batches of rows (with their
    lookup columns), without making an entry object of each.

    ``after`` (seq, hash): an entry verified before; verification starts after it
    and checks the link to it (``since`` is then its seq + 1)."""
    if after is not None:
        since = after[0] + 1

    # Order matters with writers running: a checkpoint commits with the head row that
    # covers it, so checkpoints read *before* the head are all at or below it, and every
    # entry up to that head has committed. Entries appended after we read the head are
    # simply not part of this verification.
    cps = data.read(lambda conn: load_checkpoints(conn, since=since))
    head = data.read(read_head)
    if columns is None:
        columns = data.read(lambda conn: "target" in _log_columns(conn))
    entries: Iterable[LogEntry] = ()
    rows: Iterable[list[Row]] | None = None
    if observe is None:
        rows = iter_rows(data, since=since, until=head.seq, columns=columns)
        if tap is not None:
            rows = _tapped_rows(rows, tap)
    else:
        entries = _tapped(iter_entries(data, since=since, until=head.seq, columns=columns), observe)
    report = verify_chain(
        entries,
        rows=rows,
        after=after,
        vault_id=vault_id,
        public_key=public_key,
        checkpoints=cps,
        anchor=anchor,
        anchor_shortfall=anchor_shortfall,
        from_genesis=since <= 1,
        strict=strict,
        progress=progress,
        last_seq_before=min(head.seq, since - 1),
    )
    if report.ok and (head.seq != report.last_seq or head.hash != report.head):
        reason = "truncated" if head.seq > report.last_seq else "modified"
        report.fail(
            reason,
            min(head.seq, report.last_seq) + 1,
            f"the log head row says seq {head.seq} but the log ends at {report.last_seq}",
        )
    if report.ok:
        # Rows past the head row: read the highest seq first, then the head. A real
        # entry commits together with a head at least as high, so a later head read
        # covers it; a row beyond that head was slipped in without one.
        highest = data.read(lambda conn: conn.execute(select(func.max(log.c.seq))).scalar())
        latest = data.read(read_head)
        if highest is not None and int(highest) > latest.seq:
            report.fail(
                "inserted",
                latest.seq + 1,
                f"entries up to seq {highest} lie beyond the head row (seq {latest.seq})",
            )
    return report


def _log_columns(conn: Connection) -> set[str]:
    return {str(c["name"]) for c in inspect(conn).get_columns(log.name)}


def _tapped_rows(
    batches: Iterable[list[Row]], tap: Callable[[Sequence[Row]], None]
) -> Iterator[list[Row]]:
    for batch in batches:
        tap(batch)
        yield batch


def _tapped(entries: Iterable[LogEntry], observe: Callable[[LogEntry], None]) -> Iterator[LogEntry]:
    for entry in entries:
        observe(entry)
        yield entry
