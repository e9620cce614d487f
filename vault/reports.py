"""Answering customers and inspectors: the subject access report, the breach-scope
query and the audit report. Each runs on the vault and its log and is logged itself.

* :func:`customer_report` — everything the vault holds about one customer, decrypted,
  with every log entry about them and a signed checkpoint covering the report's own
  entries (admin, or a role with ``export``); :func:`customer_report_from_receipt`
  the same for a shredded customer, through its erasure receipt.
* :func:`audit_query` — which customers and records an actor (or a role, an action, a
  window) touched, for notifying the people affected (admin or auditor; ids and
  metadata only, never plaintext).
* :func:`audit_report` — one page for an inspector: principals and roles, keys against
  policy, backups and the key-copy clock, checkpoints, chain verification, shreds,
  holds, retention, denials.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from .access import normalize_expiry
from .audit import format_public_key
from .canonical import canonical
from .checkpoint import Checkpoint, checkpoint_from_json, latest_checkpoint
from .clock import format_ts
from .errors import SchemaError, ShreddedError, VerificationError
from .log import export_line
from .receipt import ReceiptReport, verify_receipt
from .store import LogHead, checkpoints, customers, log, principals, records, roles
from .vault import _read_head

if TYPE_CHECKING:
    from .session import Session
    from .vault import Tx

__all__ = [
    "audit_query",
    "audit_report",
    "customer_report",
    "customer_report_from_receipt",
    "render_markdown",
]

SUBJECT_ACCESS = "subject-access"
_QUERY_LIMIT = 100_000


def customer_report(session: Session, customer_id: str) -> dict[str, Any]:
    """Everything the vault holds about ``customer_id``, for the customer.

    The right of access overrides the purposes declared for kinds, so records are read
    for the purpose ``subject-access``; each read is logged (one entry per record), and
    a checkpoint is signed over the report's own entries. A role limited in kinds,
    fields or purposes gets only what it may see (``Role.withholds``, ``Role.visible``);
    ``withheld`` counts the rest, and a summary entry logs it. Raises NotFoundError, or
    ShreddedError (a shredded customer is answered by its erasure receipt).
    """
    from .vault import Refusal

    vault = session._vault
    keys_of = vault._keys

    def work(tx: Tx) -> dict[str, Any]:
        row = tx.conn.execute(select(customers).where(customers.c.id == customer_id)).first()
        # The subject tag (when the customer still has one) goes on a refusal too, so a
        # refused report attempt shows in that customer's own history.
        tags = keys_of.store.subject_tags([customer_id]) if row is not None else {}
        tag_bytes = tags.get(customer_id)
        role = session._gate(
            tx.conn,
            "export",
            "customer.report",
            subject=None if tag_bytes is None else tag_bytes.hex(),
        )
        if row is None:
            raise session._not_found("customer.report", customer_id)
        if row.state != "active":
            ev = session._event(
                "customer.report", outcome="error", detail={"reason_code": "customer_shredded"}
            )
            raise Refusal(
                ShreddedError(
                    f"customer {customer_id} was shredded: report through its erasure receipt"
                ),
                ev,
            )
        ck = keys_of.customer_keys([customer_id])[customer_id]
        tag = ck.subject_tag.hex()
        rows = tx.conn.execute(
            select(records).where(records.c.customer_id == customer_id).order_by(records.c.created)
        ).all()
        held = []
        withheld: Counter[str] = Counter()
        partial = 0
        for r in rows:
            # What the role may not see is never decrypted (docs/access-control.md).
            why = role.withholds(str(r.kind), vault.kind(str(r.kind)).purposes)
            if why is not None:
                withheld[why] += 1
                continue
            plain = session._decrypt({customer_id: ck}, customer_id, str(r.id), r._mapping)
            fields = role.visible(str(r.kind), plain)
            partial += len(fields) < len(plain)
            held.append(
                {
                    "id": r.id,
                    "kind": r.kind,
                    "fields": fields,
                    "version": r.version,
                    "created": r.created,
                    "updated": r.updated,
                }
            )
        history = [
            _entry_view(body, digest)
            for body, digest in tx.conn.execute(
                select(log.c.body, log.c.hash).where(log.c.subject == tag).order_by(log.c.seq)
            )
        ]
        for item in held:
            tx.log(
                session._event(
                    "customer.report",
                    subject=tag,
                    record=str(item["id"]),
                    purpose=SUBJECT_ACCESS,
                    detail={"kind": item["kind"], "fields": sorted(item["fields"])},
                )
            )
        if not held or withheld:
            summary: dict[str, Any] = {"records": len(held)}
            if withheld:
                summary["withheld"] = dict(sorted(withheld.items()))
            tx.log(
                session._event(
                    "customer.report", subject=tag, purpose=SUBJECT_ACCESS, detail=summary
                )
            )
        tx.checkpoint = True
        return {
            "customer": {
                "id": row.id,
                "ref": row.ref,
                "state": row.state,
                "consent": json.loads(row.consent),
                "retain_until": row.retain_until,
                "legal_hold": bool(row.legal_hold),
                "created": row.created,
            },
            "subject_tag": tag,
            "records": held,
            "withheld": {
                "records": sum(withheld.values()),
                "reasons": dict(sorted(withheld.items())),
                "records_with_fields_withheld": partial,
            },
            "history": history,
            "report_entries": len(tx.events),
            "first_report_seq": tx.head.seq + 1,
        }

    return _complete(session, vault._transact(work))


def customer_report_from_receipt(session: Session, receipt: dict[str, Any]) -> dict[str, Any]:
    """The subject access report of a shredded customer, through its erasure receipt.

    Once shredded, the vault can no longer link the customer to its log entries: the
    receipt's subject tag does. The receipt must verify against this vault's public key
    and its shred entry must be the one in this vault's log (else VerificationError,
    logged). The report holds the receipt, every log entry with the receipt's subject
    tag (with its exact line), no records (they are unreadable), and a signed checkpoint
    covering the report's own ``customer.report`` entry (subject: the tag; the customer
    id is never logged). Admin, or a role with ``export``.
    """
    from .vault import Refusal

    vault = session._vault
    if isinstance(receipt, dict):
        checked = verify_receipt(receipt, public_key=vault.public_key)
    else:
        checked = ReceiptReport(False, "malformed", "a receipt is a JSON object")
    if checked.ok and checked.vault != vault.vault_id:
        checked = ReceiptReport(False, "foreign vault", "the receipt is from another vault")
    tag = str(receipt["subject_tag"]) if checked.ok else None

    def refuse(reason: str, message: str) -> Refusal:
        ev = session._event(
            "customer.report",
            outcome="error",
            subject=tag,
            detail={"reason_code": "receipt_not_verified", "verification": reason},
        )
        return Refusal(
            VerificationError(f"the receipt does not verify: {message}", reason=reason), ev
        )

    def work(tx: Tx) -> dict[str, Any]:
        # An unverified receipt's tag is unauthenticated: its refusal names no subject.
        session._gate(tx.conn, "export", "customer.report", subject=tag)
        if not checked.ok or tag is None or checked.seq is None:
            raise refuse(str(checked.reason), checked.message)
        seq = checked.seq
        head = checkpoint_from_json(receipt["checkpoint"]).head
        stored = tx.conn.execute(select(log.c.hash).where(log.c.seq == seq)).scalar()
        if stored != head:
            raise refuse("forked", f"this vault's log does not hold its shred entry at seq {seq}")
        history = [
            _entry_view(body, digest)
            for body, digest in tx.conn.execute(
                select(log.c.body, log.c.hash).where(log.c.subject == tag).order_by(log.c.seq)
            )
        ]
        tx.log(
            session._event(
                "customer.report",
                subject=tag,
                purpose=SUBJECT_ACCESS,
                detail={"records": 0, "receipt_seq": seq},
            )
        )
        tx.checkpoint = True
        return {
            "customer": {
                "id": checked.customer,
                "state": "shredded",
                "shredded_at": checked.shredded_at,
                "shred_seq": seq,
            },
            "subject_tag": tag,
            "records": [],
            "withheld": {"records": 0, "reasons": {}, "records_with_fields_withheld": 0},
            "receipt": dict(receipt),
            "history": history,
            "report_entries": len(tx.events),
            "first_report_seq": tx.head.seq + 1,
        }

    return _complete(session, vault._transact(work))


def _complete(session: Session, report: dict[str, Any]) -> dict[str, Any]:
    """Add the report's own log entries (their seq range was left in ``report``), the
    chain state and the signed checkpoint covering them, read together."""
    vault = session._vault
    first = int(report.pop("first_report_seq"))
    count = int(report.pop("report_entries"))

    def read(conn: Connection) -> tuple[list[dict[str, Any]], LogHead, Checkpoint | None]:
        own = [
            _entry_view(body, digest)
            for body, digest in conn.execute(
                select(log.c.body, log.c.hash)
                .where(log.c.seq >= first, log.c.seq < first + count)
                .order_by(log.c.seq)
            )
        ]
        return own, _read_head(conn), latest_checkpoint(conn)

    own, head, checkpoint = vault._data.read(read)
    report["history"] += own
    report.update(
        {
            "type": "shredvault-subject-access-report",
            "v": 1,
            "vault": vault.vault_id,
            "generated": format_ts(vault._clock()),
            "checkpoint": None if checkpoint is None else checkpoint.to_json(),
            "chain": {
                "last_seq": head.seq,
                "head": head.hash,
                "checkpoint_seq": None if checkpoint is None else checkpoint.seq,
            },
            "public_key": format_public_key(vault.public_key),
            "how_to_check": (
                "Each history entry carries its exact log line: its SHA-256 (with the "
                "prefix 'shredvault/log/v1\\n' over the line without 'hash') must equal "
                "'hash'. The checkpoint is signed with the vault's public key and covers "
                "the log up to its seq, which includes this report's own entries; an "
                "auditor can confirm the entries sit in that chain from the vault's log "
                "export (docs/log-format.md)."
            ),
        }
    )
    return report


def _entry_view(body: bytes, digest: str) -> dict[str, Any]:
    entry = json.loads(body)
    detail = entry.get("detail") or {}
    return {
        "seq": entry["seq"],
        "ts": entry["ts"],
        "actor": entry["actor"],
        "role": entry["role"],
        "action": entry["action"],
        "purpose": entry["purpose"],
        "outcome": entry["outcome"],
        "record": entry["record"],
        "fields": detail.get("fields"),
        "line": export_line(bytes(body), digest).decode("utf-8"),
    }


def audit_query(
    session: Session,
    *,
    actor: str | None = None,
    role: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """The breach-scope question: which customers and records were touched (by an
    actor, a role, an action, an outcome, in a time window ``[since, until)``), with
    counts per action. Ids and metadata only. Logged as ``audit.query``."""
    if outcome is not None and outcome not in {"ok", "denied", "error"}:
        raise SchemaError("outcome is one of ok, denied, error")
    vault = session._vault
    since_ts = normalize_time("since", since)
    until_ts = normalize_time("until", until)
    filters = {
        k: v
        for k, v in {
            "actor": actor,
            "role": role,
            "action": action,
            "outcome": outcome,
            "since": since_ts,
            "until": until_ts,
        }.items()
        if v is not None
    }
    stmt = select(log.c.seq, log.c.subject, log.c.record, log.c.action, log.c.ts, log.c.body)
    if actor is not None:
        stmt = stmt.where(log.c.actor == actor)
    if action is not None:
        stmt = stmt.where(log.c.action == action)
    if outcome is not None:
        stmt = stmt.where(log.c.outcome == outcome)
    if since_ts is not None:
        stmt = stmt.where(log.c.ts >= since_ts)
    if until_ts is not None:
        stmt = stmt.where(log.c.ts < until_ts)
    stmt = stmt.order_by(log.c.seq)
    if role is None:
        stmt = stmt.limit(_QUERY_LIMIT + 1)
    # The role is inside the hashed body, not a column: stream the candidates and keep
    # those whose entry names the role, up to the limit (a cheap byte test first, then
    # the parsed field, since a detail could hold the same text).
    needle = None if role is None else b'"role":' + canonical({"r": role})[5:-1]

    def work(tx: Tx) -> list[Any]:
        session._gate(tx.conn, "audit", "audit.query")
        kept: list[Any] = []
        result = tx.conn.execute(stmt, execution_options={"stream_results": True})
        for batch in result.partitions(5_000):
            for r in batch:
                if needle is not None and (
                    needle not in r.body or json.loads(r.body)["role"] != role
                ):
                    continue
                kept.append(r)
            if len(kept) > _QUERY_LIMIT:
                result.close()
                break
        tx.log(session._event("audit.query", detail={"filters": filters}))
        return kept

    rows = vault._transact(work)
    truncated = len(rows) > _QUERY_LIMIT
    rows = rows[:_QUERY_LIMIT]
    per_action = Counter(str(r.action) for r in rows)
    tags = {str(r.subject) for r in rows if r.subject}
    known = vault._keys.store.customers_for_tags([bytes.fromhex(t) for t in tags])
    by_tag = {tag.hex(): cid for tag, cid in known.items()}
    touched: dict[str, dict[str, Any]] = {}
    unlinked = 0
    for r in rows:
        if not r.subject:
            continue
        cid = by_tag.get(str(r.subject))
        if cid is None:
            unlinked += 1
            continue
        item = touched.setdefault(cid, {"customer": cid, "records": set(), "actions": Counter()})
        if r.record:
            item["records"].add(str(r.record))
        item["actions"][str(r.action)] += 1
    return {
        "filters": filters,
        "entries": len(rows),
        "truncated": truncated,
        "first_seq": rows[0].seq if rows else None,
        "last_seq": rows[-1].seq if rows else None,
        "per_action": dict(sorted(per_action.items())),
        "customers": [
            {
                "customer": v["customer"],
                "records": sorted(v["records"]),
                "actions": dict(sorted(v["actions"].items())),
            }
            for v in sorted(touched.values(), key=lambda x: str(x["customer"]))
        ],
        "entries_about_shredded_customers": unlinked,
    }


def audit_report(session: Session, *, expiring_days: int = 30) -> dict[str, Any]:
    """One page for an inspector. Logged as ``audit.report``."""
    from .backup import backup_list
    from .rotate import KeyPolicy

    # The report's own gate comes first: a refused report is logged as ``audit.report``,
    # not as whichever part of it (key status, backups) happened to be asked for first.
    session._authorize("audit", "audit.report")
    vault = session._vault
    now_dt = vault._clock()
    now = format_ts(now_dt)
    soon = format_ts(now_dt + timedelta(days=expiring_days))
    policy = KeyPolicy()
    status = session.key_status(policy)
    backup_rows = backup_list(session)
    verification = vault.verify_log()

    def work(tx: Tx) -> dict[str, Any]:
        session._gate(tx.conn, "audit", "audit.report")
        conn = tx.conn
        last_use = dict(
            conn.execute(
                select(log.c.actor, func.max(log.c.ts))
                .where(log.c.action == "auth.login", log.c.outcome == "ok")
                .group_by(log.c.actor)
            ).all()
        )
        people = []
        for p in conn.execute(select(principals).order_by(principals.c.name)):
            state = "revoked" if p.revoked else "active"
            if not p.revoked and p.expires is not None:
                state = (
                    "expired" if now >= p.expires else ("expiring" if soon >= p.expires else state)
                )
            people.append(
                {
                    "name": p.name,
                    "role": p.role,
                    "expires": p.expires,
                    "state": state,
                    "last_login": last_use.get(p.name),
                }
            )
        custom_roles = []
        for r in conn.execute(select(roles.c.spec).order_by(roles.c.name)):
            spec = json.loads(r.spec)
            expires = spec.get("expires")
            spec["state"] = (
                "expired"
                if expires and now >= expires
                else "expiring"
                if expires and soon >= expires
                else "active"
            )
            custom_roles.append(spec)
        counts: dict[Any, Any] = dict(
            conn.execute(select(customers.c.state, func.count()).group_by(customers.c.state)).all()
        )
        # Ids only: the inspector sees who is held or overdue, never their details.
        held = [
            str(cid)
            for cid in conn.execute(
                select(customers.c.id)
                .where(customers.c.legal_hold.is_(True))
                .order_by(customers.c.id)
            ).scalars()
        ]
        past = [
            str(cid)
            for cid in conn.execute(
                select(customers.c.id)
                .where(customers.c.state == "active", customers.c.retain_until < now)
                .order_by(customers.c.id)
            ).scalars()
        ]
        shreds = conn.execute(
            select(func.count())
            .select_from(log)
            .where(log.c.action == "customer.shred", log.c.outcome == "ok")
        ).scalar_one()
        denials: dict[Any, Any] = dict(
            conn.execute(
                select(log.c.actor, func.count())
                .where(log.c.outcome == "denied")
                .group_by(log.c.actor)
            ).all()
        )
        n_checkpoints = conn.execute(select(func.count()).select_from(checkpoints)).scalar_one()
        tx.log(session._event("audit.report"))
        return {
            "principals": people,
            "roles": custom_roles,
            "customers": {
                "active": int(counts.get("active", 0)),
                "shredding": int(counts.get("shredding", 0)),
                "shredded": int(counts.get("shredded", 0)),
                "legal_hold": len(held),
                "past_retention": len(past),
            },
            "legal_hold_ids": held,
            "past_retention_ids": past,
            "shreds": int(shreds),
            "denials_by_actor": {str(k): int(v) for k, v in sorted(denials.items())},
            "checkpoints": int(n_checkpoints),
        }

    body = vault._transact(work)
    latest = vault.latest_checkpoint()
    return {
        "type": "shredvault-audit-report",
        "v": 1,
        "vault": vault.vault_id,
        "generated": now,
        **body,
        "keys": {
            **status.to_json(),
            "policy": {
                "max_kek_age_days": policy.max_kek_age_days,
                "max_dek_age_days": policy.max_dek_age_days,
            },
        },
        "backups": [b.to_json() for b in backup_rows],
        "log": {
            **verification.to_json(),
            "latest_checkpoint": None if latest is None else latest.to_json(),
            "public_key": format_public_key(vault.public_key),
        },
    }


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable page for either report type."""
    if report.get("type") == "shredvault-subject-access-report":
        return _render_subject(report)
    return _render_audit(report)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out.append("| " + " | ".join("" if v is None else _cell(v) for v in row) + " |")
    return out


