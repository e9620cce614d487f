"""The subject access report (``Session.customer_report``) against a scripted history.

The script below drives a vault on an injected clock through puts, reads, an update,
a delete, denials, a listing and a shred, and writes down, as it goes, every log entry
it expects about each customer. The report must return exactly those entries (then its
own ``customer.report`` entries), each with a canonical export line whose hash
recomputes, under a checkpoint the vault's public key verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import (
    AccessDeniedError,
    Auditor,
    NotFoundError,
    Role,
    Session,
    ShreddedError,
    Vault,
    VerificationError,
    ids,
    parse_public_key,
    render_markdown,
    verify_receipt,
)
from shredvault.vault.canonical import canonical
from shredvault.vault.checkpoint import checkpoint_from_json

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PROFILE = ["address", "name", "phone"]
TICKET = ["body", "subject"]

ALICE_PROFILE = {"name": "Alice Liddell", "phone": "+44 7700 900001", "address": "1 Rabbit Hole"}
ALICE_NEW_PHONE = "+44 7700 900099"
ALICE_TICKET = {"subject": "Lost card", "body": "Card vanished near the tea party"}
ALICE_OLD_TICKET = {"subject": "Typo in name", "body": "Fixed already, please ignore"}
BOB_PROFILE = {"name": "Robert Tables", "phone": "+1 555 0100", "address": "42 Drop Street"}
DAN_PROFILE = {"name": "Daniel Gone", "phone": "+49 30 901820", "address": "Erasure Allee 7"}

# (actor, role, action, purpose, outcome, record, fields): one expected log entry.
Seen = tuple[str, str, str, str | None, str, str | None, list[str] | None]


class SteppedClock:
    """A clock that stands still until the script moves it: every entry of one step
    carries that step's time."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class History:
    """The vault after the script, its sessions, and what the script expects."""

    vault: Vault
    clock: SteppedClock
    admin: Session
    olga: Session  # operator
    ada: Session  # auditor
    dora: Session  # custom role "dpo" with export
    carl: Session  # custom role "contractor": read/list for service only
    alice: str
    bob: str
    cara: str  # a customer with no records
    dan: str  # shredded
    rec_profile: str
    rec_ticket: str
    rec_deleted: str
    rec_bob: str
    rec_dan: str
    about: dict[str, list[Seen]] = field(default_factory=dict)

    def expect(self, customer: str, *seen: Seen) -> None:
        self.about.setdefault(customer, []).extend(seen)

    def report_entries(self, actor: str, role: str) -> list[Seen]:
        """The entries a report on alice adds: one per record, oldest record first."""
        return [
            (actor, role, "customer.report", "subject-access", "ok", self.rec_profile, PROFILE),
            (actor, role, "customer.report", "subject-access", "ok", self.rec_ticket, TICKET),
        ]


