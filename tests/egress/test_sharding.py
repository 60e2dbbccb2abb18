"""Sharding by (site, source): with egress sources, one site's sources spread over the
workers, each worker sending to the site from its own sources only, limits held per source."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import plan_shards
from bulksend.delivery.shard import Shard, unit_of
from bulksend.delivery.workers import WorkerPool
from bulksend.journal import Journal
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.egress.test_sources import peak_connections
from tests.helpers.worlds import run_options

SITES = [SiteSpec("big", ("big.test", "big2.test"), "127.0.0.20")]
ADDRESS = {0: "127.0.0.2", 1: "127.0.0.3"}


def names_for_both_shards(site: str) -> dict[int, str]:
    """Source names whose (site, source) units fall one in each of two shards."""
    found: dict[int, str] = {}
    for name in (f"ip{i}" for i in itertools.count()):
        index = next(i for i in (0, 1) if Shard(i, 2).owns(f"{site} via {name}"))
        found.setdefault(index, name)
        if len(found) == 2:
            return found
    raise AssertionError("unreachable")


@pytest.mark.parametrize("planned", [False, True], ids=["each-shard-plans", "parent-plans"])
async def test_two_workers_split_one_site_by_source(tmp_path: Path, planned: bool) -> None:
    # Planned once for both (`send --workers`) or by each shard (`--shard I/N`): a site split
    # by source is never placed by size, its units stay where their hash puts them.
    recipients = addresses(["big.test", "big2.test"], 120)
    with trio.fail_after(90):
        async with running(SITES) as world:
            site = f"mx1.big.test:{world.smtp_port}"
            names = names_for_both_shards(site)  # shard -> the source it owns
            policy = '[policy.defaults]\npool = "main"\nmax_connections = 1\nrate = "50/s"\n'
            for shard, name in names.items():
                policy += f'[[egress.source]]\nname = "{name}"\naddress = "{ADDRESS[shard]}"\n'
            policy += f'[egress.pool.main]\nsources = ["{names[0]}", "{names[1]}"]\n'
            toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
            options = run_options(tmp_path, world, grace=2)
            if planned:
                plan = await plan_shards(Campaign.load(toml, {}), options, 2, None)
                assert plan.placed == {}
                options = dataclasses.replace(options, shard_plan=plan)
            pool = WorkerPool(toml, {}, options, 2)
            states = await pool.run()
            server = world.servers["big"]
    assert [s.failed for s in states] == [False, False]
    assert server.received() == Counter(recipients)  # every recipient exactly once
    units = [f"{site} via {names[0]}", f"{site} via {names[1]}"]
    peer_of = {r: t.peer for t in server.transactions for r in t.rcpt_to}
    for shard_index in (0, 1):
        shard = Shard(shard_index, 2)
        with Journal.open(shard.journal(tmp_path / "journal.sqlite3"), None) as journal:
            held = {s.address for s in journal.iter_states()}
        # The shard holds the recipients of the unit it owns, and sent them from its source.
        assert held == {r for r in recipients if shard.owns(unit_of(units, r))}
        assert held and {peer_of[r] for r in held} == {ADDRESS[shard_index]}
        # Its source's limits held: one connection at a time from that address.
        assert peak_connections(server, ADDRESS[shard_index]) == 1


def names_owned_together(sites: list[str]) -> tuple[str, str]:
    """Two source names whose units at ``sites[i]`` both fall in shard ``i`` (of two)."""
    for warm, other in itertools.product((f"ip{i}" for i in range(40)), repeat=2):
        if warm != other and all(
            Shard(i, 2).owns(f"{site} via {warm}") and Shard(i, 2).owns(f"{site} via {other}")
            for i, site in enumerate(sites)
        ):
            return warm, other
    raise AssertionError("no such names among 40")


async def test_two_shards_send_a_warming_sources_allowance_once_between_them(
    tmp_path: Path,
) -> None:
    # The warming source sends at site a from shard 0 and at site b from shard 1: each shard
    # sends its half of the day's 10, the other source the rest.
    sites = [
        SiteSpec("a", ("a.test",), "127.0.0.20"),
        SiteSpec("b", ("b.test",), "127.0.0.21"),
    ]
    recipients = addresses(["a.test", "b.test"], 80)
    with trio.fail_after(90):
        async with running(sites) as world:
            port = world.smtp_port
            warm, other = names_owned_together([f"mx1.a.test:{port}", f"mx1.b.test:{port}"])
            policy = f"""
[policy.defaults]
pool = "main"
max_connections = 1
[[egress.source]]
name = "{warm}"
address = "127.0.0.2"
warmup = [10]
[[egress.source]]
name = "{other}"
address = "127.0.0.3"
[egress.pool.main]
sources = ["{warm}", "{other}"]
"""
            toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
            pool = WorkerPool(toml, {}, run_options(tmp_path, world, grace=2), 2)
            states = await pool.run()
    assert [s.failed for s in states] == [False, False]
    peers = [Counter(t.peer for t in world.servers[name].transactions) for name in ("a", "b")]
    assert [p["127.0.0.2"] for p in peers] == [5, 5]  # each shard's share: 10 in all
    assert sum(p.total() for p in peers) == 80
