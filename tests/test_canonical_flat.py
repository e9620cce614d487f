"""canonical() writes flat objects of plain ASCII values without the JSON encoder's
per-character scan (vault/canonical.py); the bytes must equal the encoder's (and RFC
8785) for every such object, and for every near miss: quotes, backslashes, control
characters, DEL, non-ASCII and surrogates in keys or values, non-string keys."""

from __future__ import annotations

import json
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from shredvault.vault.canonical import canonical

TRICKY = st.sampled_from([*'ab "\\/\x00\x1f\x7f\n\té\u2028😀', "\ud800"])
text = st.lists(st.one_of(st.just("x"), TRICKY), max_size=8).map("".join)
scalar = st.one_of(
    text,
    st.integers(min_value=-(2**60), max_value=2**60),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 9), max_size=2),
)
flat = st.dictionaries(st.one_of(text, st.integers(0, 3)), scalar, max_size=5)


def reference(value: Any) -> bytes | type[Exception]:
    try:
        return json.dumps(
            value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except (TypeError, UnicodeEncodeError) as error:
        return type(error)


@settings(max_examples=400, deadline=None)
@given(value=flat)
def test_flat_objects_encode_as_the_json_encoder_does(value: dict[Any, Any]) -> None:
    try:
        got: bytes | type[Exception] = canonical(value)
    except (TypeError, UnicodeEncodeError) as error:
        got = type(error)
    assert got == reference(value)


def test_a_record_of_plain_ascii_fields_is_rfc8785() -> None:
    fields = {"phone": "+44 20 7946 0001", "name": "Customer 1", "n": 7, "ok": True, "z": None}
    assert canonical(fields) == rfc8785.dumps(fields)
    assert canonical({"a": 'say "hi"\\'}) == rfc8785.dumps({"a": 'say "hi"\\'})
