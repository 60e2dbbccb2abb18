"""TLS material from a test CA (trustme): a server's context for some names, a client's trust.

The CA is the ``ca`` fixture of tests/conftest.py, one per session. No system trust store holds
it: a client that does not trust it through :func:`client_context` sees an unknown issuer.
"""

from __future__ import annotations

import ssl

import trustme


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server's context with a certificate from ``ca`` for ``names`` (host names or IPs)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client's context (the system's defaults) that also trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context
