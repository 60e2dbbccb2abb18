"""The delivery engine against test DNS and SMTP servers on 127.0.0.x: limits, rollup,
backoff, isolation, stopping."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import trio
import trustme

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.delivery.scheduler import Scheduler
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
from bulksend.testing.smtp import ServerScript, Session
from tests.helpers.tls import client_context, server_context
from tests.helpers.worlds import run_options

FAST_RETRY = """
[policy.retry]
initial = "1s"
factor = 1.0
maximum = "1s"
jitter = 0.0
max_age = "1h"
"""


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def states(tmp_path: Path) -> dict[str, tuple[Status, int, int]]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: (s.status, s.attempts, s.in_doubt) for s in journal.iter_states()}


async def send(
    tmp_path: Path,
    sites: Sequence[SiteSpec],
    recipients: list[str],
    policy: str,
    *,
    metrics: Metrics | None = None,
    during: object = None,
    deadline: float = 60,
) -> tuple[RunSummary, World]:
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(deadline):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2), metrics=metrics
            )
    return summary, world


async def test_site_rate_and_connection_limits_hold(tmp_path: Path) -> None:
    sites = [SiteSpec("paced", ("p.test",), "127.0.0.2")]
    policy = """
[policy.defaults]
max_connections = 2
rate = "20/s"
"""
    summary, world = await send(tmp_path, sites, addresses(["p.test"], 60), policy)
    server = world.servers["paced"]
    assert summary.counts[Status.DELIVERED] == 60
    assert server.stats.connections_peak <= 2
    times = sorted(server.stats.message_times)
    observed = (len(times) - 1) / (times[-1] - times[0])
    # The token bucket never lets the site go faster than configured, and keeps it busy (a
    # loaded machine may run late, never early).
    assert 20 * 0.8 <= observed <= 20 * 1.05
    gaps = [b - a for a, b in itertools.pairwise(times)]
    window = [times[i + 10] - times[i] for i in range(len(times) - 10)]
    # No burst above the rate over any 10 messages: a late wake-up may send one early token at
    # once, and the sink, in this process, stamps late under load too.
    assert min(window) >= 10 / 20 * 0.85
    assert max(gaps) < 1.0


async def test_domains_sharing_mx_hosts_share_one_site(tmp_path: Path) -> None:
    # Two domains whose MX records list the same hosts in different orders.
    sites = [SiteSpec("shared", ("one.test", "two.test"), "127.0.0.2", mx_hosts=3)]
    policy = """
[policy.defaults]
max_connections = 1
"""
    seen: list[Scheduler] = []
    toml = write_campaign(
        tmp_path, addresses(["one.test", "two.test"], 40), toml=campaign_toml(policy=policy)
    )
    with trio.fail_after(60):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2), on_start=seen.append
            )
    assert summary.counts[Status.DELIVERED] == 40
    assert len(seen[0].destinations) == 1
    assert world.servers["shared"].stats.connections_peak == 1


async def test_pushback_backs_the_site_off_and_it_recovers(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    # The site answers 421 to every third message for its first 15 messages, then calms down
    # (and 45 more messages leave the backoff time to end within the run).
    dots = 0

    def pushback(session: Session, verb: str, arg: str) -> str | None:
        nonlocal dots
        if verb != "DOT":
            return None
        dots += 1
        return "421 4.7.0 Try again later, closing" if dots <= 15 and dots % 3 == 0 else None

    sites = [SiteSpec("pushy", ("push.test",), "127.0.0.2", ServerScript(hook=pushback))]
    policy = """
[policy.defaults]
max_connections = 4
rate = "20/s"

