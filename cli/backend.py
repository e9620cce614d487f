"""What the main data commands act on: a local :class:`Session` (the vault unlocked in
this process) or a server (``--server URL`` with a token: no passphrase, no file).

Both sides offer the same methods (:class:`Backend`); the remote one calls
:mod:`shredvault.client` and turns the server's JSON back into the library's values and
its error names back into the library's typed errors, so each command has one code
path, and one exit code per error, wherever the vault is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import click

from .. import vault as library
from ..vault import (
    AccessDeniedError,
    Customer,
    NotFoundError,
    Page,
    Receipt,
    Record,
    SchemaError,
    ShreddedError,
    VaultBusyError,
    VaultError,
)
from .context import SERVER_ENV, TOKEN_ENV, open_session, settings_of
from .exit_codes import CommandError

if TYPE_CHECKING:
    from ..client import Client, ServerError

__all__ = ["Backend", "RemoteSession", "library_error", "open_backend"]


class Backend(Protocol):
    """The calls the main data commands make (a subset of :class:`Session`)."""

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: datetime | None = None,
    ) -> str: ...
    def customer(self, customer_id: str) -> Customer: ...
    def customer_by_ref(self, ref: str) -> Customer: ...
    def list_customers(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Page[Customer]: ...
    def set_retention(
        self, customer_id: str, retain_until: datetime | str | None
    ) -> str | None: ...
    def hold(self, customer_id: str) -> None: ...
    def release(self, customer_id: str) -> None: ...
    def put(
        self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str
    ) -> str: ...
    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record: ...
    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> Record: ...
    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None: ...
    def find(self, kind: str, field: str, value: str, *, purpose: str) -> list[Record]: ...
    def list_records(
        self,
        customer_id: str,
        *,
        purpose: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Record]: ...
    def shred(self, customer_id: str, *, reason: str) -> Receipt: ...
    def customer_report(self, customer_id: str) -> dict[str, Any]: ...
    def customer_report_from_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]: ...
    def audit_query(
        self, *, limit: int | None = None, after: str | None = None, **filters: str | None
    ) -> dict[str, Any]: ...
    def audit_report(self, *, full: bool = False) -> dict[str, Any]: ...


#: the error to raise when the server names one this library does not know (or whose
#: constructor needs more than a message), by HTTP status
_BY_STATUS: dict[int, type[VaultError]] = {
    401: AccessDeniedError,
    403: AccessDeniedError,
    429: AccessDeniedError,
    404: NotFoundError,
    410: ShreddedError,
    400: SchemaError,
    413: SchemaError,
    422: SchemaError,
    503: VaultBusyError,
}


def library_error(error: ServerError) -> Exception:
    """The library's typed error the server reported (same class when it is one of
    the library's, so exit codes match a local run)."""
    if error.status == 0:
        return CommandError(str(error))
    named = getattr(library, error.error, None) if error.error in library.__all__ else None
    if isinstance(named, type) and issubclass(named, VaultError):
        try:
            return named(str(error))
        except TypeError:  # a constructor with required details: fall back by status
            pass
    return _BY_STATUS.get(error.status, VaultError)(str(error))


def _page(items: list[Any], cursor: Any) -> Page[Any]:
    return Page(items, None if cursor is None else str(cursor))


class RemoteSession:
    """:class:`Backend` over the HTTP API."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: datetime | None = None,
    ) -> str:
        until = None if retain_until is None else retain_until.isoformat()
        return self._client.add_customer(ref=ref, consent=consent, retain_until=until)

    def customer(self, customer_id: str) -> Customer:
        return Customer(**self._client.customer(customer_id))

    def customer_by_ref(self, ref: str) -> Customer:
        return Customer(**self._client.customer_by_ref(ref))

    def list_customers(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Page[Customer]:
        found = self._client.list_customers(state=state, limit=limit, after=after)
        return _page([Customer(**c) for c in found["customers"]], found["next"])

    def set_retention(self, customer_id: str, retain_until: datetime | str | None) -> str | None:
        until = retain_until.isoformat() if isinstance(retain_until, datetime) else retain_until
        return self._client.set_retention(customer_id, until)

    def hold(self, customer_id: str) -> None:
        self._client.hold(customer_id)

    def release(self, customer_id: str) -> None:
        self._client.release(customer_id)

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        return self._client.put(customer_id, kind, fields, purpose=purpose)

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> Record:
        return Record(**self._client.get(customer_id, record_id, purpose=purpose))

    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> Record:
        return Record(**self._client.update(customer_id, record_id, fields, purpose=purpose))

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        self._client.delete(customer_id, record_id, purpose=purpose)

    def find(self, kind: str, field: str, value: str, *, purpose: str) -> list[Record]:
        return [Record(**r) for r in self._client.find(kind, field, value, purpose=purpose)]

    def list_records(
        self,
        customer_id: str,
        *,
        purpose: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Record]:
        found = self._client.list_records(
            customer_id, purpose=purpose, kind=kind, limit=limit, after=after
        )
        return _page([Record(**r) for r in found["records"]], found["next"])

    def shred(self, customer_id: str, *, reason: str) -> Receipt:
        return Receipt(self._client.shred(customer_id, reason=reason))

    def customer_report(self, customer_id: str) -> dict[str, Any]:
        return self._client.customer_report(customer_id)

    def customer_report_from_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        return self._client.customer_report_from_receipt(receipt)

    def audit_query(
        self, *, limit: int | None = None, after: str | None = None, **filters: str | None
    ) -> dict[str, Any]:
        return self._client.audit_query(limit=limit, after=after, **filters)

    def audit_report(self, *, full: bool = False) -> dict[str, Any]:
        if full:
            raise click.UsageError("audit report --full verifies the vault's files: run it there")
        return self._client.audit_report()


@contextmanager
def _remote(url: str, token: str) -> Iterator[Backend]:
    try:
        from ..client import Client, ServerError
    except ImportError:  # httpx is the optional [client] extra
        raise click.UsageError(
            "--server needs the client extra: pip install 'shredvault[client]'"
        ) from None
    try:
        client = Client(url, token)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--server'") from None
    with client:
        try:
            yield RemoteSession(client)
        except ServerError as error:
            raise library_error(error) from None


@contextmanager
def open_backend(ctx: click.Context) -> Iterator[Backend]:
    """The server ``--server``/SHREDVAULT_SERVER names, as the principal the token
    names (a usage error without one: a server has no administrator to fall back
    to); else the vault unlocked here, as :func:`open_session` says."""
    settings = settings_of(ctx)
    if settings.server is None:
        with open_session(ctx) as session:
            yield session
        return
    token = settings.acting_token()
    if token is None:
        raise click.UsageError(
            f"--server (or {SERVER_ENV}) acts as a principal: give its token with "
            f"--token or {TOKEN_ENV}"
        )
    with _remote(settings.server, token) as backend:
        yield backend
