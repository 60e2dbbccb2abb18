"""Routing: recipient domain -> :class:`Route` (ordered MX hosts, site, relay settings).

See :mod:`bulksend.routing.mx` for MX resolution and its cache, and
:mod:`bulksend.routing.routes` for sites, overrides, smarthost mode and policy lookup.
"""

from __future__ import annotations

from bulksend.routing.config import Credentials, Relay, RoutingConfig
from bulksend.routing.errors import PermanentRoutingError, RoutingError, TransientRoutingError
from bulksend.routing.mx import (
    MXHost,
    MXResolver,
    MXSet,
    Records,
    is_acceptable_address,
    normalize_domain,
    system_nameservers,
)
from bulksend.routing.routes import PolicyTable, Route, Router, Site, route_all

__all__ = [
    "Credentials",
    "MXHost",
    "MXResolver",
    "MXSet",
    "PermanentRoutingError",
    "PolicyTable",
    "Records",
    "Relay",
    "Route",
    "Router",
    "RoutingConfig",
    "RoutingError",
    "Site",
    "TransientRoutingError",
    "is_acceptable_address",
    "normalize_domain",
    "route_all",
    "system_nameservers",
]
