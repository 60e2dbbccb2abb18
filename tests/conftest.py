"""Fixtures every test gets, and the shared ones: the test CA and its TLS contexts, a loopback
DNS server, clocks (one that can jump, one that runs fast)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio.testing
import trustme

from bulksend.testing.dns import DNSServer, open_dns_server
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
