"""The privacy routine on a :class:`~.session.Session` (docs/requests.md): the request
desk, consent changes, change notices. Each method is a short call into an operation
(vault/requests.py, vault/notices.py) with the session's context and actor; the gate
decides and logs every call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime

from .actor import Actor
from .context import VaultContext
from .notices import DEFAULT_CONTACT, NoticeBatch, mark_notice, prepare_notices
from .requests import (
    RequestClosure,
    change_consent,
    close_request,
    list_requests,
    open_request,
    request_policy,
    set_request_policy,
)
from .routine import Notice, Request

__all__ = ["DeskMethods"]


class DeskMethods:
    """The request desk, consent history and change notices of a session."""

    _actor: Actor
    _ctx: VaultContext

    def open_request(
        self,
        customer_id: str,
        *,
        type: str,
        channel: str,
        note: str | None = None,
    ) -> Request:
        """Record a customer's request (access, correction, erasure, consent-withdrawal,
        complaint) received through ``channel``; due by the vault's policy. Needs
        ``write``. The note is sealed under the customer's key."""
        return open_request(
            self._ctx, self._actor, customer_id, type=type, channel=channel, note=note
        )

    def list_requests(
        self,
        *,
        due_within_days: float | None = None,
        overdue: bool = False,
        state: str | None = None,
    ) -> list[Request]:
        """Requests, soonest due first (all, by state, due within N days, overdue).
        Needs ``list``."""
        return list_requests(
            self._ctx, self._actor, due_within_days=due_within_days, overdue=overdue, state=state
        )

    def close_request(
        self, request_id: str, *, outcome: str, reason: str | None = None
    ) -> RequestClosure:
        """Close a request (fulfilled, refused, partial), running what answers it:
        erasure → shred and receipt, access → subject report, consent withdrawal →
        consent withdrawn. Needs ``write`` (and what the answer needs)."""
        return close_request(self._ctx, self._actor, request_id, outcome=outcome, reason=reason)

    def request_policy(self) -> dict[str, int]:
        """Days to answer per request type. Needs ``list``."""
        return request_policy(self._ctx, self._actor)

    def set_request_policy(self, type: str, days: int) -> None:
        """Set the days to answer a request type. Needs ``admin``."""
        set_request_policy(self._ctx, self._actor, type, days)

    def set_consent(
        self, customer_id: str, consent: Mapping[str, bool], *, channel: str
    ) -> dict[str, bool]:
        """Change consent flags, kept in the customer's consent history. Needs
        ``write``; returns the consent now in force."""
        return change_consent(self._ctx, self._actor, customer_id, consent, channel=channel)

    def prepare_notices(
        self,
        *,
        reason: str,
        effective: str | datetime,
        recipients: Sequence[str],
        out_dir: str | os.PathLike[str],
        purpose: str | None = None,
        contact: str = DEFAULT_CONTACT,
    ) -> NoticeBatch:
        """Write a change notice per affected customer (Markdown and JSON) into
        ``out_dir`` and record them. Needs ``write``."""
        return prepare_notices(
            self._ctx,
            self._actor,
            reason=reason,
            effective=effective,
            recipients=recipients,
            out_dir=out_dir,
            purpose=purpose,
            contact=contact,
        )

    def notice_delivered(self, customer_id: str, notice_id: str, *, channel: str) -> Notice:
        """Mark a customer's notice delivered. Needs ``write``."""
        return mark_notice(self._ctx, self._actor, customer_id, notice_id, channel=channel)

    def notice_objected(self, customer_id: str, notice_id: str, *, channel: str) -> Notice:
        """Record that the customer objected to the notice. Needs ``write``."""
        return mark_notice(
            self._ctx, self._actor, customer_id, notice_id, objected=True, channel=channel
        )
