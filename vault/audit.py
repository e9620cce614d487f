"""Auditing without the passphrase: verify the live log, export it, verify an export.

An auditor needs only ``data.db`` (or the data URL), and optionally ``keys.db`` for the
public key and rollback anchor, which are readable without unlocking. Offline, an
export plus a trusted public key (and optionally an anchor checkpoint seen earlier)
is enough. Export format (JSON Lines, docs/log-format.md)::

    {"format":"shredvault-log-export","v":1,"vault":...,"public_key":...,"since":N,...}
    {"checkpoint":{...},"signature":"..."}      one per checkpoint, all before entries
    {"action":...,"hash":...,...}              one per entry, in seq order

Checkpoints come first so that cutting entries off the end of an export is caught
by any checkpoint that covers them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, select

from ..keys import KeyStore
from .canonical import canonical
from .chain import read_head, verify_store
from .checkpoint import (
    Checkpoint,
    checkpoint_from_json,
    latest_checkpoint,
    load_checkpoints,
    parse_checkpoint,
)
from .dataurl import DATA_URL_KEY, data_url_for
from .errors import StorageError, VerificationError, keys_errors
from .inputs import MAX_DOCUMENT_BYTES, load_json_document, malformed, parse_json, read_lines
from .layout import DATA_FILE, KEYS_FILE
from .log import LogEntry, iter_entries
from .store import DataStore, LogHead, meta
from .trust import NO_TRUSTED_KEY, SELF_ASSERTED, no_trusted_key_message, trust_of
from .verify import Row, VerifyReport, verify_chain

__all__ = [
    "EXPORT_FORMAT",
    "Auditor",
    "ExportHeader",
    "format_public_key",
    "parse_public_key",
    "read_anchor",
    "read_export_entries",
    "verify_export",
]

#: what offline verification of a data store cannot check, said in every report
ROWS_NOT_CHECKED = (
    "row authenticators (principals, roles, kinds, customers, records) need the vault's "
    "key and were not checked: run `shredvault audit check-store` with the vault unlocked"
)

EXPORT_FORMAT = "shredvault-log-export"
_PUBKEY_PREFIX = "ed25519:"
_HASH_MEMBER = b',"hash":"'


def format_public_key(public_key: bytes) -> str:
    """The text form ``ed25519:<64 hex>`` that ``--pubkey`` files hold."""
    return _PUBKEY_PREFIX + public_key.hex()


def parse_public_key(text: str) -> bytes:
    """Parse ``ed25519:<hex>`` (or bare hex); raises VerificationError if malformed."""
    value = text.strip()
    value = value.removeprefix(_PUBKEY_PREFIX)
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise VerificationError("public key is not hex", reason="malformed") from None
    if len(key) != 32:
        raise VerificationError("an Ed25519 public key is 32 bytes", reason="malformed")
    return key


def read_anchor(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint an auditor kept (the JSON ``audit checkpoint`` prints)."""
    return checkpoint_from_json(load_json_document(path, "anchor"))


@dataclass(frozen=True, slots=True)
class ExportHeader:
    vault: str
    public_key: bytes
    since: int
    head_seq: int
    head: str