def _cell(value: Any) -> str:
    """A table cell: pipes escaped and line breaks as <br>, so one value stays in its row."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", "<br>").replace("\r", "<br>").replace("\n", "<br>")


def normalize_time(name: str, value: str | None) -> str | None:
    """A window bound as the log stores times (fixed-width RFC 3339 UTC), so text
    comparison is time comparison; garbage is a SchemaError, never a silent filter."""
    if value is None:
        return None
    try:
        return normalize_expiry(value)
    except SchemaError:
        raise SchemaError(f"--{name} must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z") from None


def _render_subject(r: dict[str, Any]) -> str:
    c = r["customer"]
    lines = [
        f"# What we hold about you — customer {c['id']}",
        "",
        f"Vault `{r['vault']}`, generated {r['generated']}.",
        "",
    ]
    if c["state"] == "shredded":
        lines += [
            "## Your data was erased",
            "",
            f"Your data was crypto-shredded on {c['shredded_at']} (log entry {c['shred_seq']}): "
            "the keys that could decrypt it were destroyed, so the vault can no longer read "
            "any of your records and holds none of your details. This report was made from "
            "your erasure receipt (in the appendix), which links you to the log entries "
            "below.",
            "",
        ]
    else:
        lines += ["## Your details", ""]
        lines += _table(
            ["field", "value"],
            [
                ("reference", c["ref"]),
                ("consent", json.dumps(c["consent"])),
                ("kept until", c["retain_until"]),
                ("since", c["created"]),
            ],
        )
        lines += ["", "## Records", ""]
        lines += _withheld_text(r.get("withheld"))
        for rec in r["records"]:
            lines += [f"### {rec['kind']} ({rec['id']}, version {rec['version']})", ""]
            lines += _table(["field", "value"], sorted(rec["fields"].items()))
            lines.append("")
    lines += ["## Who accessed your data", ""]
    lines += _table(
        ["seq", "when", "who", "role", "action", "purpose", "outcome", "fields"],
        [
            (
                h["seq"],
                h["ts"],
                h["actor"],
                h["role"],
                h["action"],
                h["purpose"],
                h["outcome"],
                ", ".join(h["fields"] or []),
            )
            for h in r["history"]
        ],
    )
    chain = r["chain"]
    lines += [
        "",
        "## How to check this report",
        "",
        r["how_to_check"],
        "",
        f"- vault public key: `{r['public_key']}`",
        f"- the log at report time: last seq {chain['last_seq']}, head `{chain['head']}`",
    ]
    cp = r["checkpoint"]
    if cp is None:
        lines += ["- no signed checkpoint yet", ""]
    else:
        body = cp["checkpoint"]
        lines += [
            f"- signed checkpoint: seq {body['seq']}, head `{body['head']}`, time {body['ts']}",
            f"- signature (Ed25519 over the exact checkpoint bytes below): `{cp['signature']}`",
            "",
            "Checkpoint bytes (signed exactly as shown, without a line break):",
            "",
            *_fenced(canonical(body).decode("utf-8"), "json"),
            "",
        ]
    lines += ["## Appendix: the exact log lines", ""]
    for h in r["history"]:
        lines += [f"### Entry {h['seq']}", "", *_fenced(h["line"], "json"), ""]
    if "receipt" in r:
        receipt = json.dumps(r["receipt"], indent=2, sort_keys=True, ensure_ascii=False)
        lines += ["## Appendix: your erasure receipt", "", *_fenced(receipt, "json"), ""]
    return "\n".join(lines)


def _withheld_text(withheld: dict[str, Any] | None) -> list[str]:
    """A warning that the report is incomplete: the role that made it may not see
    everything (counts and reason codes only)."""
    if not withheld or not (withheld["records"] or withheld["records_with_fields_withheld"]):
        return []
    reasons = ", ".join(f"{code}: {n}" for code, n in withheld["reasons"].items())
    return [
        "**This report is incomplete:** the role that made it may not see everything. "
        f"Records left out: {withheld['records']}" + (f" ({reasons})" if reasons else "") + "; "
        f"records shown with some fields left out: {withheld['records_with_fields_withheld']}.",
        "",
    ]


def _fenced(text: str, info: str) -> list[str]:
    """A fenced code block that ``text`` cannot close early: the fence is longer than
    any run of backticks inside it."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


