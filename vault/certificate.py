"""Certificates of destruction (issue 9): offline proof that a vault was decommissioned.

A certificate carries the final ``vault.decommission`` log entry, the signed checkpoint
at exactly that entry, the counts that entry records, the backups the vault still knew
to hold keys, the vault's public key and a fixed statement of scope, all signed by the
vault's Ed25519 key just before that key was destroyed. Format: docs/decommission.md.

:func:`verify_certificate` checks it with no vault and no passphrase: the signature,
that the checkpoint stands at exactly the certified entry and head, that the entry's
own detail carries the certified counts, and (given a log export) that the log
verifies and ends in exactly the certified head, with the counts it implies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import format_public_key, parse_public_key, read_export_entries, verify_export
from .canonical import canonical
from .checkpoint import Checkpoint, checkpoint_from_json
from .errors import OutputExistsError, VerificationError
from .files import write_file
from .inputs import load_json_document
from .log import entry_hash
from .markdown import md_code, md_text
from .trust import NO_TRUSTED_KEY, SELF_ASSERTED, no_trusted_key_message, trust_of, verify_typed

__all__ = [
    "CERTIFICATE_SCOPE",
    "CERTIFICATE_TYPE",
    "SIGNING_KEY_NOTE",
    "Certificate",
    "CertificateReport",
    "load_certificate",
    "markdown_path",
    "render_certificate_markdown",
    "sign_certificate",
    "verify_certificate",
]

CERTIFICATE_TYPE = "shredvault-certificate-of-destruction"
FINAL_ACTION = "vault.decommission"
INTENT_ACTION = "vault.decommission-intent"

#: The v1 statement of scope, word for word (verification refuses any other text).
CERTIFICATE_SCOPE = (
    "Every customer of this vault was crypto-shredded and every ciphertext row deleted; "
    "every key-encryption key (KEK) epoch, data-encryption key (DEK), subject tag and "
    "receipt salt was deleted from the vault's keystore (SQLite secure_delete, WAL "
    "truncated), and the vault's signing seed was deleted right after this certificate "
    "was signed, so nothing can be signed in the vault's name afterwards. The access log "
    "and its signed checkpoints remain for inspection; they hold no personal data. Not "
    "covered: a copy of keys.db made before the decommission (a backup, a disk snapshot) "
    "still holds the keys it held until that copy is destroyed or expires; the backups "
    "the vault recorded and that had not expired are listed in backups_outstanding, "
    "copies made without the vault's knowledge are not. Plaintext exported or printed "
    "before is outside the vault, and storage internals (journaling file systems, SSD "
    "wear levelling) may keep old blocks unless the disk itself was encrypted."
)

#: The fixed note a certificate's ``destroyed_keys.signing_key`` holds (the seed is
#: deleted after signing, so the signature cannot prove it: docs/decommission.md).
SIGNING_KEY_NOTE = "deleted right after this certificate was signed"

# The counts a certificate states, each equal to the same member of the final entry's
# detail (so the signed log head vouches for them too).
COUNT_FIELDS = (
    "customers_shredded",
    "customers_shredded_before",
    "records_deleted",
    "legal_holds_overridden",
    "stray_deks_destroyed",
)


@dataclass(frozen=True, slots=True)
class Certificate:
    """A signed certificate of destruction; ``document`` is the portable JSON object."""

    document: dict[str, Any]

    def __repr__(self) -> str:
        log = self.document.get("log") or {}
        return f"<Certificate vault={self.document.get('vault')} last_seq={log.get('last_seq')}>"

    @property
    def vault(self) -> str:
        return str(self.document["vault"])

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)

    def dumps(self) -> str:
        return json.dumps(self.document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    def markdown(self) -> str:
        """The human-readable rendering (not signed: the JSON is the proof)."""
        return render_certificate_markdown(self.document)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON to ``path`` and the Markdown to :func:`markdown_path` beside
        it, each owner-only (0600) and atomically. An existing file is left alone when it
        already holds exactly this content (a rerun re-emitting the same certificate),
        else refused with :class:`OutputExistsError` (a ``FileExistsError``) before
        either file is touched. Returns the Markdown path."""
        target = Path(path)
        md = markdown_path(target)
        files = [(target, self.dumps().encode("utf-8")), (md, self.markdown().encode("utf-8"))]
        for file, data in files:
            if file.exists() and file.read_bytes() != data:
                raise OutputExistsError(
                    f"{file} already exists with other content; not overwriting it (move it "
                    "away or choose another path)",
                    path=str(file),
                )
        for file, data in files:
            if not file.exists():
                write_file(file, data)
        return md