class Auditor:
    """Read-only access to a vault's log and public key, no passphrase needed."""

    def __init__(
        self, data: DataStore, vault_id: str, public_key: bytes, anchor: Checkpoint | None
    ):
        self._data = data
        self.vault_id = vault_id
        self.public_key = public_key
        self.anchor = anchor

    def __repr__(self) -> str:
        return f"<Auditor vault={self.vault_id}>"

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, data_url: str | None = None) -> Auditor:
        """Open a vault directory for auditing. The public key and the anchor come from
        ``keys.db`` when present (they are stored unencrypted), else from the data store."""
        root = Path(path)
        public_key: bytes | None = None
        anchor = None
        keystore_vault = None
        if (root / KEYS_FILE).is_file():
            with keys_errors():
                store = KeyStore.open(root / KEYS_FILE)
                with contextlib.closing(store):
                    public_key = store.public_key()
                    keystore_vault = store.header().vault_id
                    row = store.anchor()
                    anchor = None if row is None else parse_checkpoint(row[1], row[2])
                    data_url = data_url_for(
                        store.get_meta("data_location"), store.get_meta(DATA_URL_KEY), data_url
                    )
        if data_url:
            data = DataStore.connect(url=data_url)
        elif (root / DATA_FILE).is_file():
            data = DataStore.connect(sqlite_path=root / DATA_FILE)
        else:
            raise StorageError(f"no data store at {root / DATA_FILE}")
        if not data.has_schema():
            data.dispose()
            raise StorageError("the data store holds no shredvault tables")

        def read_meta(conn: Connection) -> dict[str, str]:
            return {str(k): str(v) for k, v in conn.execute(select(meta.c.k, meta.c.v))}

        values = data.read(read_meta)
        vault_id = values.get("vault_id", "")
        if keystore_vault is not None and keystore_vault != vault_id:
            data.dispose()
            raise StorageError("the data store and the keystore belong to different vaults")
        if public_key is None:
            public_key = bytes.fromhex(values["public_key"])
        return cls(data, vault_id, public_key, anchor)

    @property
    def backend(self) -> str:
        """The data store's database: ``"sqlite"`` or ``"postgresql"`` (as
        :attr:`Vault.backend`, without unlocking)."""
        return str(self._data.engine.dialect.name)

    def close(self) -> None:
        self._data.dispose()

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(
        self,
        *,
        public_key: bytes | None = None,
        anchor: Checkpoint | None = None,
        strict: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Verify the stored chain against its checkpoints and an anchor: the one given,
        else the keystore's (a shortfall then reads as ``rolled back``). The log's
        lookup columns are checked against the signed bodies; the data store's rows
        are not (their authenticators need the vault's key): the report notes it."""
        use_anchor = anchor if anchor is not None else self.anchor
        shortfall = "truncated" if anchor is not None else "rolled back"
        report = verify_store(
            self._data,
            vault_id=self.vault_id,
            public_key=public_key or self.public_key,
            anchor=use_anchor,
            anchor_shortfall=shortfall,
            strict=strict,
            progress=progress,
        )
        report.notes.append(ROWS_NOT_CHECKED)
        return report

    def entries(self, *, since: int = 1) -> Iterator[dict[str, Any]]:
        """Stored entries from ``since`` as parsed objects with ``hash`` (streaming)."""
        for entry in iter_entries(self._data, since=since):
            parsed: dict[str, Any] = json.loads(entry.body)
            parsed["hash"] = entry.hash
            yield parsed

    @property
    def head(self) -> LogHead:
        """The newest log entry's seq, hash and time (no passphrase needed)."""
        return self._data.read(read_head)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint, if any."""
        return self._data.read(latest_checkpoint)

    def export(
        self, out: IO[bytes], *, since: int = 1, progress: Callable[[int], None] | None = None
    ) -> int:
        """Write the log from ``since`` as JSON Lines (streaming, flat memory); returns
        the number of entries written."""
        head = self._data.read(read_head)

        header = {
            "format": EXPORT_FORMAT,
            "v": 1,
            "vault": self.vault_id,
            "public_key": format_public_key(self.public_key),
            "since": since,
            "head_seq": head.seq,
            "head": head.hash,
        }
        out.write(canonical(header) + b"\n")
        stored = self._data.read(lambda conn: load_checkpoints(conn, since=since, until=head.seq))
        for cp in stored:
            out.write(canonical(cp.to_json()) + b"\n")
        count = 0
        for entry in iter_entries(self._data, since=since, until=head.seq):
            out.write(entry.export_line() + b"\n")
            count += 1
            if progress is not None and count % 10_000 == 0:
                progress(10_000)
        if progress is not None:
            progress(count % 10_000)
        return count


def _split_row(line: bytes, number: int) -> Row:
    """An export line -> (None, hash, exact hashed body) without a full JSON parse: the
    verifier takes the seq the body claims when it needs it."""
    at = line.rfind(_HASH_MEMBER)
    if at < 0 or len(line) < at + 75 or line[at + 73 : at + 74] != b'"':
        raise VerificationError(f"line {number} has no hash member", reason="malformed")
    return None, line[at + 9 : at + 73].decode("ascii", "replace"), line[:at] + line[at + 74 :]


def _split_line(line: bytes, number: int) -> LogEntry:
    """An export line -> (seq, hash, exact hashed body) without a full JSON parse."""
    _, digest, body = _split_row(line, number)
    j = body.rfind(b',"seq":')
    try:
        seq = int(body[j + 7 : body.index(b",", j + 7)]) if j >= 0 else -1
    except ValueError:
        seq = -1
    return LogEntry(seq, digest, body)


def _row_batches(numbered: Iterator[tuple[int, bytes]], size: int = 5_000) -> Iterator[list[Row]]:
    """Entry lines as batches of rows for :func:`verify_chain`. A line without a hash
    member is refused only once the rows before it are verified (as one by one)."""
    batch: list[Row] = []
    for number, line in numbered:
        try:
            batch.append(_split_row(line, number))
        except VerificationError:
            if batch:
                yield batch
            raise
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_export(
    lines: Iterator[bytes],
) -> tuple[ExportHeader, list[Checkpoint], Iterator[tuple[int, bytes]]]:
    first = next(lines, b"")
    try:
        raw = parse_json(first, what="the export header", max_bytes=MAX_DOCUMENT_BYTES)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != EXPORT_FORMAT or raw.get("v") != 1:
            raise ValueError("not a shredvault log export")
        header = ExportHeader(
            vault=str(raw["vault"]),
            public_key=parse_public_key(str(raw["public_key"])),
            since=int(raw["since"]),
            head_seq=int(raw["head_seq"]),
            head=str(raw["head"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise VerificationError(f"bad export header: {error}", reason="malformed") from None
    cps: list[Checkpoint] = []
    pending: bytes | None = None
    number = 1
    for line in lines:
        number += 1
        line = line.rstrip(b"\n")
        if not line:
            continue
        if line.startswith(b'{"checkpoint":'):
            try:
                doc = parse_json(line, what=f"line {number}", max_bytes=MAX_DOCUMENT_BYTES)
                cps.append(checkpoint_from_json(doc))
            except ValueError:
                raise VerificationError(f"line {number} is malformed", reason="malformed") from None
            continue
        pending = line
        break

    def entry_lines() -> Iterator[tuple[int, bytes]]:
        n = number
        if pending is not None:
            yield n, pending
        for line in lines:
            n += 1
            line = line.rstrip(b"\n")
            if line:
                yield n, line

    return header, cps, entry_lines()


def read_export_entries(
    path: str | os.PathLike[str], *, since: int = 1
) -> Iterator[dict[str, Any]]:
    """Entries of an export from ``since`` as parsed objects with ``hash`` (streaming;
    verify the export first with :func:`verify_export`)."""
    with open(path, "rb") as handle:
        _header, _cps, numbered = _read_export(read_lines(handle, what="the export"))
        for entry in (_split_line(line, number) for number, line in numbered):
            if entry.seq >= since:
                parsed: dict[str, Any] = parse_json(
                    entry.body, what=f"entry {entry.seq}", fail=malformed
                )
                parsed["hash"] = entry.hash
                yield parsed


def verify_export(
    path: str | os.PathLike[str],
    *,
    public_key: bytes | None = None,
    anchor: Checkpoint | None = None,
    strict: bool = True,
    progress: Callable[[int], None] | None = None,
    trust_embedded_key: bool = False,
) -> VerifyReport:
    """Verify an exported log offline (docs/log-format.md §6).

    A trust root is needed (``vault.trust``): ``public_key`` (the vault's key, got by a
    second channel), or an ``anchor`` the caller saw earlier, which the export's own
    key must have signed. Without either the export is checked under the key it names
    and, if nothing else is wrong, the report fails with reason ``"no trusted key"``
    (never ok) unless ``trust_embedded_key`` is set; ``report.trust`` says which. With
    ``public_key``, an export naming another key fails (``wrong key``). The entries
    must end exactly at the header's ``head_seq`` and ``head``."""
    trust = trust_of(public_key, trust_embedded_key=trust_embedded_key, anchored=anchor is not None)
    with open(path, "rb") as handle:
        header, cps, numbered = _read_export(read_lines(handle, what="the export"))
        if public_key is not None and public_key != header.public_key:
            return VerifyReport().fail(
                "wrong key", None, "the export names another public key than the trusted one"
            )
        key = public_key if public_key is not None else header.public_key
        report = verify_chain(
            rows=_row_batches(numbered),
            vault_id=header.vault,
            public_key=key,
            checkpoints=cps,
            anchor=anchor,
            anchor_shortfall="truncated",
            from_genesis=header.since <= 1,
            strict=strict,
            progress=progress,
        )
    report.trust = trust
    if report.ok:
        _check_header_head(report, header)
    if trust == SELF_ASSERTED:
        report.notes.append("self-asserted: checked only under the key the export names itself")
    elif trust is None:
        report.fail(NO_TRUSTED_KEY, None, no_trusted_key_message("log export"))
    if report.entries and report.last_checkpoint is None:
        # Nothing in it is signed: a trusted key vouches for none of it.
        report.fail(
            "unsigned",
            report.first_seq,
            "no checkpoint in the export covers its entries, so no key "
            "vouches for them; export from a seq a signed checkpoint covers",
        )
    return report


def _check_header_head(report: VerifyReport, header: ExportHeader) -> None:
    """The chain must end at the head the header announces: fewer entries is a cut
    tail (its checkpoints may have been dropped with it), more is an appended line, and
    another hash at that seq is a tail replaced by other entries."""
    if report.last_seq < header.head_seq:
        report.fail(
            "truncated",
            report.last_seq + 1,
            f"the export says its head is seq {header.head_seq} but ends at {report.last_seq}",
        )
    elif report.entries and report.last_seq > header.head_seq:
        report.fail(
            "inserted",
            header.head_seq + 1,
            f"the export says its head is seq {header.head_seq} but goes on to {report.last_seq}",
        )
    elif report.entries and report.head != header.head:
        report.fail(
            "forked",
            report.last_seq,
            f"entry {report.last_seq} differs from the head the export's header names",
        )
