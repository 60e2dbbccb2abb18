"""Fixtures every test gets, and the shared ones: the test CA and its TLS contexts, a loopback
DNS server, clocks (one that can jump, one that runs fast), and the shared stores' real
servers (PostgreSQL, Redis/Valkey: one temporary server each per session, on loopback,
skipped with the reason shown where the binaries are missing)."""

from __future__ import annotations

import itertools
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio.testing
import trustme

from bulksend.testing.dns import DNSServer, open_dns_server
from tests.helpers.redis import RedisServer, server_binary
from tests.helpers.tls import client_context, server_context

#: The zones of ``dns_server``: example.com's MX hosts, one with an IPv6 address.
ZONES: dict[str, dict[str, Any]] = {
    "example.com": {"MX": [(10, "mx1.example.com"), (20, "mx2.example.com")], "ttl": 300},
    "mx1.example.com": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
    "mx2.example.com": {"A": ["127.0.0.12"]},
}


@pytest.fixture(autouse=True)
def sent_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own record of sent campaigns (never the user's state directory)."""
    path = tmp_path / "state" / "sent.jsonl"
    monkeypatch.setenv("BULKSEND_SENT_RECORD", str(path))
    monkeypatch.setenv("BULKSEND_TLS_STATE", str(tmp_path / "state" / "tls-state.sqlite3"))
    return path


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA: it issues every test certificate; no system trust store holds it."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server's context, its certificate for mx.test, 127.0.0.1 and 127.0.0.2."""
    return server_context(ca, "mx.test", "127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client's context that trusts the test CA."""
    return client_context(ca)


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    """The test DNS server on loopback, serving ``ZONES`` (negative answers cached 120 s)."""
    async with open_dns_server(ZONES, negative_ttl=120) as server:
        yield server


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real-time pace (so socket deadlines still work), plus ``clock.jump()`` past TTLs.

    pytest-trio runs a test that requests it on this clock.
    """
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
def fast_clock() -> trio.testing.MockClock:
    """Trio time ten times faster than real time, for whole runs whose subject is time (retry,
    expiry, backoff windows): a 3 s max_age passes in 0.3 s, and so does every deadline.

    Not autojump: a run waits on its journal writer's thread, which autojump takes for idle
    time and answers by firing the next deadline (the test's own ``fail_after``).
    """
    return trio.testing.MockClock(rate=10.0)


# ------------------------------------------------------------------ shared stores

_DATABASES = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One temporary PostgreSQL server for the session."""
    yield from _temporary_postgres()


@pytest.fixture(scope="module")
def own_postgres_server() -> Iterator[Any]:
    """A temporary PostgreSQL server of the test module's own: for tests that stop or restart
    it (the session's is shared)."""
    yield from _temporary_postgres()


def _temporary_postgres() -> Iterator[Any]:
    try:
        from tests.helpers.postgres import PostgresServer, find_bindir  # noqa: PLC0415
    except ImportError as e:
        pytest.skip(f"psycopg is not installed ({e}): pip install -e '.[test]'")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine")
    server = PostgresServer.start(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh database's URL for this test (no campaign yet)."""
    # Unique (a counter) and recognisable (the test's name) in the server's list.
    name = f"t{next(_DATABASES)}_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[-40:]
    return str(postgres_server.new_database(name))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip(
            "neither redis-server nor valkey-server is installed (apt-get install redis-server)"
        )
    server = RedisServer(binary, Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()
