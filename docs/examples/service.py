"""A small customer service on shredvault: Starlette, one shared vault, bearer tokens.

    pip install 'shredvault[examples]'
    shredvault init ./vault --new-keyfile ./vault.key     # once; add --data-url for PostgreSQL
    shredvault --vault ./vault --keyfile ./vault.key principal add desk --role admin
    SHREDVAULT_VAULT=./vault SHREDVAULT_KEYFILE=./vault.key \\
        uvicorn --app-dir docs/examples service:app

Every request names its principal with ``Authorization: Bearer <token>``. One ``Vault``
serves every thread (Starlette runs these plain ``def`` endpoints in a thread pool);
``session_for`` logs a token's first login and each access, not each request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shredvault import (
    AccessDeniedError,
    LegalHoldError,
    NotFoundError,
    SchemaError,
    Session,
    ShreddedError,
    Vault,
    VaultBusyError,
    VaultError,
)

KIND, PURPOSE = "contact", "service"


def session(request: Request) -> Session:
    vault: Vault = request.app.state.vault
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AccessDeniedError("a bearer token is required")
    return vault.session_for(token)


def contact(s: Session, customer_id: str) -> dict[str, Any]:
    customer = s.customer(customer_id).to_json()
    page = s.list_records(customer_id, purpose=PURPOSE, kind=KIND, limit=1)
    customer["contact"] = dict(page[0].fields) if page else None
    return {"id": customer_id, **customer}


def add_customer(request: Request) -> JSONResponse:
    s, body = session(request), request.state.body
    cid = s.add_customer(ref=body.get("ref"))
    s.put(cid, KIND, body.get("contact", {}), purpose=PURPOSE)
    return JSONResponse({"id": cid}, status_code=201)


def list_customers(request: Request) -> JSONResponse:
    s, query = session(request), request.query_params
    if "phone" in query:  # a blind-index search: no record is decrypted to find it
        found = s.find(KIND, "phone", query["phone"], purpose=PURPOSE)
        return JSONResponse({"customers": sorted({r.customer for r in found})})
    page = s.list_customers(limit=int(query.get("limit", 100)), after=query.get("after"))
    return JSONResponse({"customers": [c.to_json() for c in page], "next": page.next})


def by_ref(request: Request) -> JSONResponse:
    s = session(request)
    return JSONResponse(contact(s, s.customer_by_ref(request.path_params["ref"]).id))


def show(request: Request) -> JSONResponse:
    return JSONResponse(contact(session(request), request.path_params["cid"]))


def update(request: Request) -> JSONResponse:
    s, cid = session(request), request.path_params["cid"]
    (record,) = s.list_records(cid, purpose=PURPOSE, kind=KIND, limit=1)
    s.update(cid, record.id, request.state.body, purpose=PURPOSE)
    return JSONResponse(contact(s, cid))


def shred(request: Request) -> JSONResponse:
    reason = request.state.body.get("reason", "erasure request")
    receipt = session(request).shred(request.path_params["cid"], reason=reason)
    return JSONResponse(receipt.to_json())  # the signed proof, for whoever asked


def report(request: Request) -> JSONResponse:
    return JSONResponse(session(request).customer_report(request.path_params["cid"]))


STATUS = [
    (AccessDeniedError, 403),  # before SchemaError: a refused purpose is both
    (ShreddedError, 410),
    (NotFoundError, 404),
    (LegalHoldError, 409),
    (SchemaError, 422),
    (VaultBusyError, 503),
]


def threaded(endpoint: Callable[[Request], JSONResponse]) -> Any:
    """Read the JSON body (Starlette reads it asynchronously), then run the endpoint in
    the thread pool: vault calls block, and one vault serves every thread."""

    async def run(request: Request) -> JSONResponse:
        request.state.body = await request.json() if await request.body() else {}
        return await run_in_threadpool(endpoint, request)

    return run


async def vault_error(request: Request, error: Exception) -> JSONResponse:
    """A vault error as a JSON status; its message never holds personal data or secrets."""
    status = next((code for kind, code in STATUS if isinstance(error, kind)), 500)
    return JSONResponse({"error": type(error).__name__, "message": str(error)}, status)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    keyfile = os.environ["SHREDVAULT_KEYFILE"]
    with Vault.open(os.environ["SHREDVAULT_VAULT"], keyfile=keyfile) as vault:
        if KIND not in vault.kinds():
            # phone and email are found by blind index (docs/search.md)
            searchable = {"phone": "digits", "email": "email"}
            fields = ["name", "phone", "email"]
            vault.declare_kind(KIND, fields=fields, purposes=[PURPOSE], searchable=searchable)
        app.state.vault = vault
        yield


app = Starlette(
    routes=[
        Route("/customers", threaded(add_customer), methods=["POST"]),
        Route("/customers", threaded(list_customers), methods=["GET"]),
        Route("/customers/by-ref/{ref}", threaded(by_ref), methods=["GET"]),
        Route("/customers/{cid}", threaded(show), methods=["GET"]),
        Route("/customers/{cid}", threaded(update), methods=["PATCH"]),
        Route("/customers/{cid}", threaded(shred), methods=["DELETE"]),
        Route("/customers/{cid}/report", threaded(report), methods=["GET"]),
    ],
    exception_handlers={VaultError: vault_error},
    lifespan=lifespan,
)
