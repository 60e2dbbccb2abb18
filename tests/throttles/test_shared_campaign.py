"""Three workers of one campaign, each with its own journal, share a site's limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript, Session
from tests.helpers.redis import RedisServer, prewarm
from tests.helpers.worlds import run_options

RATE = 30.0
CAP = 2


async def test_three_workers_keep_the_site_rate_and_cap_in_total(
    redis_server: RedisServer, campaign_id: str, tmp_path: Path
) -> None:
    sites = [SiteSpec("paced", ("p.test",), "127.0.0.2")]
    policy = f"""
[policy.defaults]
max_connections = {CAP}
rate = "{RATE:g}/s"
"""
    await prewarm(redis_server.url, campaign_id)  # else the first lease waits one TTL
    summaries: list[RunSummary] = []

    async def worker(index: int) -> None:
        directory = tmp_path / f"worker{index}"
        recipients = [a.replace("user", f"w{index}u") for a in addresses(["p.test"], 30)]
        toml = write_campaign(
            directory, recipients, toml=campaign_toml(campaign_id=campaign_id, policy=policy)
        )
        options = run_options(
            directory,
            world,
            grace=2,
            journal=directory / "journal.sqlite3",
            throttle=redis_server.url,
        )
        summaries.append(await run_campaign(Campaign.load(toml, {}), options))

    with trio.fail_after(60):
        async with running(sites) as world, trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(worker, index)
    assert [s.counts[Status.DELIVERED] for s in summaries] == [30, 30, 30]
    server = world.servers["paced"]
    assert server.stats.connections_peak <= CAP
    times = sorted(server.stats.message_times)
    observed = (len(times) - 1) / (times[-1] - times[0])
    # Never faster than the site's rate; slower only by what a loaded machine costs.
    assert RATE * 0.8 <= observed <= RATE * 1.05


async def test_a_rate_factor_backoff_slows_the_site_under_a_shared_throttle(
    redis_server: RedisServer, campaign_id: str, tmp_path: Path
) -> None:
    # 40/s until the 5th message's "451 4.7.0 slow down", a rule that quarters the rate: the
    # sink sees 10/s from then on (the shared store's reservations follow the backoff).
    pushed_at: list[float] = []

    def pushback(_session: Session, verb: str, _arg: str) -> str | None:
        if verb == "DOT" and not pushed_at and len(server.transactions) == 4:
            pushed_at.append(trio.current_time())
            return "451 4.7.0 slow down"
        return None

    sites = [SiteSpec("pushy", ("p.test",), "127.0.0.2", ServerScript(hook=pushback))]
    policy = """
[policy.defaults]
max_connections = 1
rate = "40/s"

[[policy.backoff]]
code = "451"
text = "slow down"
rate_factor = 0.25
duration = "1m"
"""
    await prewarm(redis_server.url, campaign_id)
    toml = write_campaign(
        tmp_path,
        addresses(["p.test"], 40),
        toml=campaign_toml(campaign_id=campaign_id, policy=policy),
    )
    with trio.fail_after(60):
        async with running(sites) as world:
            server = world.servers["pushy"]
            options = run_options(tmp_path, world, grace=2, throttle=redis_server.url)
            summary = await run_campaign(Campaign.load(toml, {}), options)
    assert summary.counts[Status.DELIVERED] == 40
    # Past the slots reserved before the backoff (one batch, 8 at 40/s: 0.2 s).
    after = sorted(t for t in server.stats.message_times if t > pushed_at[0] + 0.5)
    assert len(after) >= 25
    observed = (len(after) - 1) / (after[-1] - after[0])
    assert observed == pytest.approx(10.0, rel=0.1)
