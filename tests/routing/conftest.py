"""Fixtures for routing tests: configs pointed at the DNS server (tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from bulksend.routing import RoutingConfig
from bulksend.testing.dns import DNSServer


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
