"""Routing settings: frozen dataclasses, built once by the caller (the CLI or a test)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bulksend.config import Secret, TlsMode
from bulksend.config.values import parse_nameserver, parse_port
from bulksend.errors import ConfigError

__all__ = ["Relay", "RoutingConfig"]


def _check_port(port: int, what: str) -> None:
    try:
        parse_port(port)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A relay's AUTH user name and password (smarthost or override); never shown."""

    username: str
    password: Secret


@dataclass(frozen=True, slots=True)
class Relay:
    """A next hop chosen by configuration instead of by MX lookup.

    Used for route overrides (like a Postfix transport map entry ``smtp:[host]:port``) and for
    smarthost mode. ``host`` is a host name (resolved by A/AAAA, never by MX) or an IP address
    (no DNS at all). ``auth`` rides on the relay's routes to the SMTP client; routing never
    reads it.
    ``tls`` is the relay's own STARTTLS setting (the smarthost's), carried on its routes; None
    leaves it to the policy.
    """

    host: str
    port: int = 25
    auth: Credentials | None = None
    tls: TlsMode | None = None

    def __post_init__(self) -> None:
        if not self.host or self.host != self.host.strip():
            raise ConfigError(f"relay host {self.host!r} is empty or has spaces")
        _check_port(self.port, f"relay {self.host}")

    @property
    def address(self) -> str | None:
        """The host as a normalised IP address, or None when it is a name."""
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """How domains become routes.

    Attributes:
        nameservers: IP addresses of the recursive resolvers to ask. The CLI fills this in
            (see :func:`bulksend.routing.mx.system_nameservers`); code below it never reads
            ``/etc/resolv.conf`` itself.
        dns_port: the resolvers' port (53; tests use the test server's port).
        timeout: seconds for one DNS lookup (one name and type), retries included.
        ttl_min, ttl_max: every cached answer, positive or negative, lives at least ``ttl_min``
            and at most ``ttl_max`` seconds whatever its DNS TTL says. ``ttl_min`` defaults to
            0: the TTL is honoured (RFC 1035 §3.2.1: TTL 0 means "do not cache"), only capped.
        failure_ttl: seconds a SERVFAIL or timeout is remembered (RFC 2308 §7.1: at most five
            minutes), so a burst of recipients for a broken domain asks DNS once; 0 disables.
        cache_size: the most answers kept; the least recently used beyond that are dropped.
        allow_private: accept MX addresses in loopback, private, link-local and other
            non-global ranges. Off by default so a hostile DNS entry cannot aim the sender at
            internal services; tests and the demo turn it on.
        ipv6: ask for AAAA records too.
        smtp_port: the port MX hosts are contacted on (25; the demo uses its test server's).
        max_mx_hosts: the most MX hosts resolved and tried per domain, lowest preference first.
        overrides: domain (U- or A-label) -> relay, skipping MX lookup for that domain.
        smarthost: when set, every domain goes through this relay and DNS is never asked.
        dnssec: the nameservers are validating resolvers on a trusted path: queries carry
            the DO bit and an answer with AD set is trusted (DANE TLSA, RFC 7672 §2.1.1).
        mta_sts: look up and apply the recipient domains' MTA-STS policies (RFC 8461).
    """

    nameservers: tuple[str, ...] = ()
    dns_port: int = 53
    timeout: float = 10.0
    ttl_min: float = 0.0
    ttl_max: float = 86400.0
    failure_ttl: float = 30.0
    cache_size: int = 100_000
    allow_private: bool = False
    ipv6: bool = True
    smtp_port: int = 25
    max_mx_hosts: int = 10
    overrides: Mapping[str, Relay] = field(default_factory=dict)
    smarthost: Relay | None = None
    dnssec: bool = False
    mta_sts: bool = True

    def __post_init__(self) -> None:
        for server in self.nameservers:
            try:
                parse_nameserver(server)
            except ValueError as exc:
                raise ConfigError(f"nameserver {exc}") from None
        _check_port(self.dns_port, "dns_port")
        _check_port(self.smtp_port, "smtp_port")
        if self.timeout <= 0:
            raise ConfigError(f"routing timeout must be positive, not {self.timeout}")
        if not 0 <= self.ttl_min <= self.ttl_max:
            raise ConfigError(f"need 0 <= ttl_min <= ttl_max, got {self.ttl_min}, {self.ttl_max}")
        if not 0 <= self.failure_ttl <= 300:
            raise ConfigError(
                f"failure_ttl must be in 0..300 (RFC 2308 §7.1), not {self.failure_ttl}"
            )
        if self.cache_size < 1:
            raise ConfigError(f"cache_size must be at least 1, not {self.cache_size}")
        if self.max_mx_hosts < 1:
            raise ConfigError(f"max_mx_hosts must be at least 1, not {self.max_mx_hosts}")
