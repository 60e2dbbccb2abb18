"""Provider-wide limits over real sockets: every site that matches one provider shares its
rate, its connection cap and its backoff, in addition to each site's own limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.journal import Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript, Session, SMTPServer
from tests.egress.test_sources import peak_connections, rate
from tests.helpers.worlds import run_options

# Two sites with MX sets of their own (mx1.t1.big.test, mx1.t2.big.test), one provider.
SITES = [
    SiteSpec("t1.big", ("one.test",), "127.0.0.20"),
    SiteSpec("t2.big", ("two.test",), "127.0.0.21"),
]
PROVIDER = """
[policy.providers.big]
match = ["big.test"]
max_connections = 2
rate = "40/s"
"""


async def deliver(
    tmp_path: Path, sites: list[SiteSpec], policy: str, count: int
) -> list[SMTPServer]:
    recipients = addresses(["one.test", "two.test"], count)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(60):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2)
            )
    assert summary.counts[Status.DELIVERED] == count
    return list(world.servers.values())


def merged(servers: list[SMTPServer]) -> SMTPServer:
    """One server's records holding every server's connections and messages."""
    total = SMTPServer()
    for server in servers:
        total.connections += server.connections
        total.stats.message_times += server.stats.message_times
    return total


async def test_two_sites_of_one_provider_share_its_limits(tmp_path: Path) -> None:
    servers = await deliver(tmp_path, SITES, PROVIDER, 120)
    both = merged(servers)
    assert all(s.stats.messages > 0 for s in servers)
    # Each site alone may open 5 connections at any rate: together they keep the provider's.
    assert peak_connections(both) <= 2
    assert rate(both.stats.message_times) == pytest.approx(40, rel=0.1)


async def test_a_site_outside_the_provider_keeps_its_own_limits(tmp_path: Path) -> None:
    sites = [SITES[0], SiteSpec("other", ("two.test",), "127.0.0.21")]
    servers = await deliver(tmp_path, sites, PROVIDER + '[policy.defaults]\nrate = "40/s"\n', 120)
    # Each at 40/s of its own: together twice the provider's rate.
    assert rate(merged(servers).stats.message_times) == pytest.approx(80, rel=0.15)


async def test_a_provider_backoff_slows_every_site_of_it(tmp_path: Path) -> None:
    # Only site one says "slow down"; the provider's rule suspends both sites for a while.
    busy_at: list[float] = []

    def busy(session: Session, verb: str, arg: str) -> str | None:
        if verb == "MAIL" and not busy_at:
            busy_at.append(trio.current_time())
            return "451 4.7.500 Server busy. Please try again later."
        return None

    sites = [SiteSpec("t1.big", ("one.test",), "127.0.0.20", ServerScript(hook=busy)), SITES[1]]
    policy = (
        PROVIDER.replace('rate = "40/s"', 'rate = "100/s"')
        + """
[[policy.providers.big.backoff]]
code = "451"
enhanced_code = "4.7.500"
suspend = "1s"
duration = "1s"

[policy.defaults]
idle_timeout = "1s"  # a suspended site's end otherwise waits for it (noted in issue 19)

[policy.retry]
initial = "1s"
factor = 1.0
jitter = 0.0
"""
    )
    servers = await deliver(tmp_path, sites, policy, 40)
    # Site two sent nothing from the busy reply (once what was in flight came back) until
    # the suspension ended, a second later.
    times = sorted(servers[1].stats.message_times)
    paused = [t for t in times if busy_at[0] + 0.1 < t < busy_at[0] + 0.9]
    assert paused == []
    assert times[-1] > busy_at[0] + 0.9
