"""Fixtures for routing tests: configs pointed at the DNS server (tests/conftest.py), a clock
that can jump."""

from __future__ import annotations

from typing import Any, Protocol

import pytest
import trio.testing

from bulksend.routing import RoutingConfig
from bulksend.testing.dns import DNSServer


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real-time pace (so socket deadlines still work), plus ``clock.jump()`` for TTLs."""
    return trio.testing.MockClock(rate=1.0)


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
