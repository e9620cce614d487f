"""Reports rendered as Markdown for people: every value escaped for where it lands.

Values (field values, refs, reasons, names, anything a user or a file supplied) go
through :func:`md_text`, which makes them inert CommonMark inline text: the ASCII
punctuation that can start inline markup (``#&*<>[\\]^`{|}~``, and ``_`` outside a
word) is backslash-escaped, so no HTML tag, comment, entity, link, image, emphasis,
code span or table pipe can start; so is what would start a block if a value began a
line (``- ``, ``+ ``, ``1. ``, ``1) ``, ``===``). Line breaks become ``<br>`` (a value
stays in its paragraph or table cell) and other control and bidirectional characters
are shown as ``\\uXXXX``. Punctuation that is inert inline (``-.:/,@'"=;?%$+!()``) is kept,
so dates and ids stay readable in the Markdown source. :func:`md_code` makes a code span and
:func:`md_fenced` a fenced block that the value cannot close. Rendered to HTML by any
CommonMark renderer, no tag or attribute comes from a value (tests/test_markdown_safety.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from .canonical import canonical

__all__ = ["md_code", "md_fenced", "md_text", "render_markdown", "render_notice"]

# The ASCII punctuation that can start inline markup (CommonMark lets any ASCII
# punctuation be backslash-escaped); an underscore only where it is not inside a word
# (inside one it can neither open nor close emphasis); and what starts a block when a
# value begins a line (a list item, a setext underline, an ordered list "1. ").
_PUNCTUATION = re.compile(r"([#&*<>\[\\\]^`{|}~]|(?<![^\W_])_|_(?![^\W_]))")
_LEADING = re.compile(r"^(?:[-+=](?=[-+= ]|$)|\d{1,9}(?=[.)](?: |$)))")
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")
# C0/C1 controls (tab aside), DEL, and the bidirectional overrides and isolates.
_CONTROL = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def md_text(value: Any) -> str:
    """``value`` as inert CommonMark inline text (see the module docstring)."""
    text = _PUNCTUATION.sub(r"\\\1", _as_text(value)).replace("\t", " ")
    text = _LEADING.sub(
        lambda m: m.group() + "\\" if m.group()[0].isdigit() else "\\" + m.group(), text
    )
    text = _CONTROL.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text)
    return _LINE_BREAK.sub("<br>", text)


def md_code(value: Any) -> str:
    """``value`` as a code span its backticks cannot close (line breaks and controls
    shown as ``\\uXXXX``, since a code span holds one line)."""
    text = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", _as_text(value))
    text = _LINE_BREAK.sub(lambda m: "".join(f"\\u{ord(c):04x}" for c in m.group()), text)
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_fenced(text: str, info: str) -> list[str]:
    """A fenced code block that ``text`` cannot close early: the fence is longer than
    any run of backticks inside it."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable page for either report type."""
    if report.get("type") == "shredvault-subject-access-report":
        return _render_subject(report)
    return _render_audit(report)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out.append("| " + " | ".join(md_text(v) for v in row) + " |")
    return out


def _render_subject(r: dict[str, Any]) -> str:
    c = r["customer"]
    lines = [
        f"# What we hold about you — customer {md_text(c['id'])}",
        "",
        f"Vault {md_code(r['vault'])}, generated {md_text(r['generated'])}.",
        "",
    ]
    if c["state"] == "shredded":
        lines += [
            "## Your data was erased",
            "",
            f"Your data was crypto-shredded on {md_text(c['shredded_at'])} "
            f"(log entry {md_text(c['shred_seq'])}): "
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
        if r.get("consent_history"):
            lines += ["", "## Your consent over time", ""]
            lines += _table(
                ["when", "by", "channel", "consent"],
                [
                    (h["ts"], h["actor"], h["channel"], json.dumps(h["consent"]))
                    for h in r["consent_history"]
                ],
            )
        lines += ["", "## Records", ""]
        lines += _withheld_text(r.get("withheld"))
        for rec in r["records"]:
            lines += [
                f"### {md_text(rec['kind'])} ({md_text(rec['id'])}, "
                f"version {md_text(rec['version'])})",
                "",
            ]
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
        md_text(r["how_to_check"]),
        "",
        f"- vault public key: {md_code(r['public_key'])}",
        f"- the log at report time: last seq {md_text(chain['last_seq'])}, "
        f"head {md_code(chain['head'])}",
    ]
    cp = r["checkpoint"]
    if cp is None:
        lines += ["- no signed checkpoint yet", ""]
    else:
        body = cp["checkpoint"]
        lines += [
            f"- signed checkpoint: seq {md_text(body['seq'])}, head {md_code(body['head'])}, "
            f"time {md_text(body['ts'])}",
            "- signature (Ed25519 over the exact checkpoint bytes below): "
            f"{md_code(cp['signature'])}",
            "",
            "Checkpoint bytes (signed exactly as shown, without a line break):",
            "",
            *md_fenced(canonical(body).decode("utf-8"), "json"),
            "",
        ]
    lines += ["## Appendix: the exact log lines", ""]
    for h in r["history"]:
        lines += [f"### Entry {md_text(h['seq'])}", "", *md_fenced(h["line"], "json"), ""]
    if "receipt" in r:
        receipt = json.dumps(r["receipt"], indent=2, sort_keys=True, ensure_ascii=False)
        lines += ["## Appendix: your erasure receipt", "", *md_fenced(receipt, "json"), ""]
    return "\n".join(lines)


