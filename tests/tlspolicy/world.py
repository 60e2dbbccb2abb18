"""A delivery world with MTA-STS: sites on 127.0.0.x, the test DNS server publishing
``_mta-sts`` TXT records and ``mta-sts.<domain>`` on 127.0.0.1, and a local HTTPS server
(trustme certificates) serving the policy files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from bulksend.delivery.run import RunOptions
from bulksend.testing.https import PolicyServer, Response, open_policy_server
from bulksend.testing.scenario import SiteSpec, World, running
from bulksend.testing.smtp import SMTPServer
from bulksend.tlspolicy import FetchSettings
from tests.helpers.tls import client_context, server_context
from tests.helpers.worlds import run_options


@dataclass
class StsWorld:
    world: World
    policies: PolicyServer
    ca: trustme.CA

    def options(self, tmp_path: Path, **changes: Any) -> RunOptions:
        """Run options against this world: the test CA trusted for SMTP and for the policy
        fetch (to this world's HTTPS port), a TLS state file in ``tmp_path``."""
        settings: dict[str, Any] = {
            "ssl_verified": client_context(self.ca),
            "sts_fetch": FetchSettings(
                ssl_context=client_context(self.ca), port=self.policies.port
            ),
            "tls_state": tmp_path / "tls-state.sqlite3",
            "grace": 2,
        }
        settings.update(changes)
        return run_options(tmp_path, self.world, **settings)

    def publish(self, domain: str, policy_id: str, response: Response | None) -> None:
        """Publish ``domain``'s MTA-STS TXT record with ``policy_id``, its policy host, and
        (unless None) the policy file the HTTPS server answers."""
        self.world.dns.load(
            {
                f"_mta-sts.{domain}": {"TXT": [f'"v=STSv1; id={policy_id}"']},
                f"mta-sts.{domain}": {"A": ["127.0.0.1"]},
            }
        )
        if response is None:
            self.policies.responses.pop(f"mta-sts.{domain}", None)
        else:
            self.policies.responses[f"mta-sts.{domain}"] = response


@asynccontextmanager
async def sts_world(
    ca: trustme.CA, sites: Sequence[SiteSpec], policy_domains: Sequence[str]
) -> AsyncIterator[StsWorld]:
    """Run ``sites`` and an HTTPS policy server with a certificate for every
    ``mta-sts.<domain>`` of ``policy_domains``."""
    context = server_context(ca, *(f"mta-sts.{d}" for d in policy_domains))
    async with running(sites) as world, open_policy_server(context) as policies:
        yield StsWorld(world, policies, ca)


def plaintext_mail(server: SMTPServer) -> list[bytes]:
    """Every MAIL/RCPT/DATA command the server received outside TLS, on any connection."""
    found = []
    for record in server.connections:
        clear = bytes(record.received[: record.tls_offset])
        found += [line for line in clear.split(b"\r\n") if line[:4] in (b"MAIL", b"RCPT", b"DATA")]
    return found
