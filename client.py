"""shredvault.client: a small client of ``shredvault serve`` for services.

It speaks the HTTP API (docs/server.md, docs/openapi.json) with a principal's token
and imports nothing of the vault: no keys, no files, no crypto. Results are the API's
JSON (dicts and lists); a refusal raises :class:`ServerError` carrying the HTTP status
and the name of the library's typed error (``ShreddedError``, ``AccessDeniedError``).
Install with the ``[client]`` extra (httpx).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

__all__ = ["Client", "ServerError"]


class ServerError(Exception):
    """The server refused or failed a call: ``status`` (HTTP), ``error`` (the typed
    error's class name, e.g. ``ShreddedError``), and its one-line message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error

    def __repr__(self) -> str:
        return f"ServerError({self.status}, {self.error!r})"


def _check_url(url: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host and no user name
    or password in it (the token is the credential; a password in the URL would be
    echoed by every error that names the server); a ValueError otherwise, which never
    repeats the URL."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError("the server URL must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the server URL may not hold a user name or password: give a token")
    return url


def _segment(value: str) -> str:
    return quote(value, safe="")


class Client:
    """Calls the API as the principal ``token`` names; keeps one connection alive.
    The token goes only into the Authorization header (never a repr or an error)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _check_url(url)
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
            transport=transport,
        )
        self.url = url

    def __repr__(self) -> str:
        return f"<Client url={self.url!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as failure:
            why = type(failure).__name__
            raise ServerError(0, "ConnectionError", f"cannot reach {self.url}: {why}") from None
        if response.is_success:
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response.content
        try:
            problem = response.json()
            error, message = str(problem["error"]), str(problem["message"])
        except (ValueError, KeyError, TypeError):
            error, message = "HttpError", f"HTTP {response.status_code}"
        raise ServerError(response.status_code, error, message)

    # -- customers ----------------------------------------------------------------------

    def add_customer(
        self,
        *,
        ref: str | None = None,
        consent: Mapping[str, bool] | None = None,
        retain_until: str | None = None,
    ) -> str:
        """Add a customer; its id."""
        body = {"ref": ref, "consent": dict(consent or {}), "retain_until": retain_until}
        return str(self._call("POST", "/v1/customers", body=body)["id"])

    def customer(self, customer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/customers/{_segment(customer_id)}")
        return result

    def customer_by_ref(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/customers/by-ref", query={"ref": ref})
        return result

    def list_customers(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        """``{"customers": [...], "next": cursor or None}``."""
        query = {"state": state, "limit": limit, "after": after}
        result: dict[str, Any] = self._call("GET", "/v1/customers", query=query)
        return result

    def set_retention(self, customer_id: str, retain_until: str | None) -> str | None:
        path = f"/v1/customers/{_segment(customer_id)}/retention"
        result = self._call("PUT", path, body={"retain_until": retain_until})
        return None if result["retain_until"] is None else str(result["retain_until"])

    def hold(self, customer_id: str) -> None:
        self._call("POST", f"/v1/customers/{_segment(customer_id)}/hold")

    def release(self, customer_id: str) -> None:
        self._call("DELETE", f"/v1/customers/{_segment(customer_id)}/hold")

    def shred(self, customer_id: str, *, reason: str) -> dict[str, Any]:
        """Shred a customer; the signed erasure receipt (keep it)."""
        path = f"/v1/customers/{_segment(customer_id)}/shred"
        result: dict[str, Any] = self._call("POST", path, body={"reason": reason})
        return result

    # -- records ------------------------------------------------------------------------

    def put(self, customer_id: str, kind: str, fields: Mapping[str, Any], *, purpose: str) -> str:
        """Store a record; its id."""
        path = f"/v1/customers/{_segment(customer_id)}/records"
        body = {"kind": kind, "fields": dict(fields), "purpose": purpose}
        return str(self._call("POST", path, body=body)["id"])

    def get(self, customer_id: str, record_id: str, *, purpose: str) -> dict[str, Any]:
        path = f"/v1/customers/{_segment(customer_id)}/records/{_segment(record_id)}"
        result: dict[str, Any] = self._call("GET", path, query={"purpose": purpose})
        return result

    def update(
        self, customer_id: str, record_id: str, fields: Mapping[str, Any], *, purpose: str
    ) -> dict[str, Any]:
        path = f"/v1/customers/{_segment(customer_id)}/records/{_segment(record_id)}"
        body = {"fields": dict(fields), "purpose": purpose}
        result: dict[str, Any] = self._call("PATCH", path, body=body)
        return result

    def delete(self, customer_id: str, record_id: str, *, purpose: str) -> None:
        path = f"/v1/customers/{_segment(customer_id)}/records/{_segment(record_id)}"
        self._call("DELETE", path, query={"purpose": purpose})

    def list_records(
        self,
        customer_id: str,
        *,
        purpose: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        """``{"records": [...], "next": cursor or None}``."""
        path = f"/v1/customers/{_segment(customer_id)}/records"
        query = {"purpose": purpose, "kind": kind, "limit": limit, "after": after}
        result: dict[str, Any] = self._call("GET", path, query=query)
        return result

    def find(self, kind: str, field: str, value: str, *, purpose: str) -> list[dict[str, Any]]:
        """The records of ``kind`` whose searchable ``field`` holds ``value`` (exact match
        after the field's normalizer). The value goes in the request body, so it stays
        out of URLs, access logs and proxies."""
        body = {"kind": kind, "field": field, "value": value, "purpose": purpose}
        result: list[dict[str, Any]] = self._call("POST", "/v1/records/find", body=body)["records"]
        return result

    # -- reports and audit --------------------------------------------------------------

    def customer_report(self, customer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/customers/{_segment(customer_id)}/report")
        return result

    def customer_report_from_receipt(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        body = {"receipt": dict(receipt)}
        result: dict[str, Any] = self._call("POST", "/v1/reports/customer-from-receipt", body=body)
        return result

    def audit_query(
        self, *, limit: int | None = None, after: str | None = None, **filters: str | None
    ) -> dict[str, Any]:
        query = {**filters, "limit": limit, "after": after}
        result: dict[str, Any] = self._call("GET", "/v1/audit/query", query=query)
        return result

    def audit_report(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/audit/report")
        return result

    def checkpoint(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/audit/checkpoint")
        return result

    def export_log(self, *, since: int = 1) -> bytes:
        """The log as JSON Lines (after a fresh signed checkpoint; needs ``audit``)."""
        result: bytes = self._call("GET", "/v1/audit/export", query={"since": since})
        return result

    # -- principals and roles (admin) ---------------------------------------------------

    def add_principal(self, name: str, *, role: str, expires: str | None = None) -> str:
        """Create a principal; its token (shown once)."""
        body = {"name": name, "role": role, "expires": expires}
        return str(self._call("POST", "/v1/principals", body=body)["token"])

    def revoke_principal(self, name: str) -> None:
        self._call("DELETE", f"/v1/principals/{_segment(name)}")

    def list_principals(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/principals")["principals"]
        return result

    def add_role(
        self, name: str, *, actions: list[str], replace: bool = False, **spec: Any
    ) -> None:
        """A custom role: ``kinds``, ``fields`` (kind.field), ``purposes``, ``expires``."""
        self._call(
            "POST", "/v1/roles", body={"name": name, "actions": actions, "replace": replace, **spec}
        )

    def list_roles(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/roles")["roles"]
        return result

    def ready(self) -> bool:
        """Whether ``/readyz`` says the vault answers."""
        try:
            return bool(self._call("GET", "/readyz")["ready"])
        except ServerError:
            return False
