"""The request desk, consent history and change notices (issue 23 items 1-3,
docs/requests.md), on SQLite and PostgreSQL: each request type end to end, a request
that outlives its customer, deadlines on a fixed clock, rows forged or rolled back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from shredvault.keys import FLOOR
from shredvault.vault import (
    AccessDeniedError,
    LegalHoldError,
    NoticeWindowError,
    RequestClosedError,
    SchemaError,
    TamperError,
    Vault,
    handover_keygen,
    read_handover_public_key,
    render_markdown,
    verify_receipt,
)

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOTE = "Ms Example called from +44 20 7946 0000 about her address"


class FixedClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def vault(make_vault: Any, clock: FixedClock) -> Vault:
    v: Vault = make_vault(clock=clock)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    return v


def _customer(vault: Vault, **kw: Any) -> str:
    admin = vault.admin()
    cid = admin.add_customer(**kw)
    admin.put(cid, "profile", {"name": "Ada Example"}, purpose="service")
    return cid


@pytest.fixture
def db(vault: Vault, backend: str | None) -> Iterator[Engine]:
    """The data store behind the vault's back (a DBA with write access)."""
    engine = create_engine(backend or f"sqlite:///{vault.path / 'data.db'}")
    yield engine
    engine.dispose()


def _sql(db: Engine, statement: str) -> None:
    with db.begin() as conn:
        conn.execute(text(statement))


def test_a_request_is_due_by_the_default_policy_and_its_note_is_not_stored_in_clear(
    vault: Vault, db: Engine
) -> None:
    cid = _customer(vault)
    request = vault.admin().open_request(cid, type="correction", channel="email", note=NOTE)
    assert request.due == "2026-04-01T09:00:00.000000Z"  # 30 days
    assert request.has_note and not request.overdue
    with db.connect() as conn:
        row = conn.execute(text("SELECT * FROM sv_requests")).mappings().one()
    assert NOTE.encode() not in bytes(row["note"])
    assert "Example" not in json.dumps({k: str(v) for k, v in row.items() if k != "note"})


def test_access_request_closes_with_the_subject_report(vault: Vault) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    rid = admin.open_request(cid, type="access", channel="web").id
    done = admin.close_request(rid, outcome="fulfilled")
    assert done.report is not None and done.report["customer"]["id"] == cid
    assert [r["fields"] for r in done.report["records"]] == [{"name": "Ada Example"}]
    assert done.request.state == "closed" and done.request.in_time is True


def test_erasure_request_shreds_and_keeps_a_receipt_that_verifies(vault: Vault) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    rid = admin.open_request(cid, type="erasure", channel="in-person", note=NOTE).id
    done = admin.close_request(rid, outcome="fulfilled")
    assert done.receipt is not None and done.receipt.customer == cid
    report = verify_receipt(done.receipt.to_json(), public_key=vault.public_key)
    assert report.ok, report
    digest = hashlib.sha256(done.receipt.dumps().encode()).hexdigest()
    (kept,) = admin.list_requests()
    # The request outlives its customer: a tombstone with its outcome and receipt hash.
    assert kept.id == rid and kept.customer is None
    assert (kept.state, kept.outcome, kept.receipt) == ("closed", "fulfilled", {"sha256": digest})
    assert admin.audit_report()["requests"] == {
        "open": 0,
        "overdue": 0,
        "closed_in_time": 1,
        "closed_late": 0,
    }


def test_an_open_request_outlives_a_shred_unlinked_and_can_still_be_closed(
    vault: Vault,
) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    rid = admin.open_request(cid, type="complaint", channel="phone", note=NOTE).id
    admin.shred(cid, reason="contract ended")
    (kept,) = admin.list_requests(state="open")
    assert kept.customer is None and kept.has_note
    done = admin.close_request(rid, outcome="fulfilled")
    assert done.request.outcome == "fulfilled" and done.receipt is None
    with pytest.raises(RequestClosedError):
        admin.close_request(rid, outcome="refused")


def test_consent_withdrawal_request_withdraws_and_the_history_shows_it(vault: Vault) -> None:
    cid = _customer(vault, consent={"transfer": True, "news": True})
    admin = vault.admin()
    rid = admin.open_request(cid, type="consent-withdrawal", channel="phone").id
    admin.close_request(rid, outcome="fulfilled")
    assert admin.customer(cid).consent == {"news": False, "transfer": False}
    report = admin.customer_report(cid)
    history = report["consent_history"]
    assert [(h["channel"], h["consent"]) for h in history] == [
        ("at-creation", {"news": True, "transfer": True}),
        ("phone", {"news": False, "transfer": False}),
    ]
    assert history[1]["actor"] == "admin"
    assert "Your consent over time" in render_markdown(report)


