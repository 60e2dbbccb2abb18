"""Egress sources over real sockets: each source's connections leave from its own address, and
a site's limits hold per (site, source) unless declared for the whole site."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Journal, Status
from bulksend.metrics import Metrics
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript, Session, SMTPServer
from tests.helpers.worlds import run_options

SOURCES = """
[[egress.source]]
name = "ip2"
address = "127.0.0.2"
ehlo = "mta2.sender.test"

[[egress.source]]
name = "ip3"
address = "127.0.0.3"
ehlo = "mta3.sender.test"

[egress.pool.main]
sources = ["ip2", "ip3"]
"""


async def send(
    tmp_path: Path, sites: Sequence[SiteSpec], recipients: list[str], policy: str
) -> tuple[RunSummary, World]:
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(60):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2)
            )
    return summary, world


def peak_connections(server: SMTPServer, peer: str | None = None) -> int:
    """The most connections open at once (from ``peer`` only, when given)."""
    events = []
    for c in server.connections:
        if peer is None or c.peer[0] == peer:
            assert c.closed_at is not None
            events += [(c.opened_at, 1), (c.closed_at, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # a close before an open at the same instant
    return max(itertools.accumulate(d for _t, d in events), default=0)


def rate(times: list[float]) -> float:
    """Messages a second, first to last."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def by_peer(server: SMTPServer) -> dict[str, list[float]]:
    found: dict[str, list[float]] = collections.defaultdict(list)
    for t in server.transactions:
        found[t.peer].append(t.time)
    return found


LIMITS = """
[policy.defaults]
pool = "main"
max_connections = 2
rate = "50/s"
"""


async def test_limits_hold_per_source_address(tmp_path: Path) -> None:
    sites = [SiteSpec("paced", ("p.test",), "127.0.0.20")]
    summary, world = await send(tmp_path, sites, addresses(["p.test"], 200), LIMITS + SOURCES)
    server = world.servers["paced"]
    assert summary.counts[Status.DELIVERED] == 200
    times = by_peer(server)
    assert set(times) == {"127.0.0.2", "127.0.0.3"}
    for peer, sent in times.items():
        # Each source address is a client of its own to the receiver: 2 connections, 50/s.
        assert peak_connections(server, peer) <= 2
        assert rate(sent) == pytest.approx(50, rel=0.1)
        assert len(sent) == pytest.approx(100, abs=20)
    # Together: twice the site's limits, as the receiver counts per address.
    assert peak_connections(server) > 2
    assert rate(server.stats.message_times) == pytest.approx(100, rel=0.15)


async def test_scope_site_holds_the_limits_in_total(tmp_path: Path) -> None:
    sites = [SiteSpec("paced", ("p.test",), "127.0.0.20")]
    policy = LIMITS + 'scope = "site"\n' + SOURCES
    summary, world = await send(tmp_path, sites, addresses(["p.test"], 100), policy)
    server = world.servers["paced"]
    assert summary.counts[Status.DELIVERED] == 100
    assert set(by_peer(server)) == {"127.0.0.2", "127.0.0.3"}
    assert peak_connections(server) <= 2
    assert rate(server.stats.message_times) == pytest.approx(50, rel=0.1)


async def test_each_source_says_its_own_ehlo_name(tmp_path: Path) -> None:
    # One connection at a time, five messages each: the pool's two sources take turns.
    sites = [SiteSpec("plain", ("q.test",), "127.0.0.20", ServerScript(record_wire=True))]
    policy = (
        """
[policy.defaults]
pool = "main"
scope = "site"
max_connections = 1
messages_per_connection = 5
"""
        + SOURCES
    )
    summary, world = await send(tmp_path, sites, addresses(["q.test"], 20), policy)
    assert summary.counts[Status.DELIVERED] == 20
    server = world.servers["plain"]
    said = [(c.peer[0], bytes(c.received).split(b"\r\n")[0]) for c in server.connections]
    assert (
        said
        == [
            ("127.0.0.2", b"EHLO mta2.sender.test"),
            ("127.0.0.3", b"EHLO mta3.sender.test"),
        ]
        * 2
    )


async def test_without_egress_connections_leave_from_the_default_address(
    tmp_path: Path,
) -> None:
    sites = [SiteSpec("plain", ("q.test",), "127.0.0.20")]
    summary, world = await send(tmp_path, sites, addresses(["q.test"], 10), "")
    assert summary.counts[Status.DELIVERED] == 10
    assert {t.peer for t in world.servers["plain"].transactions} == {"127.0.0.1"}


def blocks(listed: str, at: str = "MAIL") -> ServerScript:
    """A receiver that refuses mail from ``listed`` (its IP is on a blocklist), in its reply
    to ``at`` (``GREETING``: refusing the connection)."""

    def hook(session: Session, verb: str, arg: str) -> str | None:
        if verb == at and session.record.peer[0] == listed:
            code = 550 if at == "MAIL" else 554
            host = f"Client host [{listed}]"
            return f"{code} 5.7.1 Service unavailable; {host} blocked using zen.spamhaus.org"
        return None

    return ServerScript(hook=hook)


def backoff_events(metrics: Metrics) -> set[tuple[str, str]]:
    """(the lane's last word, action) of every backoff event counted."""
    return {
        (s.labels["site"].rsplit(" ", 1)[-1], s.labels["action"])
        for family in metrics.registry.collect()
        if family.name == "bulksend_backoff_events"
        for s in family.samples
        if s.name.endswith("_total") and s.value > 0
    }


@pytest.mark.parametrize("at", ["MAIL", "GREETING"])
@pytest.mark.parametrize("scope", ["source", "site"])
async def test_a_blocked_source_backs_off_alone_and_the_other_carries_the_site(
    tmp_path: Path, at: str, scope: str
) -> None:
    # The block comes in the reply to MAIL, or in the greeting; the site's limits hold per
    # source (a lane each) or for the site (one lane whose connections take turns).
    sites = [SiteSpec("picky", ("b.test",), "127.0.0.20", blocks("127.0.0.2", at))]
    recipients = addresses(["b.test"], 60)
    policy = f'[policy.defaults]\npool = "main"\nscope = "{scope}"\nmax_connections = 2\n'
    policy += SOURCES
    metrics = Metrics()
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(60):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2), metrics=metrics
            )
    server = world.servers["picky"]
    # Nobody bounced for the source's listing: everyone went out from the other address.
    assert summary.counts[Status.DELIVERED] == 60
    assert sorted(server.received()) == sorted(recipients)
    assert {t.peer for t in server.transactions} == {"127.0.0.3"}
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        assert {s.attempts for s in journal.iter_states()} == {1}
    # The blocked source stopped after its first refusals; the other never backed off (nor,
    # with scope "site", the site: only the blocked source sits out).
    refused = [c for c in server.connections if c.peer[0] == "127.0.0.2"]
    assert 1 <= len(refused) <= 2
    assert backoff_events(metrics) == ({("ip2", "suspend")} if scope == "source" else set())
