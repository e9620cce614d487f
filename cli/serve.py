"""``shredvault serve``: unlock the vault once and serve it over HTTP
(:mod:`shredvault.server`, the optional ``[server]`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..vault import Auditor
from .context import (
    open_vault,
    resolve_credential,
    settings_of,
    store_options,
    unlock_options,
)

if TYPE_CHECKING:
    from ..server import ServerConfig
    from ..server.run import Listen

__all__ = ["serve_command"]


@click.command("serve")
@click.option(
    "--listen",
    default="127.0.0.1:8470",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen. A non-loopback address needs TLS (or --insecure-no-tls).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="TLS certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="TLS private key (PEM).",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    help="Serve a non-loopback address in clear (only behind a TLS-terminating proxy).",
)
@click.option(
    "--max-body",
    type=click.IntRange(1024, 64 << 20),
    default=2 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest request body accepted (413 past it).",
)
@click.option(
    "--login-burst",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    metavar="N",
    help="Failed logins allowed at once per token id and per client address (then 429).",
)
@click.option(
    "--login-per-minute",
    type=click.FloatRange(0.01, 10_000),
    default=10.0,
    show_default=True,
    metavar="N",
    help="How fast that allowance refills.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    metavar="N",
    help="Vault calls run at once, on threads sharing the open vault "
    "[default: 1 on SQLite (one writer), 8 on PostgreSQL].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="Server processes sharing the listening socket, each unlocking the vault "
    "itself (N > 1 on PostgreSQL only).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="The server's own log (stderr): route templates, statuses, failed logins.",
)
@store_options
@unlock_options
@click.pass_context
def serve_command(
    ctx: click.Context,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_no_tls: bool,
    max_body: int,
    login_burst: int,
    login_per_minute: float,
    threads: int | None,
    workers: int,
    log_level: str,
) -> None:
    """Serve the vault as a JSON HTTP API until stopped (SIGINT/SIGTERM).

    Unlocks once (passphrase from --passphrase-file, SHREDVAULT_PASSPHRASE or a
    prompt; or --keyfile); then each request acts as the principal its bearer token
    names, through the same gate and log as the library. On shutdown it signs a
    checkpoint. API: docs/server.md and GET /openapi.json.
    """
    try:
        from ..server import RateLimit, ServerConfig, parse_listen, serve
        from ..server.run import check_transport
    except ImportError:
        raise click.UsageError(
            "serve needs the server extra: pip install 'shredvault[server]'"
        ) from None
    where = parse_listen(listen)
    check_transport(where, tls=tls_cert is not None, insecure_no_tls=insecure_no_tls)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ServerConfig(max_body=max_body, login_limit=RateLimit(login_burst, login_per_minute))
    settings = settings_of(ctx)
    if workers > 1:
        ctx.exit(
            serve_processes(
                ctx, workers, where, tls_cert, tls_key, insecure_no_tls, config, threads, log_level
            )
        )
    with open_vault(ctx, serving=True) as vault:
        serve(
            vault,
            where,
            root=settings.require_vault(),
            data_url=settings.data_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure_no_tls=insecure_no_tls,
            config=config,
            threads=threads,
        )


def serve_processes(
    ctx: click.Context,
    workers: int,
    where: Listen,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_no_tls: bool,
    config: ServerConfig,
    threads: int | None,
    log_level: str,
) -> int:
    """``--workers N``: check the data store is PostgreSQL without unlocking, read the
    credential once, and let :func:`run_workers` start the processes (each unlocks)."""
    from ..server.processes import WorkerSpec, run_workers

    settings = settings_of(ctx)
    root = settings.require_vault()
    with Auditor.open(root, data_url=settings.data_url) as auditor:
        backend = auditor.backend
    if backend != "postgresql":
        raise click.UsageError(
            f"--workers {workers} needs a PostgreSQL data store; this vault's is {backend}, "
            "which has one writer: serve it with one process (--threads, docs/server.md)"
        )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give both --tls-cert and --tls-key")
    settings.acting_token()
    credential = resolve_credential(settings)
    spec = WorkerSpec(
        root=Path(root),
        data_url=settings.data_url,
        unlock=credential.kwargs(),
        listen=where,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_no_tls=insecure_no_tls,
        config=config,
        threads=threads,
        log_level=log_level,
    )
    return run_workers(spec, workers)