[[policy.backoff]]
code = "421"
text = "(?i)try again later"
reduce_connections = 1
rate_factor = 0.5
duration = "1s"
"""
    metrics = Metrics()
    summary, world = await send(
        tmp_path, sites, addresses(["push.test"], 60), policy + FAST_RETRY, metrics=metrics
    )
    server = world.servers["pushy"]
    assert summary.counts[Status.DELIVERED] == 60
    # The five 421s, and the transactions pipelined behind them on the closed connections.
    assert summary.outcomes["throttled"] >= 5
    (label,) = _site_labels(metrics)
    assert sample(metrics, "bulksend_backoff_events_total", site=label, action="reduce") >= 1
    assert sample(metrics, "bulksend_backoff_events_total", site=label, action="restore") >= 1
    assert sample(metrics, "bulksend_backoff_active", site=label) == 0
    # Pushback deferrals are not attempts: everyone was delivered at their first attempt.
    assert {attempts for _status, attempts, _doubt in states(tmp_path).values()} == {1}
    accepted = [r for t in server.transactions for r in t.rcpt_to]
    assert sorted(accepted) == sorted(addresses(["push.test"], 60))


def _site_labels(metrics: Metrics) -> set[str]:
    return {
        s.labels["site"]
        for family in metrics.registry.collect()
        if family.name == "bulksend_site_recipients"
        for s in family.samples
    }


async def test_black_hole_site_does_not_slow_the_others(tmp_path: Path) -> None:
    sites = [
        SiteSpec("hole", ("hole.test",), "127.0.0.2", ServerScript(mode="blackhole")),
        SiteSpec("fast", ("fast.test",), "127.0.0.3"),
    ]
    policy = """
[policy.defaults]
max_connections = 3

[policy.timeouts]
greeting = "60s"
"""
    recipients = addresses(["hole.test"], 20) + addresses(["fast.test"], 200)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    seen: list[Scheduler] = []

    with trio.fail_after(30):
        async with running(sites) as world:
            fast, hole = world.servers["fast"], world.servers["hole"]
            async with trio.open_nursery() as nursery:

                async def stop_when_fast_is_done() -> None:
                    await fast.wait_until(lambda: fast.stats.messages == 200)
                    # The fast site finished while the black hole still holds its
                    # connections in the greeting: no waiting on the slow site.
                    assert hole.stats.connections_current == 3
                    seen[0].stop()

                nursery.start_soon(stop_when_fast_is_done)
                summary = await run_campaign(
                    Campaign.load(toml, {}),
                    run_options(tmp_path, world, grace=2),
                    on_start=seen.append,
                )
    assert summary.counts[Status.DELIVERED] == 200
    assert not summary.complete
    result = states(tmp_path)
    stuck = {a: s for a, s in result.items() if a.endswith("@hole.test")}
    # Nothing was lost: the black hole's recipients wait, unattempted, for a later run.
    assert {status for status, _a, _d in stuck.values()} == {Status.PENDING}
    assert {attempts for _s, attempts, _d in stuck.values()} == {0}


async def test_stop_hands_back_unsent_work_and_resume_finishes(tmp_path: Path) -> None:
    sites = [SiteSpec("slow", ("slow.test",), "127.0.0.2")]
    policy = """
[policy.defaults]
max_connections = 2
rate = "40/s"
"""
    recipients = addresses(["slow.test"], 80)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    seen: list[Scheduler] = []
    with trio.fail_after(60):
        async with running(sites) as world:
            server = world.servers["slow"]
            async with trio.open_nursery() as nursery:

                async def stop_midway() -> None:
                    await server.wait_until(lambda: server.stats.messages >= 20)
                    seen[0].stop()

                nursery.start_soon(stop_midway)
                first = await run_campaign(
                    Campaign.load(toml, {}),
                    run_options(tmp_path, world, grace=2),
                    on_start=seen.append,
                )
            assert not first.complete
            assert 20 <= first.counts[Status.DELIVERED] < 80
            second = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2)
            )
    assert second.complete
    assert second.counts[Status.DELIVERED] == 80
    accepted = [r for t in server.transactions for r in t.rcpt_to]
    assert sorted(accepted) == sorted(recipients)  # each exactly once
    assert second.counts[Status.IN_DOUBT] == 0


async def test_dns_failures_are_classified(tmp_path: Path) -> None:
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    recipients = ["a@ok.test", "b@nxdomain.test"]
    _summary, _world = await send(tmp_path, sites, recipients, "")
    result = states(tmp_path)
    assert result["a@ok.test"][0] is Status.DELIVERED
    assert result["b@nxdomain.test"][0] is Status.BOUNCED
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        bounced = next(iter(journal.iter_states([Status.BOUNCED])))
    assert bounced.enhanced_code == "5.1.2"
    assert bounced.category is not None
    assert bounced.category.value == "dns"


async def test_required_tls_to_a_site(tmp_path: Path, ca: trustme.CA) -> None:
    server_ctx = server_context(ca, "mx1.secure.test")
    client_ctx = client_context(ca)
    sites = [
        SiteSpec("secure", ("secure.test",), "127.0.0.2", ServerScript(tls_context=server_ctx))
    ]
    policy = """
