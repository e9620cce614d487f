"""Customers and records through the public API (DESIGN §5, §6): round trips on both
data stores, merge/versions on update, minimal collection (SchemaError/PurposeError)
with nothing stored on refusal, NotFoundError for unknown or malformed ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from shredvault.vault import (
    AccessDeniedError,
    Customer,
    NotFoundError,
    PurposeError,
    Record,
    SchemaError,
    Vault,
)
from shredvault.vault.canonical import canonical

MAX_INT = 2**53 - 1
FAKE_CUSTOMER = "cus_" + "a" * 26
FAKE_RECORD = "rec_" + "b" * 26


# -- helpers --------------------------------------------------------------------------


def data_url(v: Vault, backend: str | None) -> str:
    return backend or f"sqlite:///{v.path / 'data.db'}"


def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def record_rows(v: Vault, backend: str | None) -> int:
    return int(scalar(data_url(v, backend), "SELECT COUNT(*) FROM sv_records"))


def entries_after(v: Vault, backend: str | None, seq: int) -> list[dict[str, Any]]:
    engine = create_engine(data_url(v, backend))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT body FROM sv_log WHERE seq > :s ORDER BY seq"), {"s": seq}
            ).all()
    finally:
        engine.dispose()
    return [json.loads(bytes(r.body)) for r in rows]


def declare_profile(v: Vault) -> None:
    v.declare_kind("profile", fields=["name", "phone", "address"], purposes=["service", "billing"])


@pytest.fixture
def profile_vault(make_vault: Any) -> Vault:
    v: Vault = make_vault()
    declare_profile(v)
    v.declare_kind("note", fields=["text"], purposes=["service"])
    return v


# -- round trips on both backends ------------------------------------------------------


def test_put_then_get_returns_the_same_fields_and_metadata(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Ada", "phone": "+44 20 7946 0000"}, purpose="service")
    rec = s.get(c, rid, purpose="billing")
    assert rec.id == rid and rec.customer == c and rec.kind == "profile"
    assert rec.fields == {"name": "Ada", "phone": "+44 20 7946 0000"}
    assert rec.version == 1
    assert rec.created == rec.updated


def test_put_many_and_get_many_round_trip_in_request_order(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c1, c2 = s.add_customer(), s.add_customer()
    items = [
        (c1, "profile", {"name": "one"}),
        (c2, "profile", {"name": "two"}),
        (c1, "note", {"text": "three"}),
        (c2, "note", {"text": "four"}),
    ]
    rids = s.put_many(items, purpose="service")
    assert len(set(rids)) == 4
    pairs = [(c2, rids[3]), (c1, rids[0]), (c1, rids[2]), (c2, rids[1])]
    got = s.get_many(pairs, purpose="service")
    assert [(r.customer, r.id) for r in got] == pairs
    assert [r.fields for r in got] == [
        {"text": "four"},
        {"name": "one"},
        {"text": "three"},
        {"name": "two"},
    ]


def test_list_records_returns_a_customers_records_oldest_first(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c, other = s.add_customer(), s.add_customer()
    first = s.put(c, "profile", {"name": "first"}, purpose="service")
    s.put(other, "profile", {"name": "not mine"}, purpose="service")
    second = s.put(c, "note", {"text": "second"}, purpose="service")
    listed = s.list_records(c, purpose="service")
    assert [r.id for r in listed] == [first, second]
    assert [r.fields for r in listed] == [{"name": "first"}, {"text": "second"}]


def test_list_records_filters_by_kind_and_by_purpose(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    prof = s.put(c, "profile", {"name": "p"}, purpose="service")
    s.put(c, "note", {"text": "n"}, purpose="service")
    assert [r.id for r in s.list_records(c, purpose="service", kind="profile")] == [prof]
    # "note" may not be used for billing: listing for billing leaves it out.
    assert [r.id for r in s.list_records(c, purpose="billing")] == [prof]


def test_list_records_of_a_customer_without_records_is_empty(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    assert s.list_records(s.add_customer(), purpose="service") == []


def test_update_merges_fields_and_increments_the_version(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Ada", "phone": "1"}, purpose="service")
    updated = s.update(c, rid, {"phone": "2", "address": "Here"}, purpose="service")
    assert updated.fields == {"name": "Ada", "phone": "2", "address": "Here"}
    assert updated.version == 2
    again = s.get(c, rid, purpose="service")
    assert again.fields == updated.fields
    assert again.version == 2
    assert again.created == updated.created


def test_update_stores_none_as_null_and_keeps_the_field(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Ada", "phone": "1"}, purpose="service")
    s.update(c, rid, {"phone": None}, purpose="service")
    third = s.update(c, rid, {"name": "Grace"}, purpose="service")
    assert third.version == 3
    assert s.get(c, rid, purpose="service").fields == {"name": "Grace", "phone": None}


def test_update_with_an_undeclared_field_changes_nothing(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Ada"}, purpose="service")
    with pytest.raises(SchemaError):
        s.update(c, rid, {"email": "ada@example.org"}, purpose="service")
    rec = s.get(c, rid, purpose="service")
    assert rec.fields == {"name": "Ada"} and rec.version == 1


def test_delete_removes_the_record_for_good(profile_vault: Vault, backend: str | None) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    gone = s.put(c, "profile", {"name": "gone"}, purpose="service")
    kept = s.put(c, "profile", {"name": "kept"}, purpose="service")
    s.delete(c, gone, purpose="service")
    with pytest.raises(NotFoundError):
        s.get(c, gone, purpose="service")
    assert [r.id for r in s.list_records(c, purpose="service")] == [kept]
    assert record_rows(profile_vault, backend) == 1
    with pytest.raises(NotFoundError):
        s.delete(c, gone, purpose="service")


def test_records_survive_close_and_reopen(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    with Vault.create(tmp_path / "v", keyfile=keyfile, data_url=backend) as v:
        declare_profile(v)
        s = v.admin()
        c = s.add_customer(ref="crm-7")
        rid = s.put(c, "profile", {"name": "Persisted"}, purpose="service")
    with Vault.open(tmp_path / "v", keyfile=keyfile, data_url=backend) as v:
        s = v.admin()
        assert s.get(c, rid, purpose="service").fields == {"name": "Persisted"}
        assert s.customer(c).ref == "crm-7"
        assert set(v.kinds()) == {"profile"}


# -- customers ------------------------------------------------------------------------


def test_add_customer_then_show_returns_its_metadata(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    until = datetime(2031, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    c = s.add_customer(ref="crm-42", consent={"transfer": True}, retain_until=until)
    assert c.startswith("cus_") and len(c) == 30
    got = s.customer(c)
    assert isinstance(got, Customer)
    assert got.id == c and got.ref == "crm-42" and got.state == "active"
    assert dict(got.consent) == {"transfer": True}
    assert got.retain_until == "2031-01-02T03:04:05.000006Z"
    assert got.legal_hold is False and got.shredded is None


def test_list_customers_lists_every_customer_and_filters_by_state(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    made = [s.add_customer(), s.add_customer(ref="b"), s.add_customer()]
    listed = s.list_customers()
    assert sorted(x.id for x in listed) == sorted(made)
    assert sorted(x.id for x in s.list_customers(state="active")) == sorted(made)
    assert s.list_customers(state="shredded") == []


def test_add_customer_refuses_a_bad_ref_or_consent(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    with pytest.raises(SchemaError):
        s.add_customer(ref="")
    with pytest.raises(SchemaError):
        s.add_customer(ref="x" * 201)
    with pytest.raises(SchemaError):
        s.add_customer(consent={"transfer": "yes"})  # type: ignore[dict-item]
    with pytest.raises(SchemaError):
        s.add_customer(consent={"Not A Name": True})
    assert s.list_customers() == []


# -- property: any valid fields round trip (SQLite) -------------------------------------

FIELD_NAMES = ["a", "b", "c_d", "e-f", "g0"]
scalar_values = st.one_of(
    st.text(),
    st.integers(min_value=-MAX_INT, max_value=MAX_INT),
    st.booleans(),
    st.none(),
)
field_values = st.one_of(scalar_values, st.lists(scalar_values, max_size=6))
field_maps = st.dictionaries(st.sampled_from(FIELD_NAMES), field_values)


@pytest.fixture
def roundtrip_vault(tmp_path: Path, keyfile: Path) -> Iterator[tuple[Vault, str]]:
    v = Vault.create(tmp_path / "rt", keyfile=keyfile)
    v.declare_kind("thing", fields=FIELD_NAMES, purposes=["service"])
    c = v.admin().add_customer()
    yield v, c
    v.close()


@settings(
    max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=field_maps)
def test_any_valid_fields_round_trip_exactly(
    roundtrip_vault: tuple[Vault, str], fields: dict[str, Any]
) -> None:
    v, c = roundtrip_vault
    s = v.admin()
    rid = s.put(c, "thing", fields, purpose="service")
    got = s.get(c, rid, purpose="service").fields
    assert got == fields
    # == treats True as 1; the canonical bytes also tell bool from int.
    assert canonical(got) == canonical(fields)


# -- minimal collection: SchemaError, nothing stored -----------------------------------


def _assert_nothing_stored(v: Vault, backend: str | None, rows_before: int, seq: int) -> None:
    assert record_rows(v, backend) == rows_before
    assert not [
        e
        for e in entries_after(v, backend, seq)
        if e["action"] == "record.put" and e["outcome"] == "ok"
    ]


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        pytest.param("pet", {"name": "Rex"}, id="undeclared-kind"),
        pytest.param("profile", {"email": "a@b.c"}, id="undeclared-field"),
        pytest.param("profile", {"name": "ok", "ssn": "123"}, id="one-undeclared-field"),
        pytest.param("profile", {"name": 1.5}, id="float"),
        pytest.param("profile", {"name": float("nan")}, id="nan"),
        pytest.param("profile", {"name": {"first": "Ada"}}, id="dict"),
        pytest.param("profile", {"name": ["a", ["b"]]}, id="nested-list"),
        pytest.param("profile", {"name": [1.0]}, id="float-in-list"),
        pytest.param("profile", {"name": b"bytes"}, id="bytes"),
        pytest.param("profile", {"name": 2**53}, id="int-above-2**53-1"),
        pytest.param("profile", {"name": -(2**53)}, id="int-below--(2**53-1)"),
        pytest.param("profile", {"name": "x" * 70_000}, id="field-over-64KiB"),
        pytest.param("profile", {"name": "€" * 22_000}, id="field-over-64KiB-utf8"),
        pytest.param("profile", {"name": ["y" * 1000] * 70}, id="list-field-over-64KiB"),
        pytest.param("profile", {"name": "\ud800"}, id="lone-surrogate"),
        pytest.param("profile", ["name", "Ada"], id="not-a-mapping"),
    ],
)
def test_put_refuses_invalid_records_with_schema_error_and_stores_nothing(
    profile_vault: Vault, backend: str | None, kind: str, fields: Any
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rows, seq = record_rows(profile_vault, backend), profile_vault.head.seq
    with pytest.raises(SchemaError) as caught:
        s.put(c, kind, fields, purpose="service")
    assert isinstance(caught.value, ValueError)
    _assert_nothing_stored(profile_vault, backend, rows, seq)


def test_put_refuses_a_record_over_1MiB_and_stores_nothing(
    make_vault: Any, backend: str | None
) -> None:
    v: Vault = make_vault()
    names = [f"f{i}" for i in range(20)]
    v.declare_kind("wide", fields=names, purposes=["service"])
    s = v.admin()
    c = s.add_customer()
    just_under_field = "z" * 60_000
    seq = v.head.seq
    with pytest.raises(SchemaError, match="exceeds"):
        s.put(c, "wide", dict.fromkeys(names, just_under_field), purpose="service")
    _assert_nothing_stored(v, backend, 0, seq)
    # The same fields in a record under the limit are fine.
    s.put(c, "wide", dict.fromkeys(names[:10], just_under_field), purpose="service")


def test_field_values_at_the_integer_limits_are_accepted(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": MAX_INT, "phone": -MAX_INT}, purpose="service")
    assert s.get(c, rid, purpose="service").fields == {"name": MAX_INT, "phone": -MAX_INT}


def test_put_refuses_a_field_whose_canonical_form_exceeds_64KiB(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    value = "\x01" * 12_000
    assert len(canonical(value)) > 64 * 1024
    with pytest.raises(SchemaError):
        s.put(c, "profile", {"name": value}, purpose="service")


def test_put_many_is_all_or_nothing_when_one_item_is_invalid(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rows, seq = record_rows(profile_vault, backend), profile_vault.head.seq
    items = [(c, "profile", {"name": f"n{i}"}) for i in range(4)]
    items.insert(2, (c, "profile", {"name": 3.14}))
    with pytest.raises(SchemaError):
        s.put_many(items, purpose="service")
    _assert_nothing_stored(profile_vault, backend, rows, seq)


def test_put_many_is_all_or_nothing_when_one_customer_is_unknown(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    seq = profile_vault.head.seq
    items = [(c, "profile", {"name": "ok"}), (FAKE_CUSTOMER, "profile", {"name": "lost"})]
    with pytest.raises(NotFoundError):
        s.put_many(items, purpose="service")
    _assert_nothing_stored(profile_vault, backend, 0, seq)
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in logged] == [("record.put", "error")]
    assert logged[0]["detail"] == {"reason_code": "customer_not_found"}


def test_put_many_refuses_an_empty_or_oversized_batch(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    with pytest.raises(SchemaError):
        s.put_many([], purpose="service")
    with pytest.raises(SchemaError):
        s.put_many([(c, "profile", {"name": "x"})] * 10_001, purpose="service")
    with pytest.raises(SchemaError):
        s.get_many([], purpose="service")


# -- purposes: PurposeError is a denial and a schema error, and is logged ---------------


def test_purpose_error_is_both_access_denied_and_schema_error() -> None:
    assert issubclass(PurposeError, AccessDeniedError)
    assert issubclass(PurposeError, SchemaError)


def test_get_with_an_undeclared_purpose_is_denied_and_logged_once(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Ada"}, purpose="service")
    seq = profile_vault.head.seq
    with pytest.raises(PurposeError) as caught:
        s.get(c, rid, purpose="marketing")
    assert "Ada" not in str(caught.value)
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"], e["purpose"]) for e in logged] == [
        ("record.get", "denied", "marketing")
    ]


def test_put_with_an_undeclared_purpose_is_denied_stores_nothing_and_is_logged(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    seq = profile_vault.head.seq
    with pytest.raises(PurposeError):
        s.put(c, "profile", {"name": "Ada"}, purpose="marketing")
    assert record_rows(profile_vault, backend) == 0
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in logged] == [("record.put", "denied")]


def test_list_records_of_a_kind_with_an_undeclared_purpose_is_denied_and_logged(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    seq = profile_vault.head.seq
    with pytest.raises(PurposeError):
        s.list_records(c, purpose="marketing", kind="profile")
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in logged] == [("record.list", "denied")]


def test_put_many_with_a_purpose_undeclared_for_one_kind_stores_nothing(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    seq = profile_vault.head.seq
    items = [(c, "profile", {"name": "ok"}), (c, "note", {"text": "not for billing"})]
    with pytest.raises(PurposeError):
        s.put_many(items, purpose="billing")
    assert record_rows(profile_vault, backend) == 0
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in logged] == [("record.put", "denied")]
    assert logged[0]["detail"]["kind"] == "note"


def test_update_and_delete_with_an_undeclared_purpose_change_nothing(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    rid = s.put(c, "note", {"text": "t"}, purpose="service")
    seq = profile_vault.head.seq
    with pytest.raises(PurposeError):
        s.update(c, rid, {"text": "changed"}, purpose="billing")
    with pytest.raises(PurposeError):
        s.delete(c, rid, purpose="billing")
    rec = s.get(c, rid, purpose="service")
    assert rec.fields == {"text": "t"} and rec.version == 1
    logged = entries_after(profile_vault, backend, seq)
    assert [(e["action"], e["outcome"]) for e in logged] == [
        ("record.update", "denied"),
        ("record.delete", "denied"),
        ("record.get", "ok"),
    ]


# -- not found ------------------------------------------------------------------------


def test_unknown_customer_raises_not_found_and_is_logged_as_error(
    profile_vault: Vault, backend: str | None
) -> None:
    s = profile_vault.admin()
    seq = profile_vault.head.seq
    with pytest.raises(NotFoundError) as caught:
        s.customer(FAKE_CUSTOMER)
    assert isinstance(caught.value, LookupError)
    with pytest.raises(NotFoundError):
        s.list_records(FAKE_CUSTOMER, purpose="service")
    with pytest.raises(NotFoundError):
        s.get(FAKE_CUSTOMER, FAKE_RECORD, purpose="service")
    logged = entries_after(profile_vault, backend, seq)
    assert [e["outcome"] for e in logged] == ["error", "error", "error"]


def test_unknown_record_raises_not_found(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    s.put(c, "profile", {"name": "x"}, purpose="service")
    with pytest.raises(NotFoundError):
        s.get(c, FAKE_RECORD, purpose="service")
    with pytest.raises(NotFoundError):
        s.update(c, FAKE_RECORD, {"name": "y"}, purpose="service")
    with pytest.raises(NotFoundError):
        s.delete(c, FAKE_RECORD, purpose="service")


def test_a_record_cannot_be_read_through_another_customer(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    owner, other = s.add_customer(), s.add_customer()
    rid = s.put(owner, "profile", {"name": "private"}, purpose="service")
    with pytest.raises(NotFoundError):
        s.get(other, rid, purpose="service")
    with pytest.raises(NotFoundError):
        s.get_many([(owner, rid), (other, rid)], purpose="service")


@pytest.mark.parametrize(
    "bad_id",
    ["", "cus_", "cus_short", "cus_" + "A" * 26, "cus_" + "1" * 26, "rec_" + "a" * 26, 42, None],
)
def test_malformed_customer_ids_raise_not_found(profile_vault: Vault, bad_id: Any) -> None:
    s = profile_vault.admin()
    head = profile_vault.head
    with pytest.raises(NotFoundError):
        s.customer(bad_id)
    with pytest.raises(NotFoundError):
        s.get(bad_id, FAKE_RECORD, purpose="service")
    with pytest.raises(NotFoundError):
        s.put(bad_id, "profile", {"name": "x"}, purpose="service")
    assert profile_vault.head == head


@pytest.mark.parametrize(
    "bad_id", ["", "rec_", "rec_" + "b" * 25, "rec_" + "b" * 27, "cus_" + "b" * 26, 7]
)
def test_malformed_record_ids_raise_not_found(profile_vault: Vault, bad_id: Any) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    with pytest.raises(NotFoundError):
        s.get(c, bad_id, purpose="service")
    with pytest.raises(NotFoundError):
        s.delete(c, bad_id, purpose="service")
    with pytest.raises(NotFoundError):
        s.update(c, bad_id, {"name": "x"}, purpose="service")


# -- no plaintext in reprs -------------------------------------------------------------


def test_record_repr_and_str_show_field_names_but_no_values(profile_vault: Vault) -> None:
    s = profile_vault.admin()
    c = s.add_customer()
    secret_name, secret_phone = "Zanzibar Quokka", "555-0199-31337"
    rid = s.put(c, "profile", {"name": secret_name, "phone": secret_phone}, purpose="service")
    rec = s.get(c, rid, purpose="service")
    assert isinstance(rec, Record)
    for shown in (repr(rec), str(rec), f"{rec}", repr([rec])):
        assert secret_name not in shown and secret_phone not in shown
        assert "name" in shown and "phone" in shown