def build_history(vault: Vault, clock: SteppedClock) -> History:
    step = clock.advance
    admin = vault.admin()
    vault.declare_kind("profile", fields=PROFILE, purposes=["service", "billing"])
    vault.declare_kind("ticket", fields=TICKET, purposes=["support"])
    admin.add_role(Role.build("dpo", actions=["export"]))
    admin.add_role(Role.build("contractor", actions=["read", "list"], purposes=["service"]))
    tokens = {
        name: admin.add_principal(name, role=role)
        for name, role in [
            ("olga", "operator"),
            ("ada", "auditor"),
            ("dora", "dpo"),
            ("carl", "contractor"),
        ]
    }
    step(minutes=1)
    olga, ada, dora, carl = (vault.login(tokens[n]) for n in ("olga", "ada", "dora", "carl"))

    step(minutes=1)
    alice = olga.add_customer(ref="A-1", consent={"marketing": False})
    step(minutes=1)
    rec_profile = olga.put(alice, "profile", ALICE_PROFILE, purpose="service")
    step(minutes=1)
    rec_ticket = olga.put(alice, "ticket", ALICE_TICKET, purpose="support")
    step(minutes=1)
    rec_deleted = olga.put(alice, "ticket", ALICE_OLD_TICKET, purpose="support")
    step(minutes=1)
    olga.delete(alice, rec_deleted, purpose="support")
    step(minutes=1)
    bob = olga.add_customer(ref="B-2")
    rec_bob = olga.put(bob, "profile", BOB_PROFILE, purpose="service")
    step(minutes=1)
    olga.get(alice, rec_profile, purpose="service")
    olga.get(bob, rec_bob, purpose="service")
    step(minutes=1)
    with pytest.raises(AccessDeniedError):
        carl.get(alice, rec_ticket, purpose="support")  # contractor: service only
    with pytest.raises(AccessDeniedError):
        ada.get(alice, rec_profile, purpose="service")  # auditor: no read
    step(minutes=1)
    carl.list_records(alice, purpose="service")
    step(minutes=1)
    admin.customer(alice)
    step(minutes=1)
    olga.update(alice, rec_profile, {"phone": ALICE_NEW_PHONE}, purpose="service")
    step(minutes=1)
    cara = admin.add_customer()
    step(minutes=1)
    dan = olga.add_customer(ref="D-4")
    rec_dan = olga.put(dan, "profile", DAN_PROFILE, purpose="service")
    step(minutes=1)
    admin.shred(dan, reason="customer asked to be forgotten")
    step(minutes=1)

    h = History(
        vault, clock, admin, olga, ada, dora, carl,
        alice, bob, cara, dan, rec_profile, rec_ticket, rec_deleted, rec_bob, rec_dan,
    )  # fmt: skip
    op = ("olga", "operator")
    h.expect(
        alice,
        (*op, "customer.add", None, "ok", None, None),
        (*op, "record.put", "service", "ok", rec_profile, PROFILE),
        (*op, "record.put", "support", "ok", rec_ticket, TICKET),
        (*op, "record.put", "support", "ok", rec_deleted, TICKET),
        (*op, "record.delete", "support", "ok", rec_deleted, None),
        (*op, "record.get", "service", "ok", rec_profile, PROFILE),
        ("carl", "contractor", "record.get", "support", "denied", None, None),
        ("ada", "auditor", "record.get", "service", "denied", None, None),
        ("carl", "contractor", "record.list", "service", "ok", rec_profile, PROFILE),
        ("admin", "admin", "customer.show", None, "ok", None, None),
        (*op, "record.update", "service", "ok", rec_profile, ["phone"]),
    )
    h.expect(cara, ("admin", "admin", "customer.add", None, "ok", None, None))
    return h


@pytest.fixture
def history(tmp_path: Path, keyfile: Path) -> Iterator[History]:
    clock = SteppedClock(T0)
    vault = Vault.create(tmp_path / "vault", keyfile=keyfile, clock=clock)
    try:
        yield build_history(vault, clock)
    finally:
        vault.close()


def seen(item: dict[str, Any]) -> Seen:
    return (
        item["actor"],
        item["role"],
        item["action"],
        item["purpose"],
        item["outcome"],
        item["record"],
        item["fields"],
    )


def entries_after(vault: Vault, seq: int) -> list[dict[str, Any]]:
    """The log entries after ``seq``, read as an auditor would (no keys)."""
    with Auditor.open(vault.path) as auditor:
        return list(auditor.entries(since=seq + 1))


def export_lines(vault: Vault) -> dict[int, str]:
    """The vault's log export, one line per seq."""
    out = io.BytesIO()
    with Auditor.open(vault.path) as auditor:
        auditor.export(out)
    lines = [json.loads(raw) for raw in out.getvalue().splitlines()]
    texts = out.getvalue().decode("utf-8").splitlines()
    return {obj["seq"]: text for obj, text in zip(lines, texts, strict=True) if "seq" in obj}


# -- contents --------------------------------------------------------------------------------


