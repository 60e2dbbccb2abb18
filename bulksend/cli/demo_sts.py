"""The demo's MTA-STS domain (RFC 8461): ``example-sts.test`` publishes an ``enforce`` policy.

How this works: the domain's site (``example-sts``, on 127.0.0.9) offers STARTTLS with a
certificate for its MX host ``mx1.example-sts.test`` from a :class:`ThrowawayCA` made when the
demo starts. The demo's DNS server publishes ``_mta-sts.example-sts.test`` TXT and
``mta-sts.example-sts.test`` on 127.0.0.1, where a local HTTPS server
(:mod:`bulksend.testing.https`, a certificate from the same CA) serves the policy file. The
run trusts the CA through its options only (the policy fetch and the SMTP client's verified
TLS), so the domain's mail goes through the real MTA-STS path: fetch, enforce, verified
STARTTLS. The run's TLS state file is the demo directory's, not the user's.
"""

from __future__ import annotations

import dataclasses
import datetime
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from bulksend.delivery.run import RunOptions
from bulksend.journal.outcomes import Status
from bulksend.testing.certs import ThrowawayCA
from bulksend.testing.https import open_policy_server, policy_response
from bulksend.testing.scenario import SiteSpec, World
from bulksend.testing.smtp import ServerScript
from bulksend.tlspolicy import FetchSettings, TlsState
from bulksend.tlspolicy.tlsrpt import SUCCESS

__all__ = ["STS_DOMAIN", "StsDemo", "sts_addresses"]

STS_DOMAIN: Final = "example-sts.test"
_SITE: Final = SiteSpec("example-sts", (STS_DOMAIN,), "127.0.0.9")
_MODE: Final = "enforce"


def sts_addresses(count: int) -> list[str]:
    """The MTA-STS domain's recipients: one in a hundred of ``count``, at least three."""
    return [f"reader-sts{i}@{STS_DOMAIN}" for i in range(max(3, count // 100))]


class StsDemo:
    """The MTA-STS domain's site, certificates and policy server."""

    def __init__(self, directory: Path) -> None:
        self.ca = ThrowawayCA()
        (mx,) = _SITE.mx_names()
        script = ServerScript(hostname=mx, tls_context=self.ca.server_context(mx), record=False)
        self.site = dataclasses.replace(_SITE, script=script)
        self.state = directory / "tls-state.sqlite3"
        self._client: ssl.SSLContext = self.ca.client_context()
        self._fetch = FetchSettings(ssl_context=self._client)
        self._days: set[str] = set()

    @asynccontextmanager
    async def serving(self, world: World) -> AsyncIterator[None]:
        """Serve the policy file and publish the policy in ``world``'s DNS."""
        host = f"mta-sts.{STS_DOMAIN}"
        (mx,) = _SITE.mx_names()
        async with open_policy_server(self.ca.server_context(host)) as server:
            server.responses[host] = policy_response(_MODE, [mx])
            world.dns.load(
                {
                    f"_mta-sts.{STS_DOMAIN}": {"TXT": ['"v=STSv1; id=demo1"']},
                    host: {"A": ["127.0.0.1"]},
                }
            )
            self._fetch = FetchSettings(ssl_context=self._client, port=server.port)
            self._days.add(_today())
            try:
                yield
            finally:
                self._days.add(_today())

    def options(self, options: RunOptions) -> RunOptions:
        """``options`` with the CA trusted for the policy fetch (to the policy server, while
        :meth:`serving`) and for verified TLS, and the demo's TLS state file."""
        return dataclasses.replace(
            options, ssl_verified=self._client, sts_fetch=self._fetch, tls_state=self.state
        )

    def summary(self, by_domain: Mapping[str, Mapping[Status, int]]) -> str:
        """One line: the domain's policy, its recipients delivered, its TLS sessions."""
        ok = failed = 0
        if self.state.exists():
            store = TlsState(self.state)
            try:
                for day in sorted(self._days):
                    for key, sessions in store.sessions(day):
                        if key.domain == STS_DOMAIN and key.result == SUCCESS:
                            ok += sessions
                        elif key.domain == STS_DOMAIN:
                            failed += sessions
            finally:
                store.close()
        delivered = by_domain.get(STS_DOMAIN, {}).get(Status.DELIVERED, 0)
        return (
            f"{STS_DOMAIN}: MTA-STS {_MODE}, {delivered:,} delivered over verified TLS "
            f"({ok:,} sessions, {failed:,} TLS failures)\n"
        )


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()
