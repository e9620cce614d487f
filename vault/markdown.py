"""Reports rendered as Markdown for people: every value escaped for where it lands."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .canonical import canonical

__all__ = ["render_markdown"]


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