def _withheld_text(withheld: dict[str, Any] | None) -> list[str]:
    """A warning that the report is incomplete: the role that made it may not see
    everything (counts and reason codes only)."""
    if not withheld or not (withheld["records"] or withheld["records_with_fields_withheld"]):
        return []
    reasons = ", ".join(f"{md_text(code)}: {md_text(n)}" for code, n in withheld["reasons"].items())
    return [
        "**This report is incomplete:** the role that made it may not see everything. "
        f"Records left out: {md_text(withheld['records'])}"
        + (f" ({reasons})" if reasons else "")
        + "; records shown with some fields left out: "
        f"{md_text(withheld['records_with_fields_withheld'])}.",
        "",
    ]


def _render_audit(r: dict[str, Any]) -> str:
    log_state = r["log"]
    keys = r["keys"]
    policy = keys["policy"]
    lines = [
        f"# Audit report — vault {md_text(r['vault'])}",
        "",
        f"Generated {md_text(r['generated'])}.",
        "",
        "## Access log",
        "",
        f"- chain: **{'verifies' if log_state['ok'] else 'FAILS: ' + md_text(log_state['reason'])}"
        f"** — {md_text(log_state['entries'])} entries, last signed checkpoint at seq "
        f"{md_text(log_state['last_checkpoint'])}, "
        f"unsigned tail {md_text(log_state['unsigned_tail'])}; "
        f"{md_text(r['checkpoints'])} checkpoints stored",
        f"- public key: {md_code(log_state['public_key'])}",
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
        f"- active KEK epoch {md_text(keys['active_epoch'])}, "
        f"{md_text(keys['active_epoch_age_days'])} days old "
        f"(policy: at most {md_text(policy['max_kek_age_days'])} days)",
        f"- oldest DEK {md_text(_days_text(keys['oldest_dek_age_days']))} "
        f"(policy: at most {md_text(policy['max_dek_age_days'])} days)",
        f"- last rotation {md_text(keys['last_rotation'] or 'never')}",
        f"- unlock: {md_text(_unlock_text(keys))}; "
        f"re-hash due: {'yes' if keys['rehash_due'] else 'no'}",
        f"- policy violations: {md_text(', '.join(keys['violations']) or 'none')}",
        "- backup key copies (shredded customers whose keys unexpired backups hold): "
        f"{md_text(keys['backup_key_copies'])}",
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
    lines += _routine_lines(r.get("routine"))
    c = r["customers"]
    lines += [
        "",
        "## Customers",
        "",
        f"- active {md_text(c['active'])}, shredded {md_text(c['shredded'])} "
        f"(in progress {md_text(c['shredding'])}), "
        f"under legal hold {md_text(c['legal_hold'])}, "
        f"past retention {md_text(c['past_retention'])}; shreds logged {md_text(r['shreds'])}",
        f"- under legal hold: {md_text(_ids_text(r['legal_hold_ids']))}",
        "- past retention (active, kept-until date passed): "
        f"{md_text(_ids_text(r['past_retention_ids']))}",
        "",
        "## Denied accesses by actor",
        "",
    ]
    lines += _table(["actor", "denials"], sorted(r["denials_by_actor"].items()))
    if "requests" in r:
        q = r["requests"]
        lines += [
            "",
            "## Customer requests",
            "",
            f"- open {md_text(q['open'])}, overdue {md_text(q['overdue'])}; closed in time "
            f"{md_text(q['closed_in_time'])}, closed late {md_text(q['closed_late'])}",
        ]
    lines.append("")
    return "\n".join(lines)


def _routine_lines(routine: dict[str, Any] | None) -> list[str]:
    """The last restore drill and access review against their intervals."""
    if routine is None:
        return []
    lines = ["", "## Routine", ""]
    for key, label in (("drill", "restore drill"), ("review", "access review")):
        item = routine[key]
        last = item["last"]
        when = "never" if last is None else f"{last['ts']} ({last['outcome']})"
        state = "**OVERDUE**" if item["overdue"] else "next due"
        lines.append(
            f"- last {label}: {md_text(when)}; {state} {md_text(item['due'])} "
            f"(every {md_text(item['interval_days'])} days)"
        )
    return lines


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


def render_notice(notice: dict[str, Any]) -> str:
    """A change notice for one customer (docs/requests.md): who receives their data,
    what, why, how to object and by when; every value escaped."""
    what = ", ".join(notice["data"]) or "no records (your customer details only)"
    lines = [
        f"# Notice of a change — customer {md_text(notice['customer'])}",
        "",
        f"Notice {md_code(notice['notice'])}, prepared {md_text(notice['prepared'])}.",
        "",
        f"- **Why:** {md_text(notice['why'])}",
        f"- **Who receives your data:** {md_text(', '.join(notice['recipients']))}",
        f"- **What:** {md_text(what)}",
        f"- **From:** {md_text(notice['effective'])}",
        f"- **How to object:** {md_text(notice['how_to_object'])}",
        f"- **By when:** {md_text(notice['object_by'])}",
        "",
    ]
    return "\n".join(lines)
