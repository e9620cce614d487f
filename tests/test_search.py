"""Blind-index search (issue 21 item 2, docs/search.md): a kind declares searchable
fields with a normalizer; ``Session.find`` goes through the gate, logs kind, field and
count (never the value nor its tag), and returns only records whose decrypted field
really holds the value, so a forged or colliding index entry finds nothing. Entries
follow puts, updates, deletes, kind changes, shreds (single, bulk, decommission),
handover imports and restores. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shredvault.keys import FLOOR, load_keyfile
from shredvault.keys.subkeys import BLIND_INDEX
from shredvault.vault import (
    AccessDeniedError,
    NotSearchableError,
    PurposeError,
    Role,
    SchemaError,
    ShredSource,
    TamperError,
    Vault,
    handover_keygen,
    open_handover_key,
    read_handover_public_key,
    restore_backup,
)
from shredvault.vault.blindindex import TAG_SIZE, tag_message
from shredvault.vault.normalize import normalize

from clirun import make_run
from verifiers import token_key_by_hand

PHONE = "+1 (555) 010-9999"
PHONE_AGAIN = "+1 555.010.9999"
EMAIL = "Ann.Lee@Example.ORG"
SERVICE = "service"
VaultFactory = Callable[..., Vault]


def url_of(v: Vault, backend: str | None) -> str:
    return backend or f"sqlite:///{v.path / 'data.db'}"


def sql(v: Vault, backend: str | None, query: str, **params: Any) -> list[Any]:
    engine = create_engine(url_of(v, backend))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(query), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def log_bodies(v: Vault, backend: str | None) -> list[dict[str, Any]]:
    rows = sql(v, backend, "SELECT body FROM sv_log ORDER BY seq")
    return [json.loads(bytes(r.body)) for r in rows]


def entries(v: Vault, backend: str | None, customer: str | None = None) -> int:
    if customer is None:
        return len(sql(v, backend, "SELECT tag FROM sv_search"))
    return len(sql(v, backend, "SELECT tag FROM sv_search WHERE customer_id = :c", c=customer))


@pytest.fixture
def vault(make_vault: VaultFactory) -> Vault:
    v: Vault = make_vault()
    v.declare_kind(
        "contact",
        fields=["name", "phone", "email", "note"],
        purposes=[SERVICE, "billing"],
        searchable={"phone": "digits", "email": "email"},
    )
    return v


def add(v: Vault, **fields: Any) -> tuple[str, str]:
    s = v.admin()
    cid = s.add_customer()
    return cid, s.put(cid, "contact", fields, purpose=SERVICE)


# -- normalizers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "normalized"),
    [
        ("digits", "+1 (555) 010-9999", "+15550109999"),
        ("digits", " +1 555.010.9999 ", "+15550109999"),
        ("digits", "555-010-9999", "5550109999"),
        ("digits", "\uff15\uff15\uff15", "555"),  # full-width digits
        ("digits", "no digits", ""),
        ("email", "  Ann.Lee@Example.ORG\t", "ann.lee@example.org"),
        ("email", "STRASSE@x.de", "strasse@x.de"),
        ("email", "Straße@x.de", "strasse@x.de"),
        ("exact", "Cafe\u0301", "Café"),
        ("exact", " Ann ", " Ann "),
    ],
)
def test_normalizers_follow_the_documented_rules(name: str, value: str, normalized: str) -> None:
    assert normalize(name, value) == normalized


def test_a_tag_is_the_truncated_hmac_under_the_keystore_blind_index_subkey(
    tmp_path: Path, keyfile: Path
) -> None:
    """Recomputed by hand from docs/keys.md and docs/search.md."""
    v = Vault.create(tmp_path / "v", keyfile=keyfile)
    v.declare_kind("contact", fields=["phone"], purposes=[SERVICE], searchable={"phone": "digits"})
    add(v, phone=PHONE)
    ((stored,),) = [tuple(r) for r in sql(v, None, "SELECT tag FROM sv_search")]
    v.close()
    index_key = token_key_by_hand(tmp_path / "v" / "keys.db", load_keyfile(keyfile), BLIND_INDEX)
    message = _aad(b"shredvault/search/v1", b"contact", b"phone", b"+15550109999")
    assert message == tag_message("contact", "phone", "+15550109999")
    assert bytes(stored) == hmac.digest(index_key, message, "sha256")[:TAG_SIZE]
    assert TAG_SIZE == 4


def _aad(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


# -- finding ---------------------------------------------------------------------------------


def test_find_by_phone_matches_every_formatting_of_the_same_digits(vault: Vault) -> None:
    first = add(vault, name="Ann", phone=PHONE)
    second = add(vault, name="Bo", phone=PHONE_AGAIN)
    add(vault, name="Cy", phone="+1 555 010 9998")
    found = vault.admin().find("contact", "phone", "+15550109999", purpose=SERVICE)
    assert [(r.customer, r.id) for r in found] == [first, second]
    assert found[0].fields == {"name": "Ann", "phone": PHONE}


def test_find_by_email_ignores_case_and_surrounding_space(vault: Vault) -> None:
    _cid, rid = add(vault, name="Ann", email=EMAIL)
    found = vault.admin().find("contact", "email", "  ann.lee@EXAMPLE.org ", purpose=SERVICE)
    assert [r.id for r in found] == [rid]
    assert vault.admin().find("contact", "email", "ann.lee@example.com", purpose=SERVICE) == []


def test_a_list_field_is_found_by_any_of_its_items(make_vault: VaultFactory) -> None:
    v = make_vault()
    v.declare_kind(
        "contact", fields=["phones"], purposes=[SERVICE], searchable={"phones": "digits"}
    )
    cid = v.admin().add_customer()
    rid = v.admin().put(cid, "contact", {"phones": ["555 1", "555 2", 7]}, purpose=SERVICE)
    assert [r.id for r in v.admin().find("contact", "phones", "5552", purpose=SERVICE)] == [rid]


def test_find_logs_kind_field_and_count_never_the_value_nor_its_tag(
    vault: Vault, backend: str | None
) -> None:
    _cid, rid = add(vault, name="Ann", phone=PHONE)
    vault.admin().find("contact", "phone", PHONE_AGAIN, purpose=SERVICE)
    vault.admin().find("contact", "phone", "+1 999 000", purpose=SERVICE)
    found, none = [e for e in log_bodies(vault, backend) if e["action"] == "record.find"]
    assert found["record"] == rid and found["purpose"] == SERVICE
    assert found["detail"] == {
        "kind": "contact",
        "field": "phone",
        "fields": ["name", "phone"],
        "matches": 1,
    }
    assert none["detail"] == {"kind": "contact", "field": "phone", "matches": 0}
    assert "record" not in none or none["record"] is None
    raw = b"".join(bytes(r.body) for r in sql(vault, backend, "SELECT body FROM sv_log"))
    tags = [bytes(r.tag) for r in sql(vault, backend, "SELECT tag FROM sv_search")]
    # long enough not to turn up by chance in hashes and times ("010" did, now and then)
    for secret in (b"999000", b"5550109999", b"010-9999"):
        assert secret not in raw  # the stored put logs no values either
    for tag in tags:
        assert tag.hex().encode() not in raw


def test_a_field_not_searchable_is_a_typed_error_naming_no_value(
    vault: Vault, backend: str | None
) -> None:
    add(vault, name="Ann Secret")
    before = len(log_bodies(vault, backend))
    with pytest.raises(NotSearchableError) as caught:
        vault.admin().find("contact", "name", "Ann Secret", purpose=SERVICE)
    assert "Ann Secret" not in str(caught.value) and "searchable" in str(caught.value)
    assert isinstance(caught.value, SchemaError)
    assert len(log_bodies(vault, backend)) == before


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("no digits here", "empty once normalized"),
        (5550109999, "must be text"),
        ("555\ud800", "not valid Unicode"),
        ("5" * 70_000, "at most"),
    ],
)
def test_a_bad_query_is_refused_without_showing_it(vault: Vault, value: Any, why: str) -> None:
    with pytest.raises(SchemaError, match=why) as caught:
        vault.admin().find("contact", "phone", value, purpose=SERVICE)
    assert str(value) not in str(caught.value)


def test_a_role_without_the_field_is_denied_and_logged(vault: Vault, backend: str | None) -> None:
    add(vault, name="Ann", phone=PHONE)
    admin = vault.admin()
    admin.add_role(Role.build("desk", actions=["read"], fields=["contact.name"]))
    desk = vault.login(admin.add_principal("desk-1", role="desk"))
    with pytest.raises(AccessDeniedError, match="may not search field") as caught:
        desk.find("contact", "phone", PHONE, purpose=SERVICE)
    assert PHONE not in str(caught.value) and "5550109999" not in str(caught.value)
    last = log_bodies(vault, backend)[-1]
    assert (last["action"], last["outcome"]) == ("record.find", "denied")
    assert last["detail"] == {
        "kind": "contact",
        "fields": ["phone"],
        "reason_code": "field_not_allowed",
    }


def test_a_role_sees_only_its_allowed_fields_of_what_it_finds(vault: Vault) -> None:
    add(vault, name="Ann", phone=PHONE, note="private")
    admin = vault.admin()
    admin.add_role(Role.build("phones", actions=["read"], fields=["contact.phone", "contact.name"]))
    desk = vault.login(admin.add_principal("desk-2", role="phones"))
    (found,) = desk.find("contact", "phone", PHONE, purpose=SERVICE)
    assert found.fields == {"name": "Ann", "phone": PHONE}


def test_a_role_that_may_not_read_or_a_foreign_purpose_is_denied(
    vault: Vault, backend: str | None
) -> None:
    add(vault, phone=PHONE)
    admin = vault.admin()
    admin.add_role(Role.build("writer", actions=["write"]))
    writer = vault.login(admin.add_principal("w", role="writer"))
    with pytest.raises(AccessDeniedError):
        writer.find("contact", "phone", PHONE, purpose=SERVICE)
    assert log_bodies(vault, backend)[-1]["outcome"] == "denied"
    with pytest.raises(PurposeError):
        admin.find("contact", "phone", PHONE, purpose="marketing")
    assert log_bodies(vault, backend)[-1]["detail"]["reason_code"] == "purpose_not_declared"


def test_a_role_that_may_not_read_the_kind_is_denied_before_learning_its_fields(
    vault: Vault, backend: str | None
) -> None:
    # the kinds restriction decides first: a NotSearchableError used to tell a role
    # without access to the kind which of its fields are searchable
    vault.declare_kind("ticket", fields=["text"], purposes=[SERVICE])
    add(vault, phone=PHONE)
    admin = vault.admin()
    admin.add_role(Role.build("tickets", actions=["read"], kinds=["ticket"]))
    desk = vault.login(admin.add_principal("t", role="tickets"))
    for field in ("phone", "name"):
        with pytest.raises(AccessDeniedError) as caught:
            desk.find("contact", field, PHONE, purpose=SERVICE)
        assert "phone, " not in str(caught.value) and "email" not in str(caught.value)
        last = log_bodies(vault, backend)[-1]
        assert (last["action"], last["outcome"]) == ("record.find", "denied")
    assert (admin.find("contact", "phone", PHONE, purpose=SERVICE)[0].fields["phone"]) == PHONE


# -- what the untrusted data store can do ------------------------------------------------


def test_a_forged_entry_or_a_colliding_tag_finds_nothing(vault: Vault, backend: str | None) -> None:
    """A truncated tag shared by another value (forced here by copying the tag onto
    another record's entry, which is what a collision looks like) is dropped by the
    decrypt-and-compare; entries naming missing records are ignored."""
    ann = add(vault, name="Ann", phone=PHONE)
    bo = add(vault, name="Bo", phone="+44 20 7946 0000")
    ((tag,),) = [
        tuple(r)
        for r in sql(vault, backend, "SELECT tag FROM sv_search WHERE record_id = :r", r=ann[1])
    ]
    for rid, cid in ((bo[1], bo[0]), ("rec_" + "a" * 26, "cus_" + "b" * 26)):
        sql(vault, backend,
            "INSERT INTO sv_search (kind, field, tag, record_id, customer_id) "
            "VALUES ('contact', 'phone', :t, :r, :c)", t=bytes(tag), r=rid, c=cid)  # fmt: skip
    found = vault.admin().find("contact", "phone", PHONE, purpose=SERVICE)
    assert [r.id for r in found] == [ann[1]]
    assert log_bodies(vault, backend)[-1]["detail"]["matches"] == 1


def test_a_deleted_entry_hides_a_match_until_the_kind_is_declared_again(
    vault: Vault, backend: str | None
) -> None:
    _cid, rid = add(vault, phone=PHONE)
    sql(vault, backend, "DELETE FROM sv_search")
    assert vault.admin().find("contact", "phone", PHONE, purpose=SERVICE) == []
    spec = vault.kind("contact")
    vault.declare_kind(
        "contact", fields=spec.fields, purposes=spec.purposes, searchable=dict(spec.searchable)
    )
    assert [r.id for r in vault.admin().find("contact", "phone", PHONE, purpose=SERVICE)] == [rid]


def test_a_searchable_flag_flipped_in_the_data_store_is_refused(
    vault: Vault, backend: str | None
) -> None:
    add(vault, name="Ann", phone=PHONE)
    spec = vault.kind("contact").to_json()
    spec["searchable"] = {**spec["searchable"], "name": "exact"}
    spec = json.dumps(spec, sort_keys=True)
    sql(vault, backend, "UPDATE sv_kinds SET spec = :s WHERE name = 'contact'", s=spec)
    vault._ctx._kinds.clear()  # another process reads the row afresh
    with pytest.raises(TamperError):
        vault.admin().find("contact", "name", "Ann", purpose=SERVICE)


# -- entries follow the records ------------------------------------------------------------


def test_update_and_delete_keep_the_index_current(vault: Vault, backend: str | None) -> None:
    cid, rid = add(vault, phone=PHONE, email=EMAIL)
    s = vault.admin()
    s.update(cid, rid, {"phone": "+1 555 000 1111"}, purpose=SERVICE)
    assert s.find("contact", "phone", PHONE, purpose=SERVICE) == []
    assert [r.id for r in s.find("contact", "phone", "+15550001111", purpose=SERVICE)] == [rid]
    assert [r.id for r in s.find("contact", "email", EMAIL, purpose=SERVICE)] == [rid]
    s.update(cid, rid, {"email": None}, purpose=SERVICE)
    assert entries(vault, backend, cid) == 1
    s.delete(cid, rid, purpose=SERVICE)
    assert entries(vault, backend, cid) == 0


def test_alter_indexes_existing_records_and_unsearchable_drops_entries(
    vault: Vault, backend: str | None
) -> None:
    _cid, rid = add(vault, name="Ann Lee", phone=PHONE)
    s = vault.admin()
    s.alter_kind("contact", add_searchable={"name": "exact"})
    assert [r.id for r in s.find("contact", "name", "Ann Lee", purpose=SERVICE)] == [rid]
    alter = log_bodies(vault, backend)[-2]
    assert alter["detail"]["changed"]["searchable"] == ["name"]
    assert "Ann" not in json.dumps(alter)
    s.alter_kind("contact", drop_searchable=["phone", "name"])
    assert entries(vault, backend) == 0
    with pytest.raises(NotSearchableError):
        s.find("contact", "phone", PHONE, purpose=SERVICE)
    with pytest.raises(SchemaError, match="not declared"):
        s.alter_kind("contact", add_searchable={"fax": "digits"})
    with pytest.raises(SchemaError, match="unknown normalizer"):
        s.alter_kind("contact", add_searchable={"phone": "soundex"})


def test_a_kind_declared_before_searchable_fields_existed_has_none(vault: Vault) -> None:
    vault.declare_kind("legacy", fields=["phone"], purposes=[SERVICE])
    assert vault.kind("legacy").searchable == ()
    assert "searchable" not in vault.kind("legacy").to_json()
    with pytest.raises(NotSearchableError):
        vault.admin().find("legacy", "phone", PHONE, purpose=SERVICE)


def test_shred_removes_the_customers_entries(vault: Vault, backend: str | None) -> None:
    cid, _rid = add(vault, phone=PHONE, email=EMAIL)
    other = add(vault, phone=PHONE)
    assert entries(vault, backend, cid) == 2
    vault.admin().shred(cid, reason="request")
    assert entries(vault, backend, cid) == 0
    assert [r.id for r in vault.admin().find("contact", "phone", PHONE, purpose=SERVICE)] == [
        other[1]
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_bulk_shred_and_decommission_remove_entries(
    make_vault: VaultFactory, backend: str | None
) -> None:
    clock = _Clock()
    v = make_vault(clock=clock)
    v.declare_kind("contact", fields=["phone"], purposes=[SERVICE], searchable={"phone": "digits"})
    s = v.admin()
    due = s.add_customer(retain_until=clock.now + timedelta(days=1))
    kept = s.add_customer()
    for cid in (due, kept):
        s.put(cid, "contact", {"phone": PHONE}, purpose=SERVICE)
    clock.now += timedelta(days=2)
    assert [r.customer for r in s.shred_expired().receipts] == [due]
    assert entries(v, backend, due) == 0 and entries(v, backend, kept) == 1
    s.decommission(reason="closing down")
    assert entries(v, backend) == 0


def test_handover_import_indexes_the_new_records(tmp_path: Path, keyfile: Path) -> None:
    seller = Vault.create(tmp_path / "seller", keyfile=keyfile)
    buyer = Vault.create(tmp_path / "buyer", keyfile=keyfile)
    try:
        for v in (seller, buyer):
            v.declare_kind(
                "contact", fields=["phone"], purposes=[SERVICE], searchable={"phone": "digits"}
            )
        cid = seller.admin().add_customer(consent={"transfer": True})
        seller.admin().put(cid, "contact", {"phone": PHONE}, purpose=SERVICE)
        pub, key_file, _fp = handover_keygen(tmp_path / "acq", b"pass phrase", params=FLOOR)
        out = tmp_path / "package.svh"
        seller.admin().handover_export(read_handover_public_key(pub), str(out))
        key = open_handover_key(key_file, b"pass phrase")
        buyer.admin().handover_import(str(out), key, seller_public_key=seller.public_key)
        (found,) = buyer.admin().find("contact", "phone", PHONE_AGAIN, purpose=SERVICE)
        assert found.customer == cid
    finally:
        seller.close()
        buyer.close()


def test_a_restore_replays_shreds_into_the_index(tmp_path: Path, keyfile: Path) -> None:
    live = Vault.create(tmp_path / "live", keyfile=keyfile)
    live.declare_kind(
        "contact", fields=["phone"], purposes=[SERVICE], searchable={"phone": "digits"}
    )
    gone, _ = add(live, phone=PHONE)
    _kept, kept_rid = add(live, phone=PHONE)
    archive = tmp_path / "t0.tar"
    live.admin().backup(str(archive))
    live.admin().shred(gone, reason="after the backup")
    live.close()
    restore_backup(archive, tmp_path / "restored", keyfile=keyfile,
                   source=ShredSource(vault_dir=tmp_path / "live"))  # fmt: skip
    restored = Vault.open(tmp_path / "restored", keyfile=keyfile)
    try:
        assert entries(restored, None, gone) == 0
        found = restored.admin().find("contact", "phone", PHONE, purpose=SERVICE)
        assert [r.id for r in found] == [kept_rid]
    finally:
        restored.close()


# -- the CLI, as a real process --------------------------------------------------------------


def test_cli_kind_declare_alter_and_list_show_searchable_fields(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "cli-kinds"
    Vault.create(root, keyfile=keyfile).close()
    run = make_run(root, keyfile)
    declared = run("kind", "declare", "contact", "--fields", "name,phone,email",
                   "--purposes", SERVICE, "--searchable", "phone=digits", "--json")  # fmt: skip
    assert declared.exit_code == 0, declared.output
    assert json.loads(declared.stdout)["searchable"] == {"phone": "digits"}
    altered = run("kind", "alter", "contact", "--searchable", "email=email")
    assert altered.exit_code == 0, altered.output
    assert "email=email,phone=digits" in run("kind", "list").stdout
    dropped = run("kind", "alter", "contact", "--unsearchable", "phone", "--json")
    assert json.loads(dropped.stdout)["searchable"] == {"email": "email"}
    assert run("kind", "alter", "contact", "--searchable", "name=soundex").exit_code == 1
    assert run("kind", "alter", "contact", "--searchable", "name").exit_code == 2


def test_cli_record_find_runs_as_a_process_with_the_value_kept_out_of_argv(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "cli-vault"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("contact", fields=["name", "phone", "email"], purposes=[SERVICE],
                       searchable={"phone": "digits", "email": "email"})  # fmt: skip
        _cid, rid = add(v, name="Ann", phone=PHONE, email=EMAIL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_KEYFILE=str(keyfile), SHREDVAULT_VAULT=str(root))
    script = Path(sys.executable).with_name("shredvault")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
        )

    by_stdin = cli("record", "find", "contact", "phone", "-", "--purpose", SERVICE, "--json",
                   stdin=PHONE_AGAIN + "\n")  # fmt: skip
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert [r["id"] for r in json.loads(by_stdin.stdout)] == [rid]
    value_file = tmp_path / "value.txt"
    value_file.write_text("ANN.LEE@example.org\n")
    by_file = cli("record", "find", "contact", "email", "--value-file", str(value_file),
                  "--purpose", SERVICE)  # fmt: skip
    assert by_file.returncode == 0 and rid in by_file.stdout
    unsearchable = cli("record", "find", "contact", "name", "Ann", "--purpose", SERVICE, "--json")
    assert unsearchable.returncode == 1 and "Ann" not in unsearchable.stderr
    assert "not searchable" in json.loads(unsearchable.stderr.strip().splitlines()[-1])["error"]
    with Vault.open(root, keyfile=keyfile) as v:
        logged = json.dumps(log_bodies(v, None))
    assert "5550109999" not in logged and "example.org" not in logged.lower()


def test_cli_record_find_in_process_usage_and_empty_results(tmp_path: Path, keyfile: Path) -> None:
    root = tmp_path / "cli-usage"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind(
            "contact", fields=["phone"], purposes=[SERVICE], searchable={"phone": "digits"}
        )
    run = make_run(root, keyfile)
    none = run("record", "find", "contact", "phone", "123", "--purpose", SERVICE)
    assert none.exit_code == 0 and "no contact record matches" in none.stdout
    assert run("record", "find", "contact", "phone", "--purpose", SERVICE).exit_code == 2
    both = run("record", "find", "contact", "phone", "1", "--value-file", str(tmp_path / "x"),
               "--purpose", SERVICE)  # fmt: skip
    assert both.exit_code == 2
    assert run("record", "find", "--help").exit_code == 0


def test_the_digest_of_a_tag_is_not_sha256_of_the_value(vault: Vault, backend: str | None) -> None:
    """Unkeyed: a plain hash of the normalized value (Databunker-style) would let the
    data store's reader test guesses; the keyed tag does not match it."""
    add(vault, phone=PHONE)
    ((tag,),) = [tuple(r) for r in sql(vault, backend, "SELECT tag FROM sv_search")]
    assert bytes(tag) != hashlib.sha256(b"+15550109999").digest()[:TAG_SIZE]