def test_report_returns_every_current_record_decrypted_oldest_first(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    got = [(r["id"], r["kind"], r["fields"], r["version"]) for r in report["records"]]
    assert got == [
        (history.rec_profile, "profile", {**ALICE_PROFILE, "phone": ALICE_NEW_PHONE}, 2),
        (history.rec_ticket, "ticket", ALICE_TICKET, 1),
    ]


def test_report_gives_the_customers_metadata(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    assert report["type"] == "shredvault-subject-access-report"
    assert report["vault"] == history.vault.vault_id
    customer = report["customer"]
    assert (customer["id"], customer["ref"], customer["state"]) == (history.alice, "A-1", "active")
    assert customer["consent"] == {"marketing": False}
    assert customer["legal_hold"] is False
    assert customer["created"] == "2026-03-02T09:02:00.000000Z"
    assert report["generated"] == "2026-03-02T09:16:00.000000Z"


def test_history_is_every_entry_about_the_customer_then_the_reports_own(
    history: History,
) -> None:
    report = history.dora.customer_report(history.alice)
    expected = history.about[history.alice] + history.report_entries("dora", "dpo")
    assert [seen(h) for h in report["history"]] == expected


def test_history_is_in_seq_order_and_times_follow_the_script(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    seqs = [h["seq"] for h in report["history"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    times = [h["ts"] for h in report["history"]]
    assert times[0] == "2026-03-02T09:02:00.000000Z"  # customer.add
    assert times[-1] == "2026-03-02T09:16:00.000000Z"  # the report, at the script's end


def test_history_includes_earlier_reports(history: History) -> None:
    history.admin.customer_report(history.alice)
    history.clock.advance(minutes=1)
    report = history.dora.customer_report(history.alice)
    expected = (
        history.about[history.alice]
        + history.report_entries("admin", "admin")
        + history.report_entries("dora", "dpo")
    )
    assert [seen(h) for h in report["history"]] == expected


def test_report_logs_one_subject_access_entry_per_record(history: History) -> None:
    before = history.vault.head.seq
    history.dora.customer_report(history.alice)
    logged = entries_after(history.vault, before)
    assert [(e["actor"], e["action"], e["purpose"], e["record"]) for e in logged] == [
        ("dora", "customer.report", "subject-access", history.rec_profile),
        ("dora", "customer.report", "subject-access", history.rec_ticket),
    ]
    assert {e["detail"]["kind"] for e in logged} == {"profile", "ticket"}


def test_customer_without_records_gets_one_report_entry(history: History) -> None:
    report = history.admin.customer_report(history.cara)
    assert report["records"] == []
    assert [seen(h) for h in report["history"]] == [
        *history.about[history.cara],
        ("admin", "admin", "customer.report", "subject-access", "ok", None, None),
    ]


# -- verifiability -----------------------------------------------------------------------------


def test_each_history_line_recomputes_its_hash(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    for item in report["history"]:
        line = item["line"]
        entry = json.loads(line)
        digest = entry["hash"]
        member = f',"hash":"{digest}"'
        assert line.count(member) == 1
        hashed = b"shredvault/log/v1\n" + line.replace(member, "").encode("utf-8")
        assert hashlib.sha256(hashed).hexdigest() == digest
        assert (entry["seq"], entry["actor"], entry["action"], entry["record"]) == (
            item["seq"],
            item["actor"],
            item["action"],
            item["record"],
        )


def test_history_lines_are_the_lines_of_the_vaults_log_export(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    exported = export_lines(history.vault)
    for item in report["history"]:
        assert exported[item["seq"]] == item["line"]


def test_checkpoint_verifies_with_the_vault_key_and_covers_the_report(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    public_key = parse_public_key(report["public_key"])
    assert public_key == history.vault.public_key
    checkpoint = checkpoint_from_json(report["checkpoint"])
    assert checkpoint.verify(public_key)
    assert checkpoint.vault == history.vault.vault_id
    assert checkpoint.seq >= report["history"][-1]["seq"]
    head_line = json.loads(export_lines(history.vault)[checkpoint.seq])
    assert checkpoint.head == head_line["hash"]


def test_a_tampered_checkpoint_does_not_verify(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    forged = json.loads(json.dumps(report["checkpoint"]))
    forged["checkpoint"]["seq"] += 1
    assert not checkpoint_from_json(forged).verify(history.vault.public_key)


def test_chain_names_the_head_and_the_checkpoint_included(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    head = history.vault.head
    checkpoint = checkpoint_from_json(report["checkpoint"])
    assert report["chain"] == {
        "last_seq": head.seq,
        "head": head.hash,
        "checkpoint_seq": checkpoint.seq,
    }
    assert checkpoint.seq >= report["history"][-1]["seq"]
    assert json.loads(export_lines(history.vault)[head.seq])["hash"] == head.hash


def _fenced_blocks(md: str) -> list[str]:
    """The contents of the Markdown's fenced blocks, in order."""
    blocks, current, fence = [], [], None
    for line in md.splitlines():
        if fence is None and line.startswith("```"):
            fence = line[: len(line) - len(line.lstrip("`"))]
            current = []
        elif fence is not None and line == fence:
            blocks.append("\n".join(current))
            fence = None
        elif fence is not None:
            current.append(line)
    return blocks


def _check_markdown_offline(md: str, report: dict[str, Any]) -> None:
    """What a customer holding only the Markdown can check: the signed checkpoint
    bytes against the public key printed in it, and every history line's hash."""
    key_line = next(line for line in md.splitlines() if line.startswith("- vault public key:"))
    public_key = parse_public_key(key_line.split("`")[1])
    sig_line = next(line for line in md.splitlines() if line.startswith("- signature"))
    signature = sig_line.split("`")[1]
    blocks = _fenced_blocks(md)
    body = json.loads(blocks[0])
    assert canonical(body).decode("utf-8") == blocks[0]
    cp = checkpoint_from_json({"checkpoint": body, "signature": signature})
    assert cp.verify(public_key)
    lines = [b for b in blocks[1:] if b.startswith('{"action":')]
    assert lines == [h["line"] for h in report["history"]]
    for line in lines:
        digest = json.loads(line)["hash"]
        hashed = line.replace(f',"hash":"{digest}"', "").encode("utf-8")
        assert hashlib.sha256(b"shredvault/log/v1\n" + hashed).hexdigest() == digest
    assert cp.seq >= json.loads(lines[-1])["seq"]


def test_markdown_carries_the_checkpoint_key_and_exact_lines(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    md = render_markdown(report)
    checkpoint = report["checkpoint"]
    assert report["public_key"] in md
    assert checkpoint["signature"] in md
    assert f"seq {checkpoint['checkpoint']['seq']}" in md
    assert checkpoint["checkpoint"]["head"] in md
    _check_markdown_offline(md, report)


# -- a shredded customer, through its receipt -------------------------------------------------


def _shred_alice(history: History, reason: str = "customer asked") -> dict[str, Any]:
    receipt = history.admin.shred(history.alice, reason=reason)
    history.clock.advance(minutes=1)
    return receipt.to_json()


def _shred_entries(history: History) -> list[Seen]:
    return [
        ("admin", "admin", "customer.shred-intent", None, "ok", None, None),
        ("admin", "admin", "customer.shred", None, "ok", None, None),
    ]


def test_receipt_report_holds_every_entry_about_the_shredded_customer(
    history: History,
) -> None:
    receipt = _shred_alice(history)
    report = history.dora.customer_report_from_receipt(receipt)
    assert [seen(h) for h in report["history"]] == [
        *history.about[history.alice],
        *_shred_entries(history),
        ("dora", "dpo", "customer.report", "subject-access", "ok", None, None),
    ]
    assert report["records"] == []
    assert report["receipt"] == receipt
    assert report["subject_tag"] == receipt["subject_tag"]
    shred_seq = receipt["checkpoint"]["checkpoint"]["seq"]
    assert report["customer"] == {
        "id": history.alice,
        "state": "shredded",
        "shredded_at": receipt["entry"]["ts"],
        "shred_seq": shred_seq,
    }
    assert report["type"] == "shredvault-subject-access-report"
    assert report["vault"] == history.vault.vault_id


def test_receipt_report_lines_and_checkpoint_verify(history: History) -> None:
    report = history.dora.customer_report_from_receipt(_shred_alice(history))
    exported = export_lines(history.vault)
    assert [exported[h["seq"]] for h in report["history"]] == [h["line"] for h in report["history"]]
    checkpoint = checkpoint_from_json(report["checkpoint"])
    assert checkpoint.verify(history.vault.public_key)
    assert checkpoint.seq >= report["history"][-1]["seq"]
    head = history.vault.head
    assert report["chain"] == {
        "last_seq": head.seq,
        "head": head.hash,
        "checkpoint_seq": checkpoint.seq,
    }


def test_receipt_report_is_logged_under_the_tag_never_the_customer_id(history: History) -> None:
    receipt = _shred_alice(history)
    before = history.vault.head.seq
    history.dora.customer_report_from_receipt(receipt)
    logged = entries_after(history.vault, before)
    assert [(e["actor"], e["action"], e["outcome"], e["purpose"], e["record"]) for e in logged] == [
        ("dora", "customer.report", "ok", "subject-access", None)
    ]
    assert logged[0]["subject"] == receipt["subject_tag"]
    assert logged[0]["detail"] == {
        "records": 0,
        "receipt_seq": receipt["checkpoint"]["checkpoint"]["seq"],
    }
    assert history.alice not in json.dumps(logged)


def test_receipt_report_markdown_checks_offline(history: History) -> None:
    receipt = _shred_alice(history, reason="asked twice ``` and ```` fences")
    report = history.admin.customer_report_from_receipt(receipt)
    md = render_markdown(report)
    assert md.startswith(f"# What we hold about you — customer {history.alice}")
    assert "## Your data was erased" in md and "## Records" not in md
    assert "| admin | admin | customer.shred | " in md
    _check_markdown_offline(md, report)
    assert json.loads(_fenced_blocks(md)[-1]) == receipt


def _refused(history: History, session: Session, receipt: dict[str, Any]) -> dict[str, Any]:
    before = history.vault.head.seq
    with pytest.raises(VerificationError):
        session.customer_report_from_receipt(receipt)
    logged = entries_after(history.vault, before)
    assert [(e["actor"], e["action"], e["outcome"], e["subject"]) for e in logged] == [
        (session.actor, "customer.report", "error", None)
    ]
    assert logged[0]["detail"]["reason_code"] == "receipt_not_verified"
    return dict(logged[0]["detail"])


def test_an_altered_receipt_is_refused_and_logged(history: History) -> None:
    receipt = _shred_alice(history)
    renamed = {**receipt, "customer": history.bob}
    assert _refused(history, history.dora, renamed)["verification"] == "wrong customer"
    moved = json.loads(json.dumps(receipt))
    moved["entry"]["ts"] = "2026-03-02T09:00:00.000000Z"
    assert _refused(history, history.dora, moved)["verification"] == "modified"
    other_tag = {**receipt, "subject_tag": "00" * 32}
    assert _refused(history, history.dora, other_tag)["verification"] == "wrong customer"
    assert _refused(history, history.dora, {"type": "nothing"})["verification"] == "malformed"


def test_a_receipt_that_is_not_canonical_json_is_malformed(history: History) -> None:
    receipt = json.loads(json.dumps(_shred_alice(history)))
    receipt["entry"]["seq"] = float("nan")
    assert verify_receipt(receipt, public_key=history.vault.public_key).reason == "malformed"
    assert _refused(history, history.dora, receipt)["verification"] == "malformed"
    not_an_object: Any = [receipt]
    assert _refused(history, history.dora, not_an_object)["verification"] == "malformed"


def test_a_forged_signature_is_refused(history: History) -> None:
    receipt = json.loads(json.dumps(_shred_alice(history)))
    signature = receipt["checkpoint"]["signature"]
    receipt["checkpoint"]["signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert _refused(history, history.dora, receipt)["verification"] == "bad signature"


def test_a_receipt_from_another_vault_is_refused(
    history: History, tmp_path: Path, keyfile: Path
) -> None:
    with Vault.create(tmp_path / "other", keyfile=keyfile) as other:
        admin = other.admin()
        stranger = admin.add_customer()
        receipt = admin.shred(stranger, reason="elsewhere").to_json()
    assert _refused(history, history.dora, receipt)["verification"] == "wrong key"
    # Even with this vault's key inside, the receipt is checked against this vault's.
    receipt["public_key"] = f"ed25519:{history.vault.public_key.hex()}"
    assert _refused(history, history.dora, receipt)["verification"] == "bad signature"


@pytest.mark.parametrize("who", ["olga", "ada", "carl"])
def test_receipt_report_needs_export_and_the_denial_shows_under_the_tag(
    history: History, who: str
) -> None:
    receipt = _shred_alice(history)
    session = getattr(history, who)
    before = history.vault.head.seq
    with pytest.raises(AccessDeniedError):
        session.customer_report_from_receipt(receipt)
    logged = entries_after(history.vault, before)
    assert [(e["actor"], e["action"], e["outcome"], e["subject"]) for e in logged] == [
        (who, "customer.report", "denied", receipt["subject_tag"])
    ]
    report = history.dora.customer_report_from_receipt(receipt)
    assert (who, session.role, "customer.report", None, "denied", None, None) in [
        seen(h) for h in report["history"]
    ]


def test_without_export_a_forged_receipt_is_denied_naming_no_subject(history: History) -> None:
    receipt = {**_shred_alice(history), "customer": history.bob}
    before = history.vault.head.seq
    with pytest.raises(AccessDeniedError):
        history.olga.customer_report_from_receipt(receipt)
    logged = entries_after(history.vault, before)
    assert [(e["outcome"], e["subject"]) for e in logged] == [("denied", None)]


# -- isolation -----------------------------------------------------------------------------


def test_report_holds_nothing_of_other_customers(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    text = json.dumps(report, ensure_ascii=False) + render_markdown(report)
    others = [
        history.bob,
        history.rec_bob,
        history.dan,
        history.rec_dan,
        history.cara,
        "B-2",
        "D-4",
        *BOB_PROFILE.values(),
        *DAN_PROFILE.values(),
    ]
    assert [value for value in others if value in text] == []


def test_report_holds_neither_the_deleted_record_nor_the_old_phone(history: History) -> None:
    report = history.dora.customer_report(history.alice)
    held = json.dumps(report["records"], ensure_ascii=False)
    assert history.rec_deleted not in held
    assert ALICE_OLD_TICKET["body"] not in json.dumps(report, ensure_ascii=False)
    assert ALICE_PROFILE["phone"] not in json.dumps(report, ensure_ascii=False)


def test_markdown_shows_the_records_and_who_accessed_them(history: History) -> None:
    md = render_markdown(history.dora.customer_report(history.alice))
    assert md.startswith(f"# What we hold about you — customer {history.alice}")
    assert f"| name | {ALICE_PROFILE['name']} |" in md
    assert f"| phone | {ALICE_NEW_PHONE} |" in md
    assert f"| subject | {ALICE_TICKET['subject']} |" in md
    assert "| carl | contractor | record.get | support | denied |" in md
    assert "| dora | dpo | customer.report | subject-access | ok | address, name, phone |" in md
    assert "## How to check this report" in md


# -- who may ask -----------------------------------------------------------------------------


def _denied_report(history: History, session: Session) -> list[dict[str, Any]]:
    before = history.vault.head.seq
    with pytest.raises(AccessDeniedError):
        session.customer_report(history.alice)
    return entries_after(history.vault, before)


def test_operator_may_not_report_and_the_denial_is_logged(history: History) -> None:
    logged = _denied_report(history, history.olga)
    assert [(e["actor"], e["role"], e["action"], e["outcome"]) for e in logged] == [
        ("olga", "operator", "customer.report", "denied")
    ]
    assert logged[0]["detail"]["reason_code"] == "action_not_allowed"


def test_auditor_may_not_report(history: History) -> None:
    logged = _denied_report(history, history.ada)
    assert [(e["actor"], e["action"], e["outcome"]) for e in logged] == [
        ("ada", "customer.report", "denied")
    ]


def test_custom_role_without_export_may_not_report(history: History) -> None:
    logged = _denied_report(history, history.carl)
    assert [(e["actor"], e["action"], e["outcome"]) for e in logged] == [
        ("carl", "customer.report", "denied")
    ]


def test_revoked_export_principal_may_no_longer_report(history: History) -> None:
    history.admin.revoke_principal("dora")
    logged = _denied_report(history, history.dora)
    assert [(e["actor"], e["outcome"], e["detail"]["reason_code"]) for e in logged] == [
        ("dora", "denied", "token_revoked")
    ]


def test_shredded_customer_is_answered_by_shredded_error_and_logged(history: History) -> None:
    before = history.vault.head.seq
    with pytest.raises(ShreddedError):
        history.dora.customer_report(history.dan)
    logged = entries_after(history.vault, before)
    assert [(e["actor"], e["action"], e["outcome"], e["subject"]) for e in logged] == [
        ("dora", "customer.report", "error", None)
    ]
    assert logged[0]["detail"] == {"reason_code": "customer_shredded"}


def test_unknown_customer_is_not_found_and_logged(history: History) -> None:
    before = history.vault.head.seq
    with pytest.raises(NotFoundError) as raised:
        history.dora.customer_report(ids.new_id(ids.CUSTOMER))
    assert not isinstance(raised.value, ShreddedError)
    logged = entries_after(history.vault, before)
    assert [(e["action"], e["outcome"], e["detail"]) for e in logged] == [
        ("customer.report", "error", {"reason_code": "customer_not_found"})
    ]


def test_malformed_customer_id_is_not_found_before_anything_is_logged(history: History) -> None:
    before = history.vault.head.seq
    with pytest.raises(NotFoundError):
        history.dora.customer_report("alice")
    assert history.vault.head.seq == before


# -- known defects ----------------------------------------------------------------------------


def test_a_refused_report_attempt_shows_in_the_customers_history(history: History) -> None:
    with pytest.raises(AccessDeniedError):
        history.olga.customer_report(history.alice)
    report = history.dora.customer_report(history.alice)
    assert ("olga", "operator", "customer.report", None, "denied", None, None) in [
        seen(h) for h in report["history"]
    ]


def test_a_multi_line_value_stays_in_its_table_row(history: History) -> None:
    address = "1 Rabbit Hole\nWonderland"
    history.olga.update(history.alice, history.rec_profile, {"address": address}, purpose="service")
    md = render_markdown(history.dora.customer_report(history.alice))
    records = md.split("## Records", 1)[1].split("## Who accessed your data", 1)[0]
    stray = [line for line in records.splitlines() if line and not line.startswith(("|", "#"))]
    assert stray == []


# -- both data stores ------------------------------------------------------------------------


def test_report_on_either_data_store_matches_the_script(
    make_vault: Callable[..., Vault],
) -> None:
    clock = SteppedClock(T0)
    h = build_history(make_vault(clock=clock), clock)
    report = h.dora.customer_report(h.alice)
    assert [seen(item) for item in report["history"]] == h.about[h.alice] + h.report_entries(
        "dora", "dpo"
    )
    assert checkpoint_from_json(report["checkpoint"]).verify(h.vault.public_key)
    for item in report["history"]:
        entry = json.loads(item["line"])
        member = f',"hash":"{entry["hash"]}"'
        body = item["line"].replace(member, "").encode("utf-8")
        assert hashlib.sha256(b"shredvault/log/v1\n" + body).hexdigest() == entry["hash"]
    h.clock.advance(minutes=1)
    receipt = h.admin.shred(h.alice, reason="customer asked").to_json()
    gone = h.dora.customer_report_from_receipt(receipt)
    assert [seen(item) for item in gone["history"]] == [
        *h.about[h.alice],
        *h.report_entries("dora", "dpo"),
        *_shred_entries(h),
        ("dora", "dpo", "customer.report", "subject-access", "ok", None, None),
    ]
    assert checkpoint_from_json(gone["checkpoint"]).verify(h.vault.public_key)
    assert gone["chain"]["last_seq"] == h.vault.head.seq