def test_refused_and_correction_requests_close_without_side_effects(vault: Vault) -> None:
    cid = _customer(vault, consent={"transfer": True})
    admin = vault.admin()
    for kind in ("correction", "erasure", "consent-withdrawal"):
        rid = admin.open_request(cid, type=kind, channel="email").id
        done = admin.close_request(rid, outcome="refused", reason="identity not verified")
        assert (done.request.outcome, done.request.reason) == ("refused", "identity not verified")
    assert admin.customer(cid).state == "active"
    assert admin.customer(cid).consent == {"transfer": True}


def test_overdue_and_due_within_follow_the_fixed_clock(vault: Vault, clock: FixedClock) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    admin.set_request_policy("complaint", 5)
    soon = admin.open_request(cid, type="complaint", channel="web").id
    later = admin.open_request(cid, type="access", channel="web").id
    assert [r.id for r in admin.list_requests(due_within_days=7)] == [soon]
    clock.now = START + timedelta(days=6)
    assert [r.id for r in admin.list_requests(overdue=True)] == [soon]
    assert admin.audit_report()["requests"]["overdue"] == 1
    admin.close_request(soon, outcome="fulfilled")
    counts = admin.audit_report()["requests"]
    assert (counts["open"], counts["overdue"], counts["closed_late"]) == (1, 0, 1)
    assert [r.id for r in admin.list_requests(state="open")] == [later]


def test_policy_days_are_checked(vault: Vault) -> None:
    with pytest.raises(SchemaError):
        vault.admin().set_request_policy("erasure", 0)
    with pytest.raises(SchemaError):
        vault.admin().set_request_policy("gossip", 3)
    assert vault.admin().request_policy()["erasure"] == 30


@pytest.mark.parametrize(
    "forgery",
    [
        "UPDATE sv_requests SET due = '2030-01-01T00:00:00.000000Z'",
        "UPDATE sv_requests SET state = 'closed', outcome = 'fulfilled'",
        "DELETE FROM sv_requests",
        "UPDATE sv_request_policy SET days = 300",
    ],
)
def test_a_forged_back_dated_or_deleted_request_row_is_refused(
    vault: Vault, db: Engine, forgery: str
) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    admin.set_request_policy("access", 20)
    admin.open_request(cid, type="access", channel="web")
    _sql(db, forgery)
    with pytest.raises(TamperError):
        admin.list_requests() if "policy" not in forgery else admin.request_policy()
    if "policy" not in forgery:
        with pytest.raises(TamperError):
            admin.audit_report()


def test_a_closed_request_put_back_as_open_is_stale(vault: Vault, db: Engine) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    rid = admin.open_request(cid, type="complaint", channel="web").id
    with db.connect() as conn:
        old = dict(conn.execute(text("SELECT * FROM sv_requests")).mappings().one())
    admin.close_request(rid, outcome="fulfilled")
    with db.begin() as conn:
        conn.execute(text("DELETE FROM sv_requests"))
        cols = ", ".join(old)
        conn.execute(
            text(f"INSERT INTO sv_requests ({cols}) VALUES ({', '.join(':' + c for c in old)})"),
            old,
        )
    with pytest.raises(TamperError, match="rolled back"):
        admin.list_requests()


def test_a_dek_rotation_reseals_the_note(vault: Vault, db: Engine) -> None:
    cid = _customer(vault)
    admin = vault.admin()
    admin.open_request(cid, type="correction", channel="email", note=NOTE)
    admin.rotate_dek(cid)
    (kept,) = admin.list_requests()  # still authentic after the re-seal
    assert kept.has_note
    with db.connect() as conn:
        assert conn.execute(text("SELECT note_dek FROM sv_requests")).scalar() == 2


# -- consent through a handover, and change notices -------------------------------------


@pytest.fixture
def acquirer(tmp_path: Path) -> bytes:
    pub, _key_file, _fp = handover_keygen(tmp_path / "acquirer", b"acquirer pass", params=FLOOR)
    return read_handover_public_key(pub)