def _render_audit(r: dict[str, Any]) -> str:
    log_state = r["log"]
    keys = r["keys"]
    policy = keys["policy"]
    lines = [
        f"# Audit report — vault {r['vault']}",
        "",
        f"Generated {r['generated']}.",
        "",
        "## Access log",
        "",
        f"- chain: **{'verifies' if log_state['ok'] else 'FAILS: ' + str(log_state['reason'])}** — "
        f"{log_state['entries']} entries, last signed checkpoint at seq "
        f"{log_state['last_checkpoint']}, "
        f"unsigned tail {log_state['unsigned_tail']}; {r['checkpoints']} checkpoints stored",
        f"- public key: `{log_state['public_key']}`",
        "",
        "## Principals",
        "",
    ]
    lines += _table(
        ["name", "role", "state", "expires", "last login"],
        [
            (p["name"], p["role"], p["state"], p["expires"], p["last_login"])
            for p in r["principals"]
        ],
    )
    lines += ["", "## Custom roles", ""]
    lines += _table(
        ["name", "actions", "kinds", "purposes", "state", "expires"],
        [
            (
                x["name"],
                ",".join(x["actions"]),
                ",".join(x["kinds"] or ["all"]),
                ",".join(x["purposes"] or ["all"]),
                x["state"],
                x["expires"],
            )
            for x in r["roles"]
        ],
    )
    lines += [
        "",
        "## Keys",
        "",
        f"- active KEK epoch {keys['active_epoch']}, {keys['active_epoch_age_days']} days old "
        f"(policy: at most {policy['max_kek_age_days']} days)",
        f"- oldest DEK {_days_text(keys['oldest_dek_age_days'])} "
        f"(policy: at most {policy['max_dek_age_days']} days)",
        f"- last rotation {keys['last_rotation'] or 'never'}",
        f"- unlock: {_unlock_text(keys)}; re-hash due: {'yes' if keys['rehash_due'] else 'no'}",
        f"- policy violations: {', '.join(keys['violations']) or 'none'}",
        "- backup key copies (shredded customers whose keys unexpired backups hold): "
        f"{keys['backup_key_copies']}",
        "",
        "## Backups",
        "",
    ]
    lines += _table(
        ["id", "created", "expires", "expired", "shredded since"],
        [
            (b["id"], b["created"], b["expires"], b["expired"], b["shredded_since"])
            for b in r["backups"]
        ],
    )
    c = r["customers"]
    lines += [
        "",
        "## Customers",
        "",
        f"- active {c['active']}, shredded {c['shredded']} (in progress {c['shredding']}), "
        f"under legal hold {c['legal_hold']}, past retention {c['past_retention']}; "
        f"shreds logged {r['shreds']}",
        f"- under legal hold: {_ids_text(r['legal_hold_ids'])}",
        f"- past retention (active, kept-until date passed): {_ids_text(r['past_retention_ids'])}",
        "",
        "## Denied accesses by actor",
        "",
    ]
    lines += _table(["actor", "denials"], sorted(r["denials_by_actor"].items()))
    lines.append("")
    return "\n".join(lines)


def _days_text(days: float | None) -> str:
    return "none yet" if days is None else f"{days} days old"


def _kdf_text(params: dict[str, int]) -> str:
    memory = params["m"]
    size = f"{memory // 1024} MiB" if memory % 1024 == 0 else f"{memory} KiB"
    return f"time cost {params['t']}, memory {size}, parallelism {params['p']}"


def _unlock_text(keys: dict[str, Any]) -> str:
    """How the vault unlocks, with its Argon2id parameters in words."""
    kdf = keys["kdf"]
    if kdf is None:
        return f"{keys['key_source']} (a 32-byte key file: no key derivation)"
    return (
        f"{keys['key_source']}, Argon2id {_kdf_text(kdf)} "
        f"(recommended: {_kdf_text(keys['kdf_recommended'])})"
    )


def _ids_text(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "none"
