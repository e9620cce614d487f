"""shredvault.server: the vault as an HTTP service (``shredvault serve``).

An ASGI application (Starlette, served by uvicorn; the optional ``[server]`` extra)
holding one unlocked vault. Imports go server -> vault -> keys; the CLI imports this
package (never the reverse), and nothing here imports click. docs/server.md describes
the API, its limits and how to run it.
"""

from .app import ServerConfig, create_app
from .limits import RateLimit
from .openapi import openapi_document, render_openapi
from .run import Listen, parse_listen, serve
from .worker import VaultWorker

__all__ = [
    "Listen",
    "RateLimit",
    "ServerConfig",
    "VaultWorker",
    "create_app",
    "openapi_document",
    "parse_listen",
    "render_openapi",
    "serve",
]