def test_handover_exports_by_the_consent_in_force_at_export_time(
    vault: Vault, tmp_path: Path, acquirer: bytes
) -> None:
    admin = vault.admin()
    gave = _customer(vault)
    withdrew = _customer(vault, consent={"transfer": True})
    admin.set_consent(gave, {"transfer": True}, channel="web")
    admin.set_consent(withdrew, {"transfer": False}, channel="email")
    done = admin.handover_export(acquirer, str(tmp_path / "pkg"), customers=[gave, withdrew])
    assert (done.customers, done.excluded_no_consent) == (1, 1)
    history = admin.customer_report(gave)["consent_history"]
    assert [h["consent"] for h in history] == [{}, {"transfer": True}]


def test_notice_window_is_enforced_before_a_handover(
    vault: Vault, db: Engine, clock: FixedClock, tmp_path: Path, acquirer: bytes
) -> None:
    admin = vault.admin()
    first = _customer(vault, consent={"transfer": True})
    second = _customer(vault, consent={"transfer": True})
    _customer(vault)  # no transfer consent: no notice
    out = tmp_path / "notices"
    out.mkdir()
    batch = admin.prepare_notices(
        reason="transfer", effective="2026-04-01", recipients=["Acme Ltd"], out_dir=out
    )
    assert sorted(n.customer for n in batch.notices) == sorted([first, second])
    notice = {n.customer: n.id for n in batch.notices}
    doc = json.loads((out / f"{notice[first]}.json").read_text())
    assert doc["recipients"] == ["Acme Ltd"] and doc["data"] == ["profile"]
    assert doc["object_by"] == "2026-04-01T00:00:00.000000Z" and doc["how_to_object"]
    assert "Acme Ltd" in (out / f"{notice[first]}.md").read_text()

    def export(name: str) -> Any:
        return admin.handover_export(acquirer, str(tmp_path / name), require_notice_window=True)

    with pytest.raises(NoticeWindowError) as refused:
        export("early")
    assert refused.value.customers == {first: "not_delivered", second: "not_delivered"}
    admin.notice_delivered(first, notice[first], channel="email")
    admin.notice_delivered(second, notice[second], channel="phone")
    with pytest.raises(NoticeWindowError) as refused:
        export("still-early")
    assert set(refused.value.customers.values()) == {"window_open"}
    admin.notice_objected(second, notice[second], channel="phone")
    clock.now = START + timedelta(days=31)
    with pytest.raises(NoticeWindowError) as refused:
        export("objected")
    assert refused.value.customers == {second: "objected"}
    assert not (tmp_path / "objected").exists()
    done = admin.handover_export(
        acquirer, str(tmp_path / "pkg"), customers=[first], require_notice_window=True
    )
    assert done.customers == 1
    with db.connect() as conn:
        actions = {a for (a,) in conn.execute(text("SELECT action FROM sv_log"))}
    assert {"notice.prepare", "notice.deliver", "notice.object"} <= actions


def test_notice_files_never_overwrite_and_bad_input_writes_nothing(
    vault: Vault, tmp_path: Path
) -> None:
    admin = vault.admin()
    _customer(vault, consent={"transfer": True})
    with pytest.raises(SchemaError):
        admin.prepare_notices(
            reason="transfer", effective="2020-01-01", recipients=["Acme"], out_dir=tmp_path
        )
    with pytest.raises(SchemaError):
        admin.prepare_notices(
            reason="new-purpose", effective="2027-01-01", recipients=["Acme"], out_dir=tmp_path
        )
    assert list(tmp_path.glob("ntc_*")) == []


def test_a_notice_names_its_recipients_as_text_and_refuses_a_flood_of_them(
    vault: Vault, db: Engine, tmp_path: Path
) -> None:
    admin = vault.admin()
    _customer(vault, consent={"transfer": True})
    with db.connect() as conn:
        entries = conn.execute(text("SELECT count(*) FROM sv_log")).scalar()
    # each recipient name is stored on every notice of the batch: 100,000 of them on
    # every customer's row used to be accepted
    with pytest.raises(SchemaError, match="at most 20 recipients"):
        admin.prepare_notices(
            reason="transfer", effective="2027-01-01", recipients=["Acme"] * 21, out_dir=tmp_path
        )
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sv_log")).scalar() == entries
        assert conn.execute(text("SELECT count(*) FROM sv_notices")).scalar() == 0
    assert list(tmp_path.glob("ntc_*")) == []
    hostile = "Acme Ltd\n# Pay here: [x](javascript:alert(1))"
    batch = admin.prepare_notices(
        reason="transfer", effective="2027-01-01", recipients=["Beta Co", hostile], out_dir=tmp_path
    )
    md = (tmp_path / f"{batch.notices[0].id}.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- **Who receives"))
    # the names as a list of text, not a Python list's repr ("['Beta Co', ...]")
    assert line.startswith("- **Who receives your data:** Beta Co, Acme Ltd<br>\\# Pay here")
    assert "['" not in md and "\\n" not in line
    assert "\\[x\\](javascript" in md  # the link's brackets escaped: inert text


