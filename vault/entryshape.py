"""Recognizing canonical log entries of the common shape without parsing them.

Verification holds every entry to canonical JSON (strict mode) and the store's lookup
columns to the body (docs/log-format.md §6). Parsing and re-encoding a body costs
several times hashing it, yet almost every body has the same shape: printable ASCII
with nothing escaped, and a head (``action``, ``actor``, ``detail``, ``outcome``)
seen many times before. For such a body an exact byte test decides:

* the head, everything before ``,"prev":"``, is one this walk already parsed and
  found canonical (a small cache: a head holds no seq, prev, time or record id);
* what follows is the top-level ``prev`` and then exactly
  ``","purpose":P,"record":R,"role":S,"seq":N,"subject":T,"ts":U,"v":1}`` with plain
  strings or ``null`` (:data:`_REST`).

Together these make the body the canonical JSON of an object with the twelve members
and no others, so the full check would pass it too; and its lookup columns are
compared to the very values it holds. A body that does not fit is not refused here:
the caller checks it the full way (``verify``), so the verdict never depends on this
module, only the speed does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .canonical import canonical
from .inputs import MAX_JSON_BYTES, parse_json
from .log import entry_target

__all__ = ["EntryShapes"]

_PREV = ',"prev":"'
# Printable ASCII but `"` and `\`: bytes that a canonical JSON string holds as they are.
_PLAIN = bytes(range(0x20, 0x7F)).replace(b"\\", b"")
_STR = '"([^"]*)"'
_REST = re.compile(
    '","purpose":(?:null|"[^"]*"),"record":(?:null|' + _STR + '),"role":"[^"]*"'
    + ',"seq":(0|[1-9][0-9]{0,15}),"subject":(?:null|' + _STR + '),"ts":' + _STR
    + ',"v":1}'
)  # fmt: skip
_HEAD_KEYS = ("action", "actor", "detail", "outcome")
#: heads remembered per walk; past this the cache starts afresh (bounded memory)
_MAX_HEADS = 4096
_RECORD, _SUBJECT = "record:\x00", "subject:\x00"


class EntryShapes:
    """The exact fast test of one verification walk, with its cache of known heads."""

    def __init__(self) -> None:
        # head text -> (action, actor, outcome, target rule)
        self._heads: dict[str, tuple[str, str, str, str | None]] = {}

    @staticmethod
    def plain(bodies: Sequence[bytes], joined: bytes) -> bool:
        """Whether every body (``joined`` is their concatenation) is printable ASCII
        without a backslash and within the JSON size limit: then every ``"`` in it
        delimits a string, which the tests below rely on."""
        return not joined.translate(None, _PLAIN) and (
            len(joined) <= MAX_JSON_BYTES or max(map(len, bodies)) <= MAX_JSON_BYTES
        )

    def fits(self, body: bytes, seq: int, prev: str, columns: Sequence[Any] | None) -> bool:
        """True only if ``body`` (a plain one) is the canonical entry at ``seq`` after
        ``prev`` and, when given, says exactly its lookup ``columns``."""
        # Plain means ASCII, and no string in it holds a quote or an escape: so a
        # group of _REST is the very value the member holds (None for null).
        text = body.decode("ascii")
        at = text.rfind(_PREV)
        if at < 0:
            return False
        head = self._heads.get(text[:at])
        if head is None or text[at + 9 : at + 73] != prev:
            return False
        rest = _REST.fullmatch(text, at + 73)
        if rest is None or int(rest[2]) != seq:
            return False
        if columns is None:
            return True
        ts, actor, action, subject, record, outcome, target = columns
        if (
            head[0] != action
            or head[1] != actor
            or head[2] != outcome
            or rest[1] != record
            or rest[3] != subject
            or rest[4] != ts
        ):
            return False
        rule = head[3]
        if rule is _RECORD:
            return bool(target == (None if record is None else "record:" + record))
        if rule is _SUBJECT:
            return bool(target == (None if subject is None else "subject:" + subject))
        return bool(target == rule)

    def learn(self, body: bytes) -> None:
        """Remember the head of ``body`` (a plain entry that passed the full check) if
        it is canonical on its own: the four members, text action, actor and outcome."""
        head = body[: body.rfind(_PREV.encode())]
        try:
            raw = parse_json(head + b"}", what="entry head", fail=ValueError)
        except ValueError:
            return
        if not isinstance(raw, dict) or tuple(raw) != _HEAD_KEYS or canonical(raw) != head + b"}":
            return
        action, actor, outcome = raw["action"], raw["actor"], raw["outcome"]
        if not (type(action) is str and type(actor) is str and type(outcome) is str):
            return
        # Which target column this head implies, found by asking the one rule with
        # markers for the subject and record (they are per entry).
        said = entry_target(action, outcome, "\x00", "\x00", raw["detail"])
        rule = {_RECORD: _RECORD, _SUBJECT: _SUBJECT}.get(str(said), said)
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        self._heads[head.decode("ascii")] = (action, actor, outcome, rule)
