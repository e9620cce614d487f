"""The JSON API: one table of endpoints, each a short call into a :class:`Session`
method. The table drives both the routes (:mod:`.app`) and the OpenAPI document
(:mod:`.openapi`).

Handlers run on a vault thread with the caller's session; they translate JSON to
arguments and results to JSON, and nothing else: every check (role, fields, purpose,
input rules) and every log entry is the library's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..vault import Role, SchemaError, Session
from ..vault.audit_reports import normalize_time
from ..vault.inputs import check_known, parse_moment

__all__ = ["ENDPOINTS", "Call", "Endpoint", "Reply"]

Reply = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One request's arguments: path parameters, query parameters, JSON body."""

    path: Mapping[str, str]
    query: Mapping[str, str]
    body: Mapping[str, Any] = field(default_factory=dict)

    def text(self, name: str) -> str:
        """A required string from the body."""
        value = self.body.get(name)
        if not isinstance(value, str):
            raise SchemaError(f"the body needs {name!r} (a string)")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.body.get(name)
        if value is not None and not isinstance(value, str):
            raise SchemaError(f"{name!r} must be a string or null")
        return value

    def mapping(self, name: str, *, required: bool = True) -> dict[str, Any] | None:
        value = self.body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise SchemaError(f"the body needs {name!r} (a JSON object)")
        return value

    def moment(self, name: str) -> datetime | None:
        value = self.optional_text(name)
        return None if value is None else parse_moment(value, what=name)

    def strings(self, name: str) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SchemaError(f"{name!r} must be a list of strings or null")
        return value

    def purpose(self) -> str:
        """The purpose: from the query (reads, deletes) or the body (writes)."""
        value = self.query.get("purpose", self.body.get("purpose"))
        if not isinstance(value, str):
            raise SchemaError("give a purpose (why the data is accessed)")
        return value

    def limit(self) -> int | None:
        value = self.query.get("limit")
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or len(value) > 9:
            raise SchemaError("limit is a positive whole number")
        return int(value)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A method and path, what it does, and the call into the session."""

    method: str
    path: str
    name: str
    summary: str
    handler: Callable[[Session, Call], Reply]
    query: tuple[str, ...] = ()
    body: Mapping[str, Any] | None = None  # JSON Schema of the request body
    status: int = 200

    def checked(self, session: Session, call: Call) -> Reply:
        """The handler, once no query parameter or body field is one the endpoint does
        not take (the schema says ``additionalProperties: false``): a misspelt
        ``retain_until`` must not create a customer kept forever."""
        check_known("query parameters", call.query, self.query)
        fields = () if self.body is None else self.body.get("properties", {})
        check_known("body fields", call.body, fields)
        return self.handler(session, call)


# -- customers ----------------------------------------------------------------------------


def _add_customer(session: Session, call: Call) -> Reply:
    consent = call.mapping("consent", required=False)
    customer_id = session.add_customer(
        ref=call.optional_text("ref"), consent=consent, retain_until=call.moment("retain_until")
    )
    return 201, {"id": customer_id}


def _list_customers(session: Session, call: Call) -> Reply:
    page = session.list_customers(
        state=call.query.get("state"), limit=call.limit(), after=call.query.get("after")
    )
    return 200, {"customers": [c.to_json() for c in page], "next": page.next}


def _customer(session: Session, call: Call) -> Reply:
    return 200, session.customer(call.path["customer"]).to_json()


def _customer_by_ref(session: Session, call: Call) -> Reply:
    ref = call.query.get("ref")
    if ref is None:
        raise SchemaError("give ref=")
    return 200, session.customer_by_ref(ref).to_json()


def _retain(session: Session, call: Call) -> Reply:
    customer_id = call.path["customer"]
    if "retain_until" not in call.body:
        raise SchemaError("the body needs 'retain_until' (a time, or null to keep until shred)")
    stored = session.set_retention(customer_id, call.moment("retain_until"))
    return 200, {"customer": customer_id, "retain_until": stored}


def _hold(session: Session, call: Call) -> Reply:
    session.hold(call.path["customer"])
    return 200, {"customer": call.path["customer"], "legal_hold": True}


def _release(session: Session, call: Call) -> Reply:
    session.release(call.path["customer"])
    return 200, {"customer": call.path["customer"], "legal_hold": False}


def _shred(session: Session, call: Call) -> Reply:
    receipt = session.shred(call.path["customer"], reason=call.text("reason"))
    return 200, receipt.to_json()


def _customer_report(session: Session, call: Call) -> Reply:
    return 200, session.customer_report(call.path["customer"])


def _report_from_receipt(session: Session, call: Call) -> Reply:
    receipt = call.mapping("receipt")
    assert receipt is not None
    return 200, session.customer_report_from_receipt(receipt)


# -- records ------------------------------------------------------------------------------


def _put(session: Session, call: Call) -> Reply:
    customer_id, kind = call.path["customer"], call.text("kind")
    fields = call.mapping("fields")
    assert fields is not None
    record_id = session.put(customer_id, kind, fields, purpose=call.purpose())
    return 201, {"id": record_id, "customer": customer_id, "kind": kind}


def _get(session: Session, call: Call) -> Reply:
    record = session.get(call.path["customer"], call.path["record"], purpose=call.purpose())
    return 200, record.to_json()


def _update(session: Session, call: Call) -> Reply:
    fields = call.mapping("fields")
    assert fields is not None
    record = session.update(
        call.path["customer"], call.path["record"], fields, purpose=call.purpose()
    )
    return 200, record.to_json()


def _delete(session: Session, call: Call) -> Reply:
    customer_id, record_id = call.path["customer"], call.path["record"]
    session.delete(customer_id, record_id, purpose=call.purpose())
    return 200, {"customer": customer_id, "record": record_id, "deleted": True}


def _find(session: Session, call: Call) -> Reply:
    found = session.find(
        call.text("kind"), call.text("field"), call.text("value"), purpose=call.purpose()
    )
    return 200, {"records": [r.to_json() for r in found]}


def _list_records(session: Session, call: Call) -> Reply:
    page = session.list_records(
        call.path["customer"],
        purpose=call.purpose(),
        kind=call.query.get("kind"),
        limit=call.limit(),
        after=call.query.get("after"),
    )
    return 200, {"records": [r.to_json() for r in page], "next": page.next}


# -- principals and roles -----------------------------------------------------------------


def _add_principal(session: Session, call: Call) -> Reply:
    name = call.text("name")
    token = session.add_principal(name, role=call.text("role"), expires=call.moment("expires"))
    return 201, {"name": name, "token": token}


def _revoke_principal(session: Session, call: Call) -> Reply:
    session.revoke_principal(call.path["name"])
    return 200, {"name": call.path["name"], "revoked": True}


def _list_principals(session: Session, call: Call) -> Reply:
    return 200, {"principals": [p.to_json() for p in session.list_principals()]}


def _add_role(session: Session, call: Call) -> Reply:
    actions = call.strings("actions")
    if actions is None:
        raise SchemaError("the body needs 'actions' (a list of strings)")
    role = Role.build(
        call.text("name"),
        actions=actions,
        kinds=call.strings("kinds"),
        fields=call.strings("fields"),
        purposes=call.strings("purposes"),
        expires=call.optional_text("expires"),
    )
    session.add_role(role, replace=call.body.get("replace") is True)
    return 201, role.to_json()


def _list_roles(session: Session, call: Call) -> Reply:
    return 200, {"roles": [r.to_json() for r in session.list_roles()]}


# -- audit --------------------------------------------------------------------------------

_QUERY_FILTERS = ("actor", "role", "action", "outcome")


def _audit_query(session: Session, call: Call) -> Reply:
    filters = {name: call.query.get(name) for name in _QUERY_FILTERS}
    return 200, session.audit_query(
        **filters,
        since=normalize_time("since", call.query.get("since")),
        until=normalize_time("until", call.query.get("until")),
        limit=call.limit(),
        after=call.query.get("after"),
    )


def _audit_report(session: Session, call: Call) -> Reply:
    return 200, session.audit_report()


def _checkpoint(session: Session, call: Call) -> Reply:
    return 200, session.checkpoint().to_json()


_ID = {"type": "string"}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_STRINGS = {"type": ["array", "null"], "items": {"type": "string"}}


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": False,
    }


_RECORDS = "/v1/customers/{customer}/records"

#: every API endpoint; /healthz, /readyz, /openapi.json and the log export are in .app
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/customers",
        "addCustomer",
        "Add a customer with fresh keys; returns its id.",
        _add_customer,
        body=_object(
            (),
            ref=_TEXT_OR_NULL,
            consent={"type": ["object", "null"], "additionalProperties": {"type": "boolean"}},
            retain_until=_TEXT_OR_NULL,
        ),
        status=201,
    ),
    Endpoint(
        "GET",
        "/v1/customers",
        "listCustomers",
        "Customers' metadata, one page (limit/after) or all.",
        _list_customers,
        query=("state", "limit", "after"),
    ),
    Endpoint(
        "GET",
        "/v1/customers/by-ref",
        "customerByRef",
        "The customer with this application reference.",
        _customer_by_ref,
        query=("ref",),
    ),
    Endpoint("GET", "/v1/customers/{customer}", "customer", "One customer's metadata.", _customer),
    Endpoint(
        "PUT",
        "/v1/customers/{customer}/retention",
        "setRetention",
        "Change when the customer's data is due for erasure (admin).",
        _retain,
        body=_object(("retain_until",), retain_until=_TEXT_OR_NULL),
    ),
    Endpoint("POST", "/v1/customers/{customer}/hold", "hold", "Put under legal hold.", _hold),
    Endpoint(
        "DELETE",
        "/v1/customers/{customer}/hold",
        "release",
        "Release the legal hold.",
        _release,
    ),
    Endpoint(
        "POST",
        "/v1/customers/{customer}/shred",
        "shred",
        "Crypto-shred the customer; returns the signed erasure receipt.",
        _shred,
        body=_object(("reason",), reason=_ID),
    ),
    Endpoint(
        "GET",
        "/v1/customers/{customer}/report",
        "customerReport",
        "The subject access report.",
        _customer_report,
    ),
    Endpoint(
        "POST",
        "/v1/reports/customer-from-receipt",
        "customerReportFromReceipt",
        "The subject access report of a shredded customer, through its receipt.",
        _report_from_receipt,
        body=_object(("receipt",), receipt={"type": "object"}),
    ),
    Endpoint(
        "POST",
        _RECORDS,
        "putRecord",
        "Store one record; returns its id.",
        _put,
        body=_object(
            ("kind", "fields", "purpose"), kind=_ID, fields={"type": "object"}, purpose=_ID
        ),
        status=201,
    ),
    Endpoint(
        "GET",
        _RECORDS,
        "listRecords",
        "A customer's records usable for the purpose, one page or all.",
        _list_records,
        query=("purpose", "kind", "limit", "after"),
    ),
    Endpoint(
        "GET",
        _RECORDS + "/{record}",
        "getRecord",
        "Read one record.",
        _get,
        query=("purpose",),
    ),
    Endpoint(
        "PATCH",
        _RECORDS + "/{record}",
        "updateRecord",
        "Merge fields into a record (null sets null); returns the new version.",
        _update,
        body=_object(("fields", "purpose"), fields={"type": "object"}, purpose=_ID),
    ),
    Endpoint(
        "DELETE",
        _RECORDS + "/{record}",
        "deleteRecord",
        "Delete one record.",
        _delete,
        query=("purpose",),
    ),
    Endpoint(
        "POST",
        "/v1/records/find",
        "findRecords",
        "Records of a kind whose searchable field holds the value (blind index; the "
        "value travels in the body, never the URL).",
        _find,
        body=_object(
            ("kind", "field", "value", "purpose"), kind=_ID, field=_ID, value=_ID, purpose=_ID
        ),
    ),
    Endpoint(
        "GET", "/v1/principals", "listPrincipals", "Every principal (admin).", _list_principals
    ),
    Endpoint(
        "POST",
        "/v1/principals",
        "addPrincipal",
        "Create a principal; returns its token, shown once (admin).",
        _add_principal,
        body=_object(("name", "role"), name=_ID, role=_ID, expires=_TEXT_OR_NULL),
        status=201,
    ),
    Endpoint(
        "DELETE",
        "/v1/principals/{name}",
        "revokePrincipal",
        "Revoke a principal's token at once (admin).",
        _revoke_principal,
    ),
    Endpoint("GET", "/v1/roles", "listRoles", "Built-in and custom roles.", _list_roles),
    Endpoint(
        "POST",
        "/v1/roles",
        "addRole",
        "Add (or with replace, change) a custom role (admin).",
        _add_role,
        body=_object(
            ("name", "actions"),
            name=_ID,
            actions={"type": "array", "items": {"type": "string"}},
            kinds=_STRINGS,
            fields=_STRINGS,
            purposes=_STRINGS,
            expires=_TEXT_OR_NULL,
            replace={"type": "boolean"},
        ),
        status=201,
    ),
    Endpoint(
        "GET",
        "/v1/audit/query",
        "auditQuery",
        "Which customers and records were touched: ids and counts only.",
        _audit_query,
        query=("actor", "role", "action", "outcome", "since", "until", "limit", "after"),
    ),
    Endpoint("GET", "/v1/audit/report", "auditReport", "The inspector's report.", _audit_report),
    Endpoint(
        "POST",
        "/v1/audit/checkpoint",
        "checkpoint",
        "Sign a checkpoint at the log head now (audit).",
        _checkpoint,
    ),
)