def test_hostile_desk_arguments_are_typed_errors_and_change_nothing(
    vault: Vault, db: Engine
) -> None:
    admin = vault.admin()
    cid = _customer(vault, consent={"transfer": True})
    rid = admin.open_request(cid, type="complaint", channel="web").id
    with db.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM sv_log")).scalar()
    hostile: list[Any] = [
        lambda: admin.set_consent(cid, {}, channel="web"),  # used to log a change of nothing
        lambda: admin.set_consent(cid, {"Transfer ": False}, channel="web"),
        lambda: admin.set_consent(cid, {"transfer": "no"}, channel="web"),
        lambda: admin.open_request(cid, type="erasure", channel="fax"),
        lambda: admin.open_request(cid, type="deletion", channel="web"),
        lambda: admin.open_request(cid, type="access", channel="web", note="x" * 4001),
        lambda: admin.open_request(cid, type="access", channel="web", note="\udc80"),
        lambda: admin.open_request(cid, type="access", channel="web", note=" \n"),
        lambda: admin.close_request(rid, outcome="done"),
        lambda: admin.close_request(rid, outcome="refused", reason="r" * 201),
        lambda: admin.close_request(rid, outcome="refused", reason="nul\x00"),
        lambda: admin.list_requests(due_within_days=float("inf")),
        lambda: admin.set_request_policy("access", 0),
    ]
    for call in hostile:
        with pytest.raises(SchemaError) as caught:
            call()
        assert "x" * 50 not in str(caught.value)
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sv_log")).scalar() == before
    assert admin.customer(cid).consent == {"transfer": True}
    history = admin.customer_report(cid)["consent_history"]
    assert [h["channel"] for h in history] == ["at-creation"]
    (request,) = admin.list_requests(state="open")
    assert request.id == rid


def test_an_erasure_for_a_held_customer_or_by_an_operator_stays_open_and_shreds_nothing(
    vault: Vault,
) -> None:
    admin = vault.admin()
    cid = _customer(vault)
    rid = admin.open_request(cid, type="erasure", channel="email", note=NOTE).id
    admin.hold(cid)
    with pytest.raises(LegalHoldError):
        admin.close_request(rid, outcome="fulfilled")
    admin.release(cid)
    operator = vault.login(admin.add_principal("olga", role="operator"))
    with pytest.raises(AccessDeniedError):
        operator.close_request(rid, outcome="fulfilled")
    (request,) = admin.list_requests()
    assert (request.id, request.state, request.customer) == (rid, "open", cid)
    (record,) = admin.list_records(cid, purpose="service")
    assert record.fields == {"name": "Ada Example"}
    assert vault.verify_log().ok
    closed = admin.close_request(rid, outcome="fulfilled")
    assert closed.receipt is not None and closed.request.customer is None
    with pytest.raises(RequestClosedError):
        admin.close_request(rid, outcome="refused")


# an SQLite trigger plays the hostile data store: SQLite only
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_close_that_fails_after_the_shred_keeps_the_receipt(
    vault: Vault, db: Engine, backend: str | None
) -> None:
    admin = vault.admin()
    cid = _customer(vault)
    rid = admin.open_request(cid, type="erasure", channel="email").id
    # the data store edits the request row as the shred commits: the close's last
    # transaction refuses it, after the customer's keys are gone
    _sql(
        db,
        "CREATE TRIGGER sneaky AFTER UPDATE OF state ON sv_customers "
        "WHEN NEW.state = 'shredded' BEGIN "
        f"UPDATE sv_requests SET due = '2000-01-01T00:00:00.000000Z' WHERE id = '{rid}'; END",
    )
    with pytest.raises(TamperError):
        admin.close_request(rid, outcome="fulfilled")
    assert admin.customer(cid).state == "shredded"
    (kept,) = vault.kept_receipts()  # used to be lost: it cannot be issued again
    assert kept.customer == cid
