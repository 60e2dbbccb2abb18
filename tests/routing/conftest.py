"""Fixtures for routing tests: a loopback DNS server and a clock that can jump."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
import trio.testing

from bulksend.routing import RoutingConfig
from bulksend.testing.dns import DNSServer, open_dns_server

ZONES: dict[str, dict[str, Any]] = {
    "example.com": {"MX": [(10, "mx1.example.com"), (20, "mx2.example.com")], "ttl": 300},
    "mx1.example.com": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
    "mx2.example.com": {"A": ["127.0.0.12"]},
}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real-time pace (so socket deadlines still work), plus ``clock.jump()`` for TTLs."""
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    async with open_dns_server(ZONES, negative_ttl=120) as server:
        yield server


class ConfigFactory(Protocol):
    def __call__(self, **changes: Any) -> RoutingConfig: ...


@pytest.fixture
def make_config(dns_server: DNSServer) -> ConfigFactory:
    """Configs pointed at the test server; private addresses allowed unless said otherwise."""

    def make(**changes: Any) -> RoutingConfig:
        settings: dict[str, Any] = {
            "nameservers": ("127.0.0.1",),
            "dns_port": dns_server.port,
            "timeout": 5.0,
            "allow_private": True,
        }
        settings.update(changes)
        return RoutingConfig(**settings)

    return make