[policy.defaults]
tls = "required"
"""
    toml = write_campaign(
        tmp_path, addresses(["secure.test"], 5), toml=campaign_toml(policy=policy)
    )
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}),
                run_options(tmp_path, world, grace=2, ssl_verified=client_ctx),
            )
            transactions = world.servers["secure"].transactions
    assert summary.counts[Status.DELIVERED] == 5
    assert all(t.tls for t in transactions)


async def test_dead_first_mx_falls_back_to_the_next(tmp_path: Path) -> None:
    sites = [SiteSpec("backup", ("backup.test",), "127.0.0.2")]
    recipients = addresses(["fallback.test"], 10)
    # Two messages per connection: five reconnections, each of which could retry the dead host.
    policy = """
[policy.defaults]
max_connections = 2
messages_per_connection = 2
"""
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    metrics = Metrics()
    with trio.fail_after(30):
        async with running(sites) as world:
            # Preference 10 is a host where nothing listens; 20 is the live site.
            world.dns.load(
                {
                    "fallback.test": {"MX": [(10, "dead.fallback.test"), (20, "mx1.backup.test")]},
                    "dead.fallback.test": {"A": ["127.0.0.9"]},
                }
            )
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2), metrics=metrics
            )
            accepted = [r for t in world.servers["backup"].transactions for r in t.rcpt_to]
    assert summary.counts[Status.DELIVERED] == 10
    assert sorted(accepted) == sorted(recipients)
    (label,) = _site_labels(metrics)
    failed = sample(metrics, "bulksend_connections_failed_total", site=label, reason="refused")
    # The dead host was tried by the senders that started together, then skipped while it
    # backs off: never once per message.
    assert 1 <= failed <= 2


async def test_a_dead_site_expires_at_max_age(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    sites = [
        SiteSpec("dead", ("dead.test",), "127.0.0.2", dead=True),
        SiteSpec("live", ("live.test",), "127.0.0.3"),
    ]
    policy = """
[policy.retry]
initial = "1s"
factor = 1.0
maximum = "1s"
jitter = 0.0
max_age = "3s"
"""
    recipients = addresses(["dead.test", "live.test"], 20)
    summary, _world = await send(tmp_path, sites, recipients, policy)
    assert summary.complete
    assert summary.counts[Status.DELIVERED] == 10
    assert summary.counts[Status.EXPIRED] == 10
    result = states(tmp_path)
    assert all(
        status is Status.EXPIRED and attempts >= 1
        for address, (status, attempts, _d) in result.items()
        if address.endswith("@dead.test")
    )


async def test_slow_final_replies_do_not_stall_the_end_of_the_run(tmp_path: Path) -> None:
    # The last recipients' final replies arrive after their domain was detached: the run
    # must still notice that nobody is waiting any more and finish.
    sites = [
        SiteSpec("slow", ("slowdot.test",), "127.0.0.2", ServerScript(reply_delays={"DOT": 1.0}))
    ]
    summary, _world = await send(tmp_path, sites, addresses(["slowdot.test"], 3), "", deadline=20)
    assert summary.complete
    assert summary.counts[Status.DELIVERED] == 3
