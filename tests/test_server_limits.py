"""The server's pieces that need no server: the failed-login buckets (driven by a fake
clock), the token id it logs, the error -> status mapping, listen addresses, the
worker's pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import shredvault
from shredvault import Vault, VaultError
from shredvault.server.limits import LoginLimiter, RateLimit, TokenBucket, token_id_of
from shredvault.server.run import check_transport, parse_listen
from shredvault.server.status import STATUSES, status_for
from shredvault.server.worker import DEFAULT_THREADS, VaultWorker, default_threads


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_empties_after_the_burst_and_refills_with_time() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(burst=2, per_minute=6), clock=clock)
    bucket.take("a")
    bucket.take("a")
    assert not bucket.has_room("a") and bucket.has_room("b")
    clock.now = 10.0  # 6 per minute: one try back every 10 s
    assert bucket.has_room("a")


def test_the_bucket_table_stays_bounded_by_forgetting_the_oldest() -> None:
    bucket = TokenBucket(RateLimit(burst=1, per_minute=0.01), max_keys=3, clock=Clock())
    for key in "abcd":
        bucket.take(key)
    assert bucket.has_room("a")  # forgotten: a fresh bucket
    assert not bucket.has_room("d")


def test_a_limiter_refuses_by_token_id_or_by_address() -> None:
    limiter = LoginLimiter(RateLimit(burst=1, per_minute=0.01), clock=Clock())
    limiter.failed("id1", "10.0.0.1")
    assert not limiter.allows("id1", "10.0.0.2")
    assert not limiter.allows("id2", "10.0.0.1")
    assert limiter.allows("id2", "10.0.0.2")


def test_the_logged_token_id_holds_neither_the_token_nor_its_secret() -> None:
    token = "svp_abcdefghijkl_s3cr3tS3cr3t"
    logged = token_id_of(token)
    assert len(logged) == 12 and "abcdefghijkl" not in logged and "s3cr3t" not in logged
    assert token_id_of("garbage") == "malformed"


def test_every_library_error_has_a_status_and_denial_beats_schema() -> None:
    errors = [
        getattr(shredvault, name)
        for name in shredvault.__all__
        if isinstance(getattr(shredvault, name), type)
        and issubclass(getattr(shredvault, name), VaultError)
    ]
    assert all(any(issubclass(e, kind) for kind, _ in STATUSES) for e in errors)
    assert status_for(shredvault.PurposeError("no")) == 403
    assert status_for(shredvault.ShreddedError("gone")) == 410
    assert status_for(shredvault.NotFoundError("no")) == 404
    assert status_for(shredvault.SchemaError("bad")) == 422


@pytest.mark.parametrize(
    ("text", "loopback"),
    [("127.0.0.1:8470", True), ("[::1]:1", True), ("localhost:80", True), ("0.0.0.0:8470", False)],
)
def test_listen_addresses_parse_and_only_loopback_may_go_without_tls(
    text: str, loopback: bool
) -> None:
    listen = parse_listen(text)
    assert listen.loopback is loopback
    if not loopback:
        with pytest.raises(shredvault.SchemaError):
            check_transport(listen, tls=False, insecure_no_tls=False)
        check_transport(listen, tls=True, insecure_no_tls=False)
        check_transport(listen, tls=False, insecure_no_tls=True)


# "²" passes str.isdigit() but int("²") raised ValueError ("a bug in shredvault")
@pytest.mark.parametrize(
    "text", ["8470", "host:", ":80", "h:99999", "h:-1", "h:\u00b2", "h:\u0661", "h:" + "1" * 5000]
)
def test_a_malformed_listen_address_is_a_schema_error(text: str) -> None:
    with pytest.raises(shredvault.SchemaError):
        parse_listen(text)


def test_the_worker_defaults_to_one_thread_on_sqlite_and_runs_calls_on_its_pool(
    tmp_path: Path, keyfile: Path, backend: str | None
) -> None:
    with Vault.create(tmp_path / "vault", keyfile=keyfile, data_url=backend) as vault:
        worker = VaultWorker(vault)
        expected = 1 if backend is None else DEFAULT_THREADS
        assert default_threads(vault) == expected
        assert vault.backend == ("sqlite" if backend is None else "postgresql")
        seq = asyncio.run(worker.run(lambda: vault.head.seq))
        worker.close()
        assert vault.head.seq > seq  # the checkpoint at shutdown
        with pytest.raises(ValueError, match="at least 1"):
            VaultWorker(vault, threads=0)
