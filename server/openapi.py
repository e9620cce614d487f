"""The OpenAPI 3.1 document of the HTTP API, built from the endpoint table (so it
cannot drift from the routes). docs/openapi.json holds it, as :func:`render_openapi`
writes it; a test checks the two match."""

from __future__ import annotations

import json
import re
from typing import Any

from .endpoints import ENDPOINTS, Endpoint

__all__ = ["openapi_document", "render_openapi"]

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "the typed error's class name"},
        "message": {"type": "string"},
    },
}
_ERROR_RESPONSES = {
    "400": "malformed body (not one JSON object)",
    "401": "no token, or a token the vault refuses (AccessDeniedError)",
    "403": "the role does not allow it (AccessDeniedError, PurposeError)",
    "404": "no such customer or record (NotFoundError)",
    "409": "legal hold, duplicate ref, state conflict",
    "410": "the customer is shredded (ShreddedError)",
    "413": "body over the limit",
    "422": "invalid input (SchemaError, VerificationError)",
    "429": "too many failed logins from this address or for this token id",
    "500": "tampered store (TamperError, AuditChainError) or a bug",
    "503": "busy or storage failure (VaultBusyError, StorageError)",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": name in {"purpose", "ref"},
            "schema": {"type": "string"},
        }
        for name in endpoint.query
    ]
    responses: dict[str, Any] = {str(endpoint.status): _json({"type": "object"}, "ok")}
    for status in _ERROR_RESPONSES:
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    operation: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": endpoint.summary,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": responses,
    }
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    return operation


def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    paths["/v1/audit/export"] = {
        "get": {
            "operationId": "auditExport",
            "summary": "Sign a checkpoint (audit), then export the log as JSON Lines.",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "the export, as `shredvault audit export` writes it",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    for path, what in (("/healthz", "the process is up"), ("/readyz", "the vault answers")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": what,
                "security": [],
                "responses": {"200": _json({"type": "object"}, what)},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "shredvault", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": _ERROR},
            "responses": {
                f"E{status}": _json({"$ref": "#/components/schemas/Error"}, why)
                for status, why in _ERROR_RESPONSES.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def render_openapi() -> str:
    """The document as docs/openapi.json holds it."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
