"""The ASGI application: bearer tokens, body limits, failed-login limits, the error
mapping, health checks and the OpenAPI document, around the endpoint table.

Nothing here decides who may do what: a request's token becomes a session through
``Vault.session_for`` (a logged login on the token's first use in this process) and
the endpoint calls that session, so the gate and the log are the
library's. The server's own log (stdlib ``logging``, logger ``shredvault.server``)
holds the route template, status and time of each request and, for a failed login,
the client address and a hash of the token's public id: never a token, a path with
ids, a query string or a body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..keys import KeysError
from ..vault import AccessDeniedError, VaultError
from ..vault.inputs import parse_json
from .endpoints import ENDPOINTS, Call, Endpoint
from .limits import LoginLimiter, RateLimit, token_id_of
from .openapi import openapi_document
from .status import HttpProblem, error_body, status_for
from .worker import VaultWorker

__all__ = ["LOGGER", "ServerConfig", "create_app"]

LOGGER = logging.getLogger("shredvault.server")

#: exports the log from ``since`` as JSON Lines (the bytes of `audit export`)
LogExporter = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits of the HTTP layer. A record is at most 1 MiB; its JSON fits in 2 MiB."""

    max_body: int = 2 << 20
    body_timeout: float = 30.0
    login_limit: RateLimit = field(default_factory=RateLimit)


class _LoginRefused(Exception):
    """The vault refused the token (raised on a vault thread)."""

    def __init__(self, error: AccessDeniedError) -> None:
        super().__init__(str(error))
        self.error = error


def _malformed(message: str) -> HttpProblem:
    return HttpProblem(400, "MalformedBody", message)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HttpProblem(401, "Unauthenticated", "give a principal's token: Authorization: Bearer")
    return token


async def _read_body(request: Request, config: ServerConfig) -> dict[str, Any]:
    """The request's JSON object: 413 past ``max_body``, 400 when it is not one JSON
    object (through the library's one JSON parser: depth, duplicates, UTF-8)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > config.max_body):
        raise HttpProblem(413, "BodyTooLarge", f"the body is over {config.max_body:,} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(config.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_body:
                    raise HttpProblem(
                        413, "BodyTooLarge", f"the body is over {config.max_body:,} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise HttpProblem(408, "BodyTimeout", "the body took too long to arrive") from None
    data = b"".join(chunks)
    if not data:
        raise _malformed("the request needs a JSON object as its body")
    value = parse_json(data, what="the request body", max_bytes=config.max_body, fail=_malformed)
    if not isinstance(value, dict):
        raise _malformed("the request body must be a JSON object")
    return value


class WorkerHeader:
    """Names the server process (its pid, no secret) in an ``X-Shredvault-Worker``
    header on every answer: with ``serve --workers N`` it tells which process served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pid = str(os.getpid()).encode("ascii")

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-shredvault-worker", pid)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_named)


def create_app(
    worker: VaultWorker,
    config: ServerConfig | None = None,
    *,
    export_log: LogExporter | None = None,
) -> Starlette:
    """The application serving ``worker``'s vault; its shutdown closes the vault,
    which signs a checkpoint when the log moved."""
    config = config or ServerConfig()
    limiter = LoginLimiter(config.login_limit)

    async def serve(
        request: Request,
        route: str,
        call_session: Callable[[Any, Call], tuple[int, Any]],
        with_body: bool,
    ) -> tuple[int, Any]:
        started = time.monotonic()
        address = request.client.host if request.client else "unknown"
        token_id = "none"  # noqa: S105 - a label for the log, not a secret
        try:
            token = _bearer(request)
            token_id = token_id_of(token)
            if not limiter.allows(token_id, address):
                raise HttpProblem(
                    429, "TooManyFailedLogins", "too many failed logins: try again later"
                )
            body = await _read_body(request, config) if with_body else {}
            call = Call(dict(request.path_params), dict(request.query_params), body)

            def work() -> tuple[int, Any]:
                try:
                    session = worker.session(token)
                except AccessDeniedError as error:
                    raise _LoginRefused(error) from None
                return call_session(session, call)

            status, payload = await worker.run(work)
        except _LoginRefused as refused:
            limiter.failed(token_id, address)
            LOGGER.warning("failed login: token id %s from %s", token_id, address)
            status, payload = 401, error_body(refused.error)
        except (HttpProblem, VaultError, KeysError) as error:
            if isinstance(error, HttpProblem) and error.status == 401:
                limiter.failed(token_id, address)
                LOGGER.warning("request without a token from %s", address)
            status, payload = status_for(error), error_body(error)
        except Exception as error:  # a bug: answer 500, log its type (never its text)
            LOGGER.error("unexpected %s in %s %s", type(error).__name__, request.method, route)
            status = 500
            payload = {"error": "InternalError", "message": "unexpected error (see server log)"}
        LOGGER.info(
            "%s %s %d %.1fms", request.method, route, status, (time.monotonic() - started) * 1e3
        )
        return status, payload

    def reply(status: int, payload: Any) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(payload, status, headers=headers)

    def route_of(endpoint: Endpoint) -> Route:
        async def handle(request: Request) -> Response:
            return reply(
                *await serve(request, endpoint.path, endpoint.checked, endpoint.body is not None)
            )

        return Route(endpoint.path, handle, methods=[endpoint.method], name=endpoint.name)

    async def export(request: Request) -> Response:
        """The log as JSON Lines, gated as a checkpoint (the ``audit`` action): the
        caller gets a fresh signed checkpoint first, then the export that reaches it."""
        if export_log is None:
            raise HTTPException(404)
        since_text = request.query_params.get("since", "1")

        def checkpoint_then_export(session: Any, call: Call) -> tuple[int, Any]:
            digits = since_text.isascii() and since_text.isdigit() and len(since_text) < 20
            if not digits or not 0 < int(since_text) < 1 << 62:
                raise HttpProblem(422, "SchemaError", "since is a positive log sequence number")
            session.checkpoint()
            return 200, export_log(int(since_text))

        status, payload = await serve(request, "/v1/audit/export", checkpoint_then_export, False)
        if status != 200:
            return reply(status, payload)
        return Response(payload, media_type="application/x-ndjson")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "worker": os.getpid()})

    async def readyz(request: Request) -> Response:
        try:
            head = await worker.run(lambda: worker.vault.head)
        except (VaultError, KeysError) as error:
            LOGGER.warning("not ready: %s", type(error).__name__)
            return JSONResponse({"ready": False, "error": type(error).__name__}, 503)
        return JSONResponse({"ready": True, "seq": head.seq})

    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def not_found(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 404
        name = {404: "NoSuchRoute", 405: "MethodNotAllowed"}.get(status, "HttpError")
        return JSONResponse({"error": name, "message": f"HTTP {status}"}, status)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        LOGGER.info("serving")
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)
            LOGGER.info("stopped: vault closed, checkpoint signed")

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_found,
    }
    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/v1/audit/export", export, methods=["GET"]),
            *(route_of(endpoint) for endpoint in ENDPOINTS),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
        middleware=[Middleware(WorkerHeader)],
    )
