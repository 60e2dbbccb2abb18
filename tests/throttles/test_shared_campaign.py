"""Three workers of one campaign, each with its own journal, share a site's limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
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
    assert observed == pytest.approx(RATE, rel=0.05)