def markdown_path(path: str | os.PathLike[str]) -> Path:
    """Where the Markdown rendering of a certificate at ``path`` goes: ``cert.json`` ->
    ``cert.md``; any other name gets ``.md`` appended (``cert`` -> ``cert.md``)."""
    target = Path(path)
    if target.suffix.lower() == ".json":
        return target.with_suffix(".md")
    return target.with_name(target.name + ".md")


def signed_bytes(document: dict[str, Any]) -> bytes:
    """The bytes a certificate's signature covers: canonical JSON of every member
    except ``signature``."""
    return canonical({k: v for k, v in document.items() if k != "signature"})


def sign_certificate(
    document: dict[str, Any], sign: Callable[[bytes], bytes], public_key: bytes
) -> Certificate:
    """Add ``public_key`` and the signature made by ``sign`` to an unsigned document."""
    doc = {**document, "public_key": format_public_key(public_key)}
    doc.pop("signature", None)
    doc["signature"] = sign(signed_bytes(doc)).hex()
    return Certificate(doc)


@dataclass(slots=True)
class CertificateReport:
    """What :func:`verify_certificate` found: ``ok``, else the first ``reason`` and why."""

    ok: bool
    reason: str | None
    message: str
    vault: str | None = None
    last_seq: int | None = None
    head: str | None = None
    decommissioned_at: str | None = None
    log_checked: bool = False
    notes: list[str] = field(default_factory=list)
    #: what the key checked against is (``vault.trust``); None when not verified
    trust: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "vault": self.vault,
            "last_seq": self.last_seq,
            "head": self.head,
            "decommissioned_at": self.decommissioned_at,
            "log_checked": self.log_checked,
            "notes": list(self.notes),
            "trust": self.trust,
        }


