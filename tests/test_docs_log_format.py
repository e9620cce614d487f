"""docs/log-format.md's worked examples are recomputed from the code: the doc stays true."""

from __future__ import annotations

import re
from pathlib import Path

from shredvault.vault.log import GENESIS, Event, encode_body, entry_hash, export_line

DOC = Path(__file__).resolve().parent.parent / "docs" / "log-format.md"


def _examples() -> list[tuple[bytes, str]]:
    first = Event("admin", "admin", "vault.create", detail={"vault": "vlt_exampleexampleexampleex"})
    body1 = encode_body(first, 1, "2026-11-23T09:00:00.000000Z", GENESIS, first.detail, {})
    second = Event(
        "olga",
        "operator",
        "record.get",
        subject="3f1c0a9e5b7d4c2e8a6f1b3d5c7e9a0b",
        record="rec_aaaaaaaaaaaaaaaaaaaaaaaaaa",
        purpose="service",
        detail={"fields": ["name", "phone"], "kind": "profile"},
    )
    body2 = encode_body(
        second, 2, "2026-11-23T09:00:01.250000Z", entry_hash(body1), second.detail, {}
    )
    return [(body1, entry_hash(body1)), (body2, entry_hash(body2))]


def _doc_examples() -> str:
    text = DOC.read_text("utf-8")
    match = re.search(r"<!-- examples:begin -->(.*)<!-- examples:end -->", text, re.S)
    assert match is not None, "docs/log-format.md lost its examples markers"
    return match.group(1)


def test_doc_examples_show_the_exact_bytes_hashes_and_export_lines_the_code_makes() -> None:
    section = _doc_examples()
    for body, digest in _examples():
        assert body.decode() in section
        assert f"hash: `{digest}`" in section
        assert export_line(body, digest).decode() in section


def test_doc_example_chain_links_the_second_entry_to_the_first() -> None:
    (body1, hash1), (body2, _hash2) = _examples()
    assert f'"prev":"{hash1}"'.encode() in body2
    assert f'"prev":"{GENESIS}"'.encode() in body1
