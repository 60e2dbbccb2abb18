"""--workers: shards in separate processes, sites owned by one shard, a dead worker resumed."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections import Counter
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.delivery.shard import Shard
from bulksend.delivery.workers import WorkerPool
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import addresses, campaign_toml, running, write_campaign
from tests.helpers.worlds import limits_policy, run_options, sharded_sites

# Six sites; "big" has four domains rolled up on one MX set.
SITES = sharded_sites(big_domains=4, small_sites=5)
DOMAINS = [d for s in SITES for d in s.domains]
RETRY = """
[policy.retry]
initial = "1s"
factor = 1.0
jitter = 0.0
"""


def shard_counts(tmp_path: Path, count: int) -> Counter[Status]:
    total: Counter[Status] = Counter()
    for i in range(count):
        with Journal.open(Shard(i, count).journal(tmp_path / "journal.sqlite3"), None) as j:
            total.update(j.counts())
    return total


async def test_two_workers_deliver_everyone_once_within_site_limits(tmp_path: Path) -> None:
    recipients = addresses(DOMAINS, 270)
    toml = write_campaign(
        tmp_path, recipients, toml=campaign_toml(policy=limits_policy(100) + RETRY)
    )
    with trio.fail_after(90):
        async with running(SITES) as world:
            pool = WorkerPool(toml, {}, run_options(tmp_path, world, grace=2), 2)
            states = await pool.run()
            received = world.received()
            peaks = {name: s.stats.connections_peak for name, s in world.servers.items()}
            smtp_port = world.smtp_port
    assert [s.failed for s in states] == [False, False]
    assert all(s.summary is not None and s.summary.complete for s in states)
    assert received == Counter(recipients)  # every recipient exactly once
    # Each site lived in one worker: its connection cap held across the whole run.
    assert max(peaks.values()) <= 2
    # Each shard's journal holds exactly the recipients of the sites it owns.
    for shard in (Shard(0, 2), Shard(1, 2)):
        owned = {
            d
            for spec in SITES
            if shard.owns(f"{','.join(spec.mx_names())}:{smtp_port}")
            for d in spec.domains
        }
        with Journal.open(shard.journal(tmp_path / "journal.sqlite3"), None) as j:
            assert {s.domain for s in j.iter_states()} == owned
    assert shard_counts(tmp_path, 2)[Status.DELIVERED] == 270
    assert pool.outcomes()["delivered"] == 270
    registry = CollectorRegistry()
    registry.register(pool.collector())
    assert registry.get_sample_value("bulksend_recipients_total", {"outcome": "delivered"}) == 270


async def test_a_dead_worker_is_reported_and_its_shard_resumes(tmp_path: Path) -> None:
    recipients = addresses(DOMAINS, 270)
    slow = limits_policy(20) + RETRY
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=slow))
    with trio.fail_after(120):
        async with running(SITES) as world:
            opts = run_options(tmp_path, world, grace=2)
            pool = WorkerPool(toml, {}, opts, 2)
            async with trio.open_nursery() as nursery:

                async def kill_worker_one() -> None:
                    await world.servers["big"].wait_until(lambda: world.delivered >= 40)
                    pid = pool.processes[1].pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)

                nursery.start_soon(kill_worker_one)
                states = await pool.run()
                nursery.cancel_scope.cancel()
            assert states[1].failed
            assert not states[0].failed
            resumed = await run_campaign(
                Campaign.load(toml, {}), dataclasses.replace(opts, shard=Shard(1, 2))
            )
            received = world.received()
    assert resumed.complete
    assert shard_counts(tmp_path, 2)[Status.DELIVERED] == 270
    assert set(received) == set(recipients)
    with Journal.open(Shard(1, 2).journal(tmp_path / "journal.sqlite3"), None) as j:
        in_doubt = {s.address: s.in_doubt for s in j.iter_states()}
    for address, n in received.items():
        assert n == 1 or n <= 1 + in_doubt.get(address, 0)
