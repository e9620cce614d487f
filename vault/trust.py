"""Trust roots for offline verification: which key a check may believe, and saying so.

A file (log export, receipt, certificate, backup, handover package) carries the public
key it was signed with. Checking it against that key shows the file is whole, not who
made it: anyone can sign a forgery with a fresh key and name that key. So a check
believes only a key the verifier supplies (``pinned``), or, for a log export, an
anchor the verifier saw earlier that the file's key signed (``anchored``). Using the
file's own key needs an explicit opt-in and is reported as ``self-asserted``; without
a trust root a check that otherwise passes ends with the reason
:data:`NO_TRUSTED_KEY` (never ok), which the CLI exits with code 7.
"""

from __future__ import annotations

from ..keys import verify_signature
from .inputs import parse_json

__all__ = [
    "ANCHORED",
    "NO_TRUSTED_KEY",
    "PINNED",
    "SELF_ASSERTED",
    "no_trusted_key_message",
    "trust_of",
    "verify_typed",
]

#: the key was given by the verifier (``--pubkey``)
PINNED = "pinned"
#: the file's key signed an anchor the verifier saw earlier (``--anchor``)
ANCHORED = "anchored"
#: only the file's own key, accepted on request (``--trust-embedded-key``)
SELF_ASSERTED = "self-asserted"
#: the report reason when nothing trusted was given
NO_TRUSTED_KEY = "no trusted key"


def trust_of(
    public_key: bytes | None, *, trust_embedded_key: bool, anchored: bool = False
) -> str | None:
    """The trust a check has: :data:`PINNED`, :data:`ANCHORED`, :data:`SELF_ASSERTED`,
    or None when there is no trust root (the check must not report ok)."""
    if public_key is not None:
        return PINNED
    if anchored:
        return ANCHORED
    return SELF_ASSERTED if trust_embedded_key else None


def verify_typed(public_key: bytes, body: bytes, signature: bytes, expected_type: str) -> bool:
    """True iff ``signature`` is ``public_key``'s Ed25519 signature of ``body`` AND
    ``body`` is a JSON object whose ``type`` is ``expected_type``: the vault signs
    checkpoints, backup manifests, certificates, handover manifests and completion
    summaries with one key, so a signature alone would let one pass for another (a
    checkpoint was accepted as a completion summary). Every signature check of a
    signed object goes through here."""
    try:
        document = parse_json(body, what="a signed object")
    except ValueError:
        return False
    if not isinstance(document, dict) or document.get("type") != expected_type:
        return False
    return verify_signature(public_key, body, signature)


def no_trusted_key_message(what: str) -> str:
    """The one-line message for a ``what`` that checks out only under its own key."""
    return (
        f"not verified: no trusted key: the {what} checks out only under the public key it "
        "names itself, which anyone can make; pass the vault's public key "
        "(`shredvault audit pubkey`, obtained by a second channel)"
    )
