"""The inspector's audit report (``Session.audit_report``) against a scripted history.

The script (on an injected clock, minute ``m`` = ``T0 + m`` minutes) creates principals
that end up active, expiring, expired and revoked, custom roles in each state,
customers that are active, held, past retention and shredded (one before and one after
a backup), two backups (one expired by report time) and a denial per principal; the
report is then taken at minute 120 and compared with what the script implies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shredvault.vault import (
    AccessDeniedError,
    Auditor,
    Role,
    Session,
    Vault,
    parse_public_key,
    render_markdown,
)
from shredvault.vault.checkpoint import checkpoint_from_json

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
REPORT_MINUTE = 120
PASSPHRASE = b"tidal quartz ember 4410"
FIELDS = ["address", "name", "phone"]
VALUES = {
    "alice": {"name": "Alice Liddell", "phone": "+44 7700 900001", "address": "1 Rabbit Hole"},
    "bob": {"name": "Robert Tables", "phone": "+1 555 0100", "address": "42 Drop Street"},
    "dan": {"name": "Daniel Gone", "phone": "+49 30 901820", "address": "Erasure Allee 7"},
    "fay": {"name": "Fay Vanish", "phone": "+33 1 7000 0000", "address": "Rue du Néant 3"},
}


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SteppedClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, minute: float) -> None:
        self.now = at(minute)


@dataclass
class History:
    vault: Vault
    admin: Session
    olga: Session  # operator
    ada: Session  # auditor
    tokens: dict[str, str]
    customers: dict[str, str]
    backups: list[dict[str, Any]]  # manifests, oldest first


# name -> (role, expires): the states the report must show at minute 120.
PRINCIPALS = {
    "ada": ("auditor", None),
    "carl": ("contractor", at(5 * 24 * 60)),  # in 5 days: expiring
    "dora": ("dpo", None),
    "eve": ("operator", at(60)),  # expired at minute 60
    "nina": ("auditor", None),  # never logs in
    "olga": ("operator", None),
    "rob": ("operator", None),  # revoked at minute 6
    "tess": ("operator", at(60 * 24 * 60)),  # in 60 days: beyond the 30-day horizon
}
ROLES = [
    Role.build("dpo", actions=["export", "list"]),
    Role.build(
        "contractor",
        actions=["read", "list"],
        purposes=["service"],
        expires=rfc3339(at(10 * 24 * 60)),  # in 10 days: expiring
    ),
    Role.build("legacy", actions=["read"], expires=rfc3339(at(-24 * 60))),  # expired
    Role.build("seasonal", actions=["list"], expires=rfc3339(at(90 * 24 * 60))),
]


def build_history(vault: Vault, clock: SteppedClock, backup_dir: Path | None) -> History:
    """Run the script; ``backup_dir`` None leaves out the two backups."""
    admin = vault.admin()
    vault.declare_kind("profile", fields=FIELDS, purposes=["service", "billing"])
    for role in ROLES:
        admin.add_role(role)
    tokens = {
        name: admin.add_principal(name, role=role, expires=expires)
        for name, (role, expires) in PRINCIPALS.items()
    }

    clock.at(1)
    s = {n: vault.login(tokens[n]) for n in ("ada", "carl", "dora", "eve", "olga", "rob")}
    clock.at(5)
    s["olga"] = vault.login(tokens["olga"])  # her last login
    clock.at(6)
    admin.revoke_principal("rob")

    clock.at(10)
    olga = s["olga"]
    cids = {name: olga.add_customer() for name in ("alice", "bob", "dan", "fay")}
    rids = olga.put_many([(cids[n], "profile", VALUES[n]) for n in VALUES], purpose="service")
    cids["cara"] = admin.add_customer(retain_until=at(-30 * 24 * 60))  # past retention
    cids["erin"] = admin.add_customer()
    cids["gus"] = admin.add_customer(retain_until=at(365 * 24 * 60))
    clock.at(20)
    admin.hold(cids["erin"])

    clock.at(25)
    admin.shred(cids["fay"], reason="customer request")  # before both backups
    manifests = []
    if backup_dir is not None:
        clock.at(30)
        manifests.append(admin.backup(str(backup_dir / "kept.tar")))
        clock.at(31)
        # Expires after ~14 minutes: expired by report time.
        manifests.append(admin.backup(str(backup_dir / "short.tar"), expires_days=0.01))
    clock.at(40)
    admin.shred(cids["dan"], reason="retention ended")  # after both backups

    clock.at(50)
    denials: list[Callable[[], object]] = [
        lambda: s["carl"].put(cids["alice"], "profile", {"name": "x"}, purpose="service"),
        lambda: s["carl"].get(cids["alice"], rids[0], purpose="billing"),
        lambda: s["ada"].list_records(cids["bob"], purpose="service"),
        lambda: s["rob"].list_customers(),
        lambda: vault.login("svp_000000000000_not-a-real-token"),
    ]
    for deny in denials:
        with pytest.raises(AccessDeniedError):
            deny()
    clock.at(70)
    with pytest.raises(AccessDeniedError):
        s["eve"].list_customers()  # expired at minute 60

    clock.at(REPORT_MINUTE)
    return History(vault, admin, olga, s["ada"], tokens, cids, manifests)


@pytest.fixture
def history(tmp_path: Path, keyfile: Path) -> Iterator[History]:
    clock = SteppedClock()
    vault = Vault.create(tmp_path / "vault", keyfile=keyfile, clock=clock)
    try:
        yield build_history(vault, clock, tmp_path)
    finally:
        vault.close()


@pytest.fixture
def report(history: History) -> dict[str, Any]:
    return history.ada.audit_report()


# -- sections ------------------------------------------------------------------------------------


def test_principals_with_state_expiry_and_last_login(report: dict[str, Any]) -> None:
    login_1, login_5 = rfc3339(at(1)), rfc3339(at(5))
    expected = [
        ("ada", "auditor", None, "active", login_1),
        ("carl", "contractor", rfc3339(at(5 * 24 * 60)), "expiring", login_1),
        ("dora", "dpo", None, "active", login_1),
        ("eve", "operator", rfc3339(at(60)), "expired", login_1),
        ("nina", "auditor", None, "active", None),
        ("olga", "operator", None, "active", login_5),
        ("rob", "operator", None, "revoked", login_1),
        ("tess", "operator", rfc3339(at(60 * 24 * 60)), "active", None),
    ]
    got = [
        (p["name"], p["role"], p["expires"], p["state"], p["last_login"])
        for p in report["principals"]
    ]
    assert got == expected


def test_custom_roles_with_their_state(report: dict[str, Any]) -> None:
    got = [(r["name"], r["actions"], r["purposes"], r["state"]) for r in report["roles"]]
    assert got == [
        ("contractor", ["list", "read"], ["service"], "expiring"),
        ("dpo", ["export", "list"], None, "active"),
        ("legacy", ["read"], None, "expired"),
        ("seasonal", ["list"], None, "active"),
    ]


def test_customer_counts(report: dict[str, Any]) -> None:
    assert report["customers"] == {
        "active": 5,  # alice, bob, cara, erin, gus
        "shredding": 0,
        "shredded": 2,  # fay, dan
        "legal_hold": 1,  # erin
        "past_retention": 1,  # cara
    }
    assert report["shreds"] == 2


def test_denials_by_actor(report: dict[str, Any]) -> None:
    assert report["denials_by_actor"] == {
        "ada": 1,
        "carl": 2,
        "eve": 1,
        "rob": 1,
        "unknown": 1,
    }


def test_keys_section_counts_backup_key_copies(report: dict[str, Any]) -> None:
    keys = report["keys"]
    assert keys["active_epoch"] == 1
    assert keys["key_source"] == "keyfile" and keys["kdf"] is None
    assert keys["deks_per_epoch"] == {"1": 5}  # the shredded customers' DEKs are gone
    assert keys["violations"] == [] and keys["last_rotation"] is None
    # dan was shredded after both backups; only the unexpired one still holds his keys.
    assert keys["backup_key_copies"] == 1


def test_backups_listed_with_their_clock(history: History, report: dict[str, Any]) -> None:
    kept, short = history.backups
    got = [
        (b["id"], b["created"], b["expires"], b["expired"], b["shredded_since"])
        for b in report["backups"]
    ]
    assert got == [
        (kept["backup"], rfc3339(at(30)), None, False, 1),
        (short["backup"], rfc3339(at(31)), rfc3339(at(31 + 0.01 * 24 * 60)), True, 1),
    ]
    assert [b["seq"] for b in report["backups"]] == [kept["seq"], short["seq"]]


def test_log_verifies_and_names_a_signed_checkpoint(
    history: History, report: dict[str, Any]
) -> None:
    log = report["log"]
    assert log["ok"] is True and log["reason"] is None
    assert parse_public_key(log["public_key"]) == history.vault.public_key
    checkpoint = checkpoint_from_json(log["latest_checkpoint"])
    assert checkpoint.verify(history.vault.public_key)
    assert log["last_checkpoint"] <= checkpoint.seq <= history.vault.head.seq
    assert report["checkpoints"] >= 5  # create, 2 shreds, 2 backups, at least
    assert report["generated"] == rfc3339(at(REPORT_MINUTE))


def test_verification_covers_the_log_up_to_the_report(history: History) -> None:
    before = history.vault.head.seq
    report = history.ada.audit_report()
    # keys.status and backup.list are logged before the chain is verified.
    assert report["log"]["entries"] == before + 2


def test_report_is_logged_with_its_lookups(history: History) -> None:
    before = history.vault.head.seq
    history.ada.audit_report()
    with Auditor.open(history.vault.path) as auditor:
        logged = [
            (e["actor"], e["action"], e["outcome"]) for e in auditor.entries(since=before + 1)
        ]
    assert logged == [
        ("ada", "keys.status", "ok"),
        ("ada", "backup.list", "ok"),
        ("ada", "audit.report", "ok"),
    ]


# -- markdown -------------------------------------------------------------------------------------


def test_markdown_carries_the_key_figures(history: History, report: dict[str, Any]) -> None:
    md = render_markdown(report)
    assert md.startswith(f"# Audit report — vault {history.vault.vault_id}")
    assert "- chain: **verifies**" in md
    assert f"{report['log']['entries']} entries" in md
    for line in (
        f"| eve | operator | expired | {rfc3339(at(60))} | {rfc3339(at(1))} |",
        "| rob | operator | revoked |  | ",
        "| nina | auditor | active |  |  |",
        "| contractor | list,read | all | service | expiring |",
        "| legacy | read | all | all | expired |",
        "| carl | 2 |",
        "| unknown | 1 |",
    ):
        assert line in md, line
    assert "backup key copies (shredded customers whose keys unexpired backups hold): 1" in md
    assert (
        "- active 5, shredded 2 (in progress 0), under legal hold 1, past retention 1; "
        "shreds logged 2" in md
    )
    for manifest in history.backups:
        assert manifest["backup"] in md


def test_key_ages_come_with_the_policy_limits(history: History, report: dict[str, Any]) -> None:
    keys = report["keys"]
    assert keys["policy"] == {"max_kek_age_days": 365, "max_dek_age_days": 730}
    md = render_markdown(report)
    kek_line = next(line for line in md.splitlines() if line.startswith("- active KEK epoch"))
    assert f"{keys['active_epoch_age_days']} days old" in kek_line
    assert kek_line.endswith("(policy: at most 365 days)")
    dek_line = next(line for line in md.splitlines() if line.startswith("- oldest DEK"))
    assert f"{keys['oldest_dek_age_days']} days old" in dek_line
    assert dek_line.endswith("(policy: at most 730 days)")
    assert "- unlock: keyfile (a 32-byte key file: no key derivation); re-hash due: no" in md


def test_customers_held_and_past_retention_are_named_by_id(
    history: History, report: dict[str, Any]
) -> None:
    cids = history.customers
    assert report["legal_hold_ids"] == [cids["erin"]]
    assert report["past_retention_ids"] == [cids["cara"]]
    md = render_markdown(report)
    assert f"- under legal hold: {cids['erin']}" in md
    assert f"- past retention (active, kept-until date passed): {cids['cara']}" in md


def test_no_customer_held_or_past_retention_reads_none(tmp_path: Path, keyfile: Path) -> None:
    with Vault.create(tmp_path / "empty", keyfile=keyfile, clock=SteppedClock()) as vault:
        vault.admin().add_customer()
        report = vault.admin().audit_report()
    assert report["legal_hold_ids"] == [] and report["past_retention_ids"] == []
    md = render_markdown(report)
    assert "- under legal hold: none" in md
    assert "- past retention (active, kept-until date passed): none" in md


# -- what it never holds ------------------------------------------------------------------------


def _texts(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False) + "\n" + render_markdown(report)


def test_no_token_keyfile_or_plaintext_in_either_rendering(
    history: History, report: dict[str, Any], keyfile: Path
) -> None:
    text = _texts(report)
    secrets = [*history.tokens.values(), *(t.split("_", 2)[2] for t in history.tokens.values())]
    secrets += [keyfile.read_bytes().hex(), keyfile.read_bytes().hex().upper()]
    values = [v for fields in VALUES.values() for v in fields.values()]
    assert [s for s in secrets + values if s in text] == []
    assert "token_hash" not in text


def test_no_passphrase_in_a_passphrase_vaults_report(tmp_path: Path) -> None:
    clock = SteppedClock()
    with Vault.create(tmp_path / "vault", passphrase=PASSPHRASE, clock=clock) as vault:
        report = vault.admin().audit_report()
    text = _texts(report)
    assert report["keys"]["key_source"] == "passphrase"
    assert report["keys"]["kdf"] is not None
    assert PASSPHRASE.decode() not in text and PASSPHRASE.hex() not in text


def test_markdown_gives_the_kdf_parameters_in_words(tmp_path: Path) -> None:
    with Vault.create(tmp_path / "vault", passphrase=PASSPHRASE, clock=SteppedClock()) as vault:
        report = vault.admin().audit_report()
    kdf, recommended = report["keys"]["kdf"], report["keys"]["kdf_recommended"]
    md = render_markdown(report)
    unlock = next(line for line in md.splitlines() if line.startswith("- unlock:"))

    def words(p: dict[str, int]) -> str:
        memory = f"{p['m'] // 1024} MiB" if p["m"] % 1024 == 0 else f"{p['m']} KiB"
        return f"time cost {p['t']}, memory {memory}, parallelism {p['p']}"

    assert unlock == (
        f"- unlock: passphrase, Argon2id {words(kdf)} (recommended: {words(recommended)}); "
        f"re-hash due: {'yes' if report['keys']['rehash_due'] else 'no'}"
    )
    assert "{" not in unlock and "'t'" not in unlock


# -- who may ask ----------------------------------------------------------------------------------


def test_admin_gets_the_same_figures(history: History, report: dict[str, Any]) -> None:
    again = history.admin.audit_report()
    for section in ("principals", "roles", "customers", "shreds", "backups"):
        assert again[section] == report[section], section


def test_operator_is_denied(history: History) -> None:
    before = history.vault.head.seq
    with pytest.raises(AccessDeniedError):
        history.olga.audit_report()
    with Auditor.open(history.vault.path) as auditor:
        logged = [(e["actor"], e["outcome"]) for e in auditor.entries(since=before + 1)]
    assert logged == [("olga", "denied")]


def test_operator_denial_is_logged_as_audit_report(history: History) -> None:
    before = history.vault.head.seq
    with pytest.raises(AccessDeniedError):
        history.olga.audit_report()
    with Auditor.open(history.vault.path) as auditor:
        logged = [(e["action"], e["outcome"]) for e in auditor.entries(since=before + 1)]
    assert logged == [("audit.report", "denied")]


def test_audit_report_on_either_data_store(make_vault: Callable[..., Vault]) -> None:
    # Without the backups: backing up a PostgreSQL vault fails on its own (known, reported
    # in tests/test_backup_restore.py BUG_PG_BACKUP).
    clock = SteppedClock()
    h = build_history(make_vault(clock=clock), clock, None)
    report = h.ada.audit_report()
    assert report["log"]["ok"] is True
    assert report["customers"] == {
        "active": 5, "shredding": 0, "shredded": 2, "legal_hold": 1, "past_retention": 1
    }  # fmt: skip
    assert report["backups"] == [] and report["keys"]["backup_key_copies"] == 0
    assert report["legal_hold_ids"] == [h.customers["erin"]]
    assert report["past_retention_ids"] == [h.customers["cara"]]
    assert report["denials_by_actor"] == {"ada": 1, "carl": 2, "eve": 1, "rob": 1, "unknown": 1}
    assert [p["state"] for p in report["principals"]] == [
        "active", "expiring", "active", "expired", "active", "active", "revoked", "active",
    ]  # fmt: skip
