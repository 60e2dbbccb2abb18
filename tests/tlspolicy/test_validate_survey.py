"""``validate`` shows which TLS policy the largest recipient domains publish (MTA-STS, DANE)."""

from __future__ import annotations

from pathlib import Path

import trio
import trustme
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.routing import RoutingConfig
from bulksend.testing.dns import open_dns_server
from bulksend.testing.https import policy_response
from bulksend.testing.scenario import SiteSpec, addresses, write_campaign
from bulksend.tlspolicy import FetchSettings
from bulksend.tlspolicy.survey import survey
from tests.helpers.tls import client_context
from tests.tlspolicy.world import sts_world

STS_ZONES = {
    "_mta-sts.strict.test": {"TXT": ['"v=STSv1; id=42"']},
    "mta-sts.strict.test": {"A": ["127.0.0.1"]},
    "strict.test": {"MX": [(10, "mx1.site.test")]},
    "plain.test": {"MX": [(10, "mx1.site.test")]},
    "mx1.site.test": {"A": ["127.0.0.2"]},
    "_25._tcp.mx1.site.test": {"TLSA": ["3 1 1 " + "ab" * 32], "secure": True},
}


async def test_survey_names_each_domains_policy(ca: trustme.CA) -> None:
    sites = [SiteSpec("site", ("plain.test",), "127.0.0.2")]
    async with sts_world(ca, sites, ["strict.test"]) as world:
        world.world.dns.load(STS_ZONES)
        world.policies.responses["mta-sts.strict.test"] = policy_response(
            "enforce", ["*.site.test"]
        )
        config = RoutingConfig(
            nameservers=("127.0.0.1",),
            dns_port=world.world.dns_port,
            allow_private=True,
            dnssec=True,
        )
        fetch = FetchSettings(ssl_context=client_context(ca), port=world.policies.port)
        with trio.fail_after(20):
            lines = await survey(config, ["strict.test", "plain.test"], fetch=fetch)
    assert lines == [
        "strict.test: MTA-STS enforce (mx: *.site.test), max_age 86400s; "
        "DANE on mx1.site.test (1 TLSA)",
        "plain.test: no MTA-STS policy; DANE on mx1.site.test (1 TLSA)",
    ]


async def test_validate_shows_the_policies_of_the_largest_domains(tmp_path: Path) -> None:
    recipients = addresses(["strict.test"], 3) + addresses(["plain.test"], 2)
    path = write_campaign(tmp_path, recipients)
    async with open_dns_server(STS_ZONES) as dns:
        with trio.fail_after(30):
            result = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(
                    cli,
                    [
                        "validate",
                        str(path),
                        "--nameserver",
                        "127.0.0.1",
                        "--dns-port",
                        str(dns.port),
                    ],
                )
            )
    out = result.stdout
    # Port 443 on loopback serves no policy: the published one is named as unusable.
    assert (
        "ok: TLS policy: strict.test: MTA-STS published (id 42) but its policy is unusable" in out
    )
    assert "ok: TLS policy: plain.test: no MTA-STS policy" in out
    assert out.index("TLS policy: strict.test") < out.index("TLS policy: plain.test")
