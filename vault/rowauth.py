"""Authenticated rows: the one place data-store rows get and pass their authenticators
(docs/rows.md specifies the encoding; issue 16). Each authenticated row carries ``seq``
(the log entry that last changed it) and ``auth = HMAC-SHA-256(row-auth key, message)``
(:func:`message`), the key derived from the keystore's MAC seed; a stale row put back
whole is found by its ``seq`` (:func:`stale`). Every writer calls :func:`insert_rows` /
:func:`update_rows` (or :func:`record_auth` on the record hot paths); every reader that
acts on a row calls :func:`check_rows` first. A second copy of the encoding is a bug.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Row,
    Select,
    String,
    Table,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)

from ..keys.envelope import aad
from ..keys.rowauth import RowAuth
from .errors import TamperError
from .routine_tables import ROUTINE_SPECS, ROUTINE_TABLES, ROUTINE_TARGETS
from .store import customers, kinds, log, principals, records, roles

__all__ = [
    "LABEL",
    "SPECS",
    "Bad",
    "authentic",
    "check_records",
    "check_rows",
    "insert_rows",
    "message",
    "record_auth",
    "record_message",
    "record_tagger",
    "records_select",
    "refusal_error",
    "require",
    "sign",
    "stale",
    "target_of",
    "update_rows",
]

LABEL = b"shredvault/row/v1"


#: per table, its columns in encoding order with their types: ``t`` text, ``i``
#: integer, ``b`` boolean, ``h`` the SHA-256 of the ciphertext of a record sealed
#: before schema 3 (``aad_v`` 1; from ``aad_v`` 2 the AEAD binds the record version
#: and the column encodes as null). The first column is the row's identity.
# fmt: off
SPECS: dict[str, tuple[tuple[str, str], ...]] = {
    "sv_kinds": (("name", "t"), ("spec", "t")),
    # one row: the audit report's running totals (k "audit_tally"; docs/rows.md)
    "sv_meta": (("k", "t"), ("v", "t")),
    "sv_roles": (("name", "t"), ("spec", "t"), ("created", "t")),
    "sv_principals": (("name", "t"), ("lookup", "t"), ("role", "t"), ("token_hash", "t"),
                      ("expires", "t"), ("revoked", "b"), ("created", "t")),
    "sv_customers": (("id", "t"), ("ref", "t"), ("state", "t"), ("dek_version", "i"),
                     ("retain_until", "t"), ("legal_hold", "b"), ("consent", "t"),
                     ("created", "t"), ("shredded", "t"), ("shred_intent_seq", "i")),
    # (its created/updated times are display metadata, not authenticated: the log
    # holds the authentic times; docs/rows.md)
    "sv_records": (("id", "t"), ("customer_id", "t"), ("kind", "t"), ("version", "i"),
                   ("dek_version", "i"), ("aad_v", "i"), ("ciphertext", "h")),
    **ROUTINE_SPECS,
}
# fmt: on
TABLES: dict[str, Table] = {
    t.name: t for t in (kinds, roles, principals, customers, records, *ROUTINE_TABLES)
}
#: the ``target`` prefix of each table's rows in the log (vault/log.py ``entry_target``)
_TARGET = {
    "sv_kinds": "kind:",
    "sv_roles": "role:",
    "sv_principals": "principal:",
    "sv_customers": "subject:",
    "sv_records": "record:",
    **ROUTINE_TARGETS,
}
_NULL = b"n"
_CHUNK = 500


def _part(kind: str, value: Any, row: Mapping[Any, Any]) -> bytes:
    if kind == "h":
        if int(row["aad_v"]) != 1:
            return _NULL
        return b"h" + hashlib.sha256(bytes(value)).digest()
    if value is None:
        return _NULL
    if kind == "d":  # a sealed request note (docs/requests.md)
        return b"d" + hashlib.sha256(bytes(value)).digest()
    if kind == "t":
        return b"t" + str(value).encode("utf-8", "surrogatepass")
    if kind == "i":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("not an integer")
        return b"i" + str(int(value)).encode("ascii")
    return b"b1" if value else b"b0"


def message(table: str, row: Mapping[Any, Any], seq: int) -> bytes:
    """The bytes a row's authenticator is over: each part length-prefixed (u32 BE) —
    the label, the table name, each column of :data:`SPECS` in order, and ``seq``.
    ValueError for a value that cannot be one of its column (a tampered row)."""
    if table == "sv_records":
        aad_v = int(row["aad_v"])
        digest = hashlib.sha256(bytes(row["ciphertext"])).digest() if aad_v == 1 else None
        return record_message(
            str(row["id"]),
            str(row["customer_id"]),
            str(row["kind"]),
            _int(row["version"]),
            _int(row["dek_version"]),
            aad_v,
            digest,
            int(seq),
        )
    parts = [LABEL, table.encode("ascii")]
    parts += [_part(kind, row[name], row) for name, kind in SPECS[table]]
    parts.append(b"i" + str(int(seq)).encode("ascii"))
    return aad(*parts)


_RECORD_HEAD = aad(LABEL, b"sv_records")
_LEN = struct.Struct(">I").pack
_NULL_PART = _LEN(1) + _NULL
_AAD_V2 = _LEN(2) + b"i2"


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("not an integer")
    return int(value)


def record_message(
    rid: str,
    cid: str,
    kind: str,
    version: int,
    dek_version: int,
    aad_v: int,
    ciphertext_sha256: bytes | None,
    seq: int,
) -> bytes:
    """:func:`message` of a record row (the hot paths: put_many, get_many), the same
    bytes built without a mapping. ``ciphertext_sha256``: for ``aad_v`` 1 only."""
    r, c, k = rid.encode("utf-8", "surrogatepass"), cid.encode(), kind.encode()
    v, d, a, s = b"i%d" % version, b"i%d" % dek_version, b"i%d" % aad_v, b"i%d" % seq
    h = _NULL_PART if ciphertext_sha256 is None else _LEN(33) + b"h" + ciphertext_sha256
    return b"".join(
        (
            _RECORD_HEAD,
            _LEN(len(r) + 1),
            b"t",
            r,
            _LEN(len(c) + 1),
            b"t",
            c,
            _LEN(len(k) + 1),
            b"t",
            k,
            _LEN(len(v)),
            v,
            _LEN(len(d)),
            d,
            _LEN(len(a)),
            a,
            h,
            _LEN(len(s)),
            s,
        )
    )


def sign(auth: RowAuth, table: str, row: Mapping[Any, Any], seq: int) -> str:
    """The ``auth`` value (hex) of ``row`` stamped with ``seq``."""
    return auth.tag_hex(message(table, row, seq))


def record_auth(
    auth: RowAuth, rid: str, cid: str, kind: str, version: int, dek_version: int, seq: int
) -> str:
    """:func:`sign` of a record row sealed with the record version in its AAD
    (``aad_v`` 2): the hot paths (put_many, imports)."""
    return auth.tag_hex(record_message(rid, cid, kind, version, dek_version, 2, None, seq))


def record_tagger(auth: RowAuth) -> Callable[[str, str, str, int, int, int], str]:
    """:func:`record_auth` for a batch (put_many, imports): the HMAC keyed once for the
    batch. Call it as ``tag(rid, cid, kind, version, dek_version, seq)``."""
    tag = auth.hex_tagger()

    def record_tag(rid: str, cid: str, kind: str, version: int, dek_version: int, seq: int) -> str:
        return tag(record_message(rid, cid, kind, version, dek_version, 2, None, seq))

    return record_tag


def target_of(table: str, row: Mapping[Any, Any], tag: str | None = None) -> str | None:
    """The log ``target`` naming ``row``'s object (a customer's is its subject tag,
    given as ``tag``: None when its keys are gone)."""
    if table == "sv_customers":
        return None if tag is None else _TARGET[table] + tag
    key = SPECS[table][0][0]
    return _TARGET[table] + str(row[key])


@dataclass(frozen=True, slots=True)
class Bad:
    """A row that fails: its table, identity and why (``unauthenticated``,
    ``bad auth``, ``stale`` or ``malformed``)."""

    table: str
    row: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"table": self.table, "row": self.row, "reason": self.reason}


def _authentic(auth: RowAuth, table: str, row: Mapping[Any, Any]) -> str | None:
    seq, stored = row["seq"], row["auth"]
    if seq is None or stored is None:
        return "unauthenticated"
    try:
        text = message(table, row, int(seq))
    except (ValueError, TypeError, KeyError):
        return "malformed"
    return None if auth.check_hex(text, stored) else "bad auth"


def authentic(auth: RowAuth, table: str, row: Mapping[Any, Any]) -> bool:
    """Whether ``row`` (with its ``seq`` and ``auth``) carries a valid authenticator;
    no freshness check (for rows the log names no change of, like the audit tally)."""
    return _authentic(auth, table, row) is None


def check_rows(
    conn: Connection,
    auth: RowAuth,
    table: str,
    rows: Iterable[Mapping[Any, Any]],
    *,
    tags: Mapping[str, str] | None = None,
) -> list[Bad]:
    """The rows of ``table`` that fail their authenticator, or that a later log entry
    changed (one query for the batch). ``tags``: customers' subject tags by id (a
    customer without one, its keys gone, is checked for its authenticator only)."""
    key = SPECS[table][0][0]
    bad: list[Bad] = []
    fresh: dict[str, tuple[str, int]] = {}
    for row in rows:
        why = _authentic(auth, table, row)
        ident = str(row[key])
        if why is not None:
            bad.append(Bad(table, ident, why))
            continue
        tag = None if tags is None else tags.get(ident)
        target = target_of(table, row, tag)
        if target is not None:
            fresh[target] = (ident, int(row["seq"]))
    for target in stale(conn, {t: s for t, (_i, s) in fresh.items()}):
        bad.append(Bad(table, fresh[target][0], "stale"))
    return bad


def require(
    conn: Connection,
    auth: RowAuth,
    table: str,
    rows: Iterable[Mapping[Any, Any]],
    *,
    tags: Mapping[str, str] | None = None,
) -> None:
    """:func:`check_rows`, raising :class:`TamperError` for the first failing row."""
    bad = check_rows(conn, auth, table, rows, tags=tags)
    if bad:
        raise refusal_error(bad)


def stale(conn: Connection, seqs: Mapping[str, int]) -> list[str]:
    """The targets of ``seqs`` (target -> the seq its row carries) that a log entry
    after that seq changed: rows put back from an older copy. One grouped query on the
    log's (target, seq) index: on PostgreSQL with the targets as one array parameter
    (``= ANY``: the driver does not parse hundreds of placeholders), on SQLite per 500."""
    targets = list(seqs)
    if not targets:
        return []
    newest = select(log.c.target, func.max(log.c.seq)).group_by(log.c.target)
    if conn.dialect.name == "postgresql":
        array = bindparam("t", type_=ARRAY(String()))
        batches = [conn.execute(newest.where(log.c.target == any_(array)), {"t": targets})]
    else:
        where = newest.where(log.c.target.in_(bindparam("t", expanding=True)))
        batches = [
            conn.execute(where, {"t": targets[i : i + _CHUNK]})
            for i in range(0, len(targets), _CHUNK)
        ]
    return [
        str(target)
        for rows in batches
        for target, seq in rows
        if seq is not None and int(seq) > seqs[str(target)]
    ]


#: the freshness column :func:`records_select` adds: the newest seq of the log entries
#: naming the record (its target), or null
NEWEST = "newest_seq"


def records_select() -> Select[Any]:
    """``SELECT sv_records.*, (newest seq of the record's target) AS newest_seq``:
    the record rows with their freshness in the same query, a correlated ``max(seq)``
    per row on the log's partial index (target, seq) (``target = 'record:' || id``
    implies the index's ``target IS NOT NULL`` on SQLite and PostgreSQL alike), so
    :func:`check_records` needs no second query and binds no target strings."""
    target = literal_column("'record:'", String) + records.c.id
    newest = select(func.max(log.c.seq)).where(log.c.target == target).scalar_subquery()
    return select(records, newest.label(NEWEST))


_RECORD_COLUMNS = [c.name for c in records.c]
_RECORD_PARTS = itemgetter(
    *(
        _RECORD_COLUMNS.index(n)
        for n in ("id", "customer_id", "kind", "version", "dek_version", "aad_v", "seq", "auth")
    ),
    len(_RECORD_COLUMNS),
)
_LENS = tuple(_LEN(n) for n in range(256))


def check_records(auth: RowAuth, rows: Iterable[Row[Any]]) -> list[Bad]:
    """:func:`check_rows` of record rows read with :func:`records_select` (the hot
    path of every record call): the same checks and the same messages, built without
    a mapping per row, the customer and kind parts once per pair, the HMAC keyed once
    per batch; a row is stale when its ``newest_seq`` is after its ``seq``. A row
    whose values are not of the types the vault writes takes the general path."""
    check = auth.hex_checker()
    middles: dict[tuple[str, str], bytes] = {}
    bad: list[Bad] = []
    for row in rows:
        rid, cid, kind, version, dek, aad_v, seq, stored, newest = _RECORD_PARTS(row)
        try:
            if aad_v != 2 or type(version) is not int or type(dek) is not int:
                raise TypeError("not the common shape")
            if type(seq) is not int or type(rid) is not str:
                raise TypeError("not the common shape")
            mid = middles.get((cid, kind))
            if mid is None:
                c, k = cid.encode(), kind.encode()
                mid = _LEN(len(c) + 1) + b"t" + c + _LEN(len(k) + 1) + b"t" + k
                middles[(cid, kind)] = mid
            r = rid.encode("utf-8", "surrogatepass")
            v, d, q = b"i%d" % version, b"i%d" % dek, b"i%d" % seq
            text = b"".join(
                (
                    _RECORD_HEAD,
                    _LENS[len(r) + 1] if len(r) < 255 else _LEN(len(r) + 1),
                    b"t",
                    r,
                    mid,
                    _LENS[len(v)],
                    v,
                    _LENS[len(d)],
                    d,
                    _AAD_V2,
                    _NULL_PART,
                    _LENS[len(q)],
                    q,
                )
            )
            why = None if check(text, stored) else "bad auth"
        except (TypeError, AttributeError, ValueError, IndexError):
            why = _authentic(auth, "sv_records", row._mapping)
        if why is None and newest is not None and int(newest) > int(seq):
            why = "stale"
        if why is not None:
            bad.append(Bad("sv_records", str(rid), why))
    return bad


def refusal_error(bad: Sequence[Bad]) -> TamperError:
    """The error for the first failing row (the message names table, row and why)."""
    first = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    what = {
        "stale": "is older than the log says (rolled back)",
        "unauthenticated": "carries no authenticator",
        "malformed": "holds a value the vault never writes",
        "bad auth": "fails its authenticator",
    }.get(first.reason, "fails its check")
    return TamperError(
        f"row {first.row} of {first.table} {what}: it was changed outside the vault and "
        f"is refused{more} (an admin can set it again; docs/rows.md)",
        table=first.table,
        row=first.row,
        reason=first.reason,
    )


def insert_rows(
    conn: Connection,
    auth: RowAuth,
    table: str,
    rows: Sequence[Mapping[Any, Any]],
    seq: int,
    *,
    one_entry_each: bool = False,
) -> None:
    """Insert rows of ``table`` (every content column given), each stamped with ``seq``
    (the log entry recording the change, in this transaction) and authenticated; with
    ``one_entry_each`` row i gets ``seq + i`` (one entry per row, in the rows' order)."""
    seqs = [seq + i if one_entry_each else seq for i in range(len(rows))]
    out = [
        {**r, "seq": n, "auth": sign(auth, table, r, n)} for r, n in zip(rows, seqs, strict=True)
    ]
    if out:
        conn.execute(insert(TABLES[table]), out)


def update_rows(
    conn: Connection,
    auth: RowAuth,
    table: str,
    changes: Mapping[str, Mapping[str, Any]],
    seqs: Mapping[str, int] | int,
    *,
    verify: bool = True,
) -> int:
    """Change rows of ``table`` (identity -> the columns to set), each re-stamped with
    its seq (one for all, or per identity) and re-authenticated. ``verify``: a row that
    fails its authenticator now raises :class:`TamperError` (so a change never launders
    a forged row); writes that overwrite what matters anyway (a tombstone) pass False.
    A change may be a function of the current row (e.g. a date cut from it).
    Returns how many rows were changed (rows that do not exist are skipped)."""
    if not changes:
        return 0
    t = TABLES[table]
    key = SPECS[table][0][0]
    current: list[Mapping[Any, Any]] = []
    ids = list(changes)
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        current += [
            r._mapping
            for r in conn.execute(
                select(t).where(t.c[key].in_(bindparam("ids", expanding=True))), {"ids": part}
            )
        ]
    if verify:
        bad = [b for b in (_bad_now(auth, table, row, key) for row in current) if b is not None]
        if bad:
            raise refusal_error(bad)
    params = []
    # The same columns for every row of the executemany: the covered ones (the
    # ciphertext only when it changes) and any other column a change sets.
    written = [name for name, _k in SPECS[table] if name != "ciphertext"]
    written += sorted({n for c in changes.values() for n in c} - set(written))
    for row in current:
        ident = str(row[key])
        seq = seqs if isinstance(seqs, int) else seqs[ident]
        merged = {**row}
        for name, value in changes[ident].items():
            merged[name] = value(row) if callable(value) else value
        values = {name: merged[name] for name in written}
        values.update(seq=seq, auth=sign(auth, table, merged, seq))
        params.append({"_id": ident, **{f"v_{k}": v for k, v in values.items()}})
    if params:
        names = [k[2:] for k in params[0] if k.startswith("v_")]
        conn.execute(
            update(t)
            .where(t.c[key] == bindparam("_id"))
            .values({n: bindparam(f"v_{n}") for n in names if n != key}),
            params,
        )
    return len(params)


def _bad_now(auth: RowAuth, table: str, row: Mapping[Any, Any], key: str) -> Bad | None:
    why = _authentic(auth, table, row)
    return None if why is None else Bad(table, str(row[key]), why)