def load_certificate(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a certificate file; raises VerificationError (``malformed``) if unreadable."""
    return load_json_document(path, "certificate")


@dataclass(frozen=True, slots=True)
class _Parsed:
    vault: str
    reason: str
    counts: dict[str, int]
    first_seq: int
    last_seq: int
    head: str
    entry: dict[str, Any]
    checkpoint: Checkpoint
    embedded_key: bytes
    signature: bytes
    backups: list[str]
    epochs: list[str]


def _parse(document: dict[str, Any]) -> _Parsed:
    try:
        counts = {name: int(document["counts"][name]) for name in COUNT_FIELDS}
        log = document["log"]
        return _Parsed(
            vault=str(document["vault"]),
            reason=str(document["reason"]),
            counts=counts,
            first_seq=int(log["first_seq"]),
            last_seq=int(log["last_seq"]),
            head=str(log["head"]),
            entry=dict(document["final_entry"]),
            checkpoint=checkpoint_from_json(document["checkpoint"]),
            embedded_key=parse_public_key(str(document["public_key"])),
            signature=bytes.fromhex(str(document["signature"])),
            backups=[str(b["id"]) for b in document["backups_outstanding"]],
            epochs=[str(e["fingerprint"]) for e in document["destroyed_keys"]["kek_epochs"]],
        )
    except (KeyError, TypeError, ValueError, VerificationError) as error:
        raise VerificationError(f"certificate is malformed: {error}", reason="malformed") from None


def verify_certificate(
    document: dict[str, Any],
    *,
    public_key: bytes | None = None,
    log_export: str | os.PathLike[str] | None = None,
    trust_embedded_key: bool = False,
) -> CertificateReport:
    """Check a certificate offline. ``public_key`` is the vault key the verifier trusts
    (without it the certificate's own copy is used and, if nothing else is wrong, the
    report fails with reason ``"no trusted key"`` unless ``trust_embedded_key`` is set:
    then ``trust`` says ``"self-asserted"``);
    ``log_export`` an ``audit export`` file that must verify and end in exactly the
    certified head. Never raises for a bad certificate: the report says why."""

    def fail(reason: str, message: str) -> CertificateReport:
        return CertificateReport(False, reason, message)

    if document.get("type") != CERTIFICATE_TYPE or document.get("v") != 1:
        return fail("malformed", "not a shredvault certificate of destruction (v1)")
    try:
        cert = _parse(document)
    except VerificationError as error:
        return fail("malformed", str(error))
    if public_key is not None and public_key != cert.embedded_key:
        return fail("wrong key", "the certificate names another public key than the one given")
    key = public_key if public_key is not None else cert.embedded_key
    entry = dict(cert.entry)
    claimed = entry.pop("hash", None)
    try:
        signed, digest = signed_bytes(document), entry_hash(canonical(entry))
    except (TypeError, ValueError) as error:  # e.g. NaN: not canonical JSON
        return fail("malformed", f"certificate is malformed: {error}")
    if not verify_typed(key, signed, cert.signature, CERTIFICATE_TYPE):
        return fail("bad signature", "the certificate's signature does not verify (altered?)")
    if document.get("scope") != CERTIFICATE_SCOPE:
        return fail("modified", "the scope statement was altered")
    if claimed != digest or digest != cert.head:
        return fail("modified", "the final entry does not hash to the certified head")
    cp = cert.checkpoint
    if cp.vault != cert.vault:
        return fail("foreign vault", "the checkpoint belongs to another vault")
    if not cp.verify(key):
        return fail("bad signature", "the checkpoint's signature does not verify")
    if cp.seq != cert.last_seq or cp.head != cert.head or entry.get("seq") != cert.last_seq:
        return fail("modified", "the signed checkpoint is not at the certified entry")
    if entry.get("action") != FINAL_ACTION or entry.get("outcome") != "ok":
        return fail("modified", "the certified entry is not a successful vault.decommission")
    if document.get("decommissioned_at") != entry.get("ts") or cp.ts != entry.get("ts"):
        return fail("modified", "the certified date is not the final entry's time")
    detail = entry.get("detail") or {}
    if detail.get("reason") != cert.reason or detail.get("intent_seq") != cert.first_seq:
        return fail("modified", "the reason or first seq differ from the final entry's")
    for name, value in cert.counts.items():
        if detail.get(name) != value:
            return fail("modified", f"the count {name} differs from the final entry's")
    if detail.get("backups_outstanding") != cert.backups:
        return fail("modified", "the outstanding backups differ from the final entry's")
    if detail.get("kek_epochs_destroyed") != cert.epochs:
        return fail("modified", "the destroyed KEK epochs differ from the final entry's")
    report = CertificateReport(
        True,
        None,
        f"vault {cert.vault} was decommissioned at seq {cert.last_seq} on {entry.get('ts')}",
        vault=cert.vault,
        last_seq=cert.last_seq,
        head=cert.head,
        decommissioned_at=str(entry.get("ts")),
        trust=trust_of(public_key, trust_embedded_key=trust_embedded_key),
    )
    if report.trust == SELF_ASSERTED:
        report.notes.append(
            "self-asserted: checked against the key inside the certificate; pass the "
            "vault's public key to prove the vault signed it"
        )
    if log_export is not None:
        _check_log(report, cert, key, log_export)
    if report.ok and report.trust is None:
        report.ok, report.reason = False, NO_TRUSTED_KEY
        report.message = no_trusted_key_message("certificate")
    return report


def _check_log(
    report: CertificateReport, cert: _Parsed, key: bytes, path: str | os.PathLike[str]
) -> None:
    """The export verifies under ``key``, ends in exactly the certified entry, and the
    entries it holds imply the certified counts."""

    def fail(reason: str, message: str) -> None:
        report.ok, report.reason, report.message = False, reason, message

    try:
        # ``key`` is the caller's or, on request, the certificate's own: the
        # certificate's trust is decided by the caller of verify_certificate.
        chain = verify_export(path, public_key=key, strict=True)
    except (OSError, VerificationError) as error:
        fail("malformed", f"cannot read the log export: {error}")
        return
    report.log_checked = True
    if not chain.ok:
        fail(chain.reason or "invalid", f"the log export fails verification: {chain.message}")
        return
    if _export_vault(path) != cert.vault:
        fail("log mismatch", "the log export names another vault than the certificate")
        return
    if chain.last_seq != cert.last_seq or chain.head != cert.head:
        fail(
            "log mismatch",
            f"the log ends at seq {chain.last_seq} ({chain.head}), not in the certified "
            f"head (seq {cert.last_seq})",
        )
        return
    if chain.first_seq != 1:
        fail("log mismatch", "the export starts after seq 1: export the whole log")
        return
    try:
        before, shredded, records, overridden, intent_ok = _recount(path, cert)
    except (KeyError, TypeError, ValueError) as error:
        fail("malformed", f"the log export's entries are malformed: {error}")
        return
    implied = {
        "customers_shredded": shredded,
        "customers_shredded_before": before,
        "records_deleted": records,
        "legal_holds_overridden": overridden,
    }
    if not intent_ok:
        fail("log mismatch", f"seq {cert.first_seq} of the log is not the decommission intent")
        return
    for name, value in implied.items():
        if cert.counts[name] != value:
            fail(
                "log mismatch",
                f"the log implies {name} = {value}, the certificate says {cert.counts[name]}",
            )
            return


def _export_vault(path: str | os.PathLike[str]) -> object:
    """The vault an export's header names (the header verified already)."""
    with open(path, "rb") as handle:
        header = json.loads(handle.readline())
    return header.get("vault") if isinstance(header, dict) else None


def _recount(path: str | os.PathLike[str], cert: _Parsed) -> tuple[int, int, int, int, bool]:
    """(shredded before, shredded by it, records deleted, holds overridden, whether the
    entry at ``first_seq`` is the intent), counted from a verified export."""
    before = shredded = records = overridden = 0
    intent_ok = False
    for entry in read_export_entries(path):
        seq, action, ok = entry["seq"], entry["action"], entry["outcome"] == "ok"
        if seq == cert.first_seq:
            intent_ok = action == INTENT_ACTION and ok
        if not ok:
            continue
        detail = entry.get("detail") or {}
        if action == "customer.shred":
            if seq < cert.first_seq:
                before += 1
            elif seq < cert.last_seq:
                shredded += 1
        elif cert.first_seq < seq < cert.last_seq:
            if action == "vault.compact":
                records += int(detail.get("records", 0))
            elif action == "customer.shred-intent" and detail.get("legal_hold_overridden"):
                overridden += 1
    return before, shredded, records, overridden, intent_ok


def render_certificate_markdown(document: dict[str, Any]) -> str:
    """A human-readable rendering of a certificate (for people; the JSON is the proof)."""
    counts = document.get("counts") or {}
    log = document.get("log") or {}
    cp = (document.get("checkpoint") or {}).get("checkpoint") or {}
    keys = document.get("destroyed_keys") or {}
    epochs = keys.get("kek_epochs") or []
    backups = document.get("backups_outstanding") or []
    lines = [
        "# Certificate of destruction",
        "",
        f"Vault {md_code(document.get('vault'))} was decommissioned on "
        f"**{md_text(document.get('decommissioned_at'))}**.",
        "",
        f"Reason: {md_text(document.get('reason'))}",
        "",
        "| | |",
        "|---|---|",
        f"| customers shredded by the decommission | {md_text(counts.get('customers_shredded'))} |",
        f"| customers shredded before it | {md_text(counts.get('customers_shredded_before'))} |",
        f"| record rows deleted | {md_text(counts.get('records_deleted'))} |",
        f"| legal holds overridden | {md_text(counts.get('legal_holds_overridden'))} |",
        f"| KEK epochs destroyed | {len(epochs)} |",
        f"| stray DEKs destroyed with them | {md_text(counts.get('stray_deks_destroyed'))} |",
        f"| decommission began at log seq | {md_text(log.get('first_seq'))} |",
        f"| final log entry (seq) | {md_text(log.get('last_seq'))} |",
        f"| final log head | {md_code(log.get('head'))} |",
        f"| signed checkpoint | seq {md_text(cp.get('seq'))}, {md_text(cp.get('ts'))} |",
        f"| vault public key | {md_code(document.get('public_key'))} |",
        "",
        "## KEK epochs destroyed",
        "",
    ]
    lines += [
        f"* epoch {md_text(e.get('epoch'))}: fingerprint {md_code(e.get('fingerprint'))}"
        for e in epochs
    ]
    lines += ["", "## Backups that may still hold keys", ""]
    if backups:
        lines += [
            f"* {md_code(b.get('id'))} taken {md_text(b.get('created'))} "
            f"(log seq {md_text(b.get('seq'))}), expires {md_text(b.get('expires') or 'never')}"
            for b in backups
        ]
        lines.append("")
        lines.append("Destroy these copies (or let them expire) to complete the erasure.")
    else:
        lines.append("None recorded as unexpired.")
    lines += [
        "",
        "## Scope",
        "",
        md_text(document.get("scope")),
        "",
        "## How to check",
        "",
        "```sh",
        "shredvault certificate verify CERTIFICATE.json --pubkey vault.pub [--log log.jsonl]",
        "```",
        "",
        "This page is a rendering; the signed JSON certificate is the proof.",
        "",
    ]
    return "\n".join(lines)
