"""Warm-up over real sockets: a source sends at most its allowance a day; the rest goes to the
pool's other sources, or waits for the next day as throttle deferrals, never as attempts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from bulksend.campaign import Campaign
from bulksend.config.egress import DEFAULT_WARMUP
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.egress.warmup import Warmup
from bulksend.errors import ConfigError
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
from tests.helpers.worlds import run_options

SITES = [SiteSpec("warm", ("w.test",), "127.0.0.20")]
DAY = 86400.0


def sources(warmup: str) -> str:
    return f"""
[policy.defaults]
pool = "main"
max_connections = 2

[[egress.source]]
name = "ip2"
address = "127.0.0.2"
warmup = {warmup}

[[egress.source]]
name = "ip3"
address = "127.0.0.3"
"""


async def send(
    tmp_path: Path,
    policy: str,
    count: int,
    *,
    during: object = None,
    metrics: Metrics | None = None,
) -> tuple[RunSummary, World]:
    toml = write_campaign(tmp_path, addresses(["w.test"], count), toml=campaign_toml(policy=policy))
    async with running(SITES) as world, trio.open_nursery() as nursery:
        if callable(during):
            nursery.start_soon(during, world)
        summary = await run_campaign(
            Campaign.load(toml, {}), run_options(tmp_path, world), metrics=metrics
        )
        nursery.cancel_scope.cancel()
    return summary, world


def attempts(tmp_path: Path) -> set[int]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.attempts for s in journal.iter_states()}


async def test_a_warming_source_sends_its_allowance_and_the_other_source_the_rest(
    tmp_path: Path,
) -> None:
    policy = sources("[5]") + '\n[egress.pool.main]\nsources = ["ip2", "ip3"]\n'
    metrics = Metrics()
    with trio.fail_after(30):
        summary, world = await send(tmp_path, policy, 40, metrics=metrics)
    assert summary.counts[Status.DELIVERED] == 40
    peers = [t.peer for t in world.servers["warm"].transactions]
    assert peers.count("127.0.0.2") == 5
    assert peers.count("127.0.0.3") == 35
    assert attempts(tmp_path) == {1}
    # The source's use of its allowance, as the metrics endpoint shows it.
    registry = metrics.registry
    for name, value in (("day", 1), ("allowance", 5), ("sent", 5)):
        sample = registry.get_sample_value(f"bulksend_egress_warmup_{name}", {"source": "ip2"})
        assert sample == value
    assert registry.get_sample_value("bulksend_egress_warmup_sent", {"source": "ip3"}) is None


async def test_over_the_allowance_the_rest_waits_for_the_next_day(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    # One source, 10 messages a day for three days (then no limit): 25 recipients take
    # three days; the clock jumps over each night once the day's 10 are in.
    policy = sources("[10, 10, 10]") + '\n[egress.pool.main]\nsources = ["ip2"]\n'
    per_day: list[int] = []

    async def nights(world: World) -> None:
        server = world.servers["warm"]
        for total in (10, 20):
            await server.wait_until(lambda total=total: server.stats.messages >= total)
            await trio.sleep(5)  # nobody sends more today
            per_day.append(server.stats.messages)
            fast_clock.jump(DAY)

    with trio.fail_after(3 * DAY + 600):
        summary, world = await send(tmp_path, policy, 25, during=nights)
    assert per_day == [10, 20]
    assert summary.counts[Status.DELIVERED] == 25
    assert {t.peer for t in world.servers["warm"].transactions} == {"127.0.0.2"}
    assert attempts(tmp_path) == {1}  # the waiting was ours: throttle deferrals


def test_the_day_boundaries_of_a_warmup() -> None:
    warmup = Warmup((2, 3), start=1000.0)
    assert [warmup.take(1000.0 + i) for i in range(3)] == [0.0, 0.0, pytest.approx(DAY - 2)]
    assert warmup.allowance(1000.0 + DAY) == 3
    assert [warmup.take(1000.0 + DAY) for _ in range(4)][-1] == pytest.approx(DAY)
    assert warmup.allowance(1000.0 + 2 * DAY) is None  # past the curve: no limit
    assert warmup.take(1000.0 + 2 * DAY) == 0.0
    assert warmup.allowance(0.0) == 2  # before day 1: day 1's allowance
    assert DEFAULT_WARMUP[0] == 50
    assert list(DEFAULT_WARMUP) == sorted(DEFAULT_WARMUP)


async def test_a_restarted_run_keeps_the_days_count(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    # Run 1 sends the day's 10 (its --limit); run 2, the same day, sends nothing more until
    # the clock passes into day 2: the count was saved in the journal, not only in memory.
    policy = sources("[10, 10]") + '\n[egress.pool.main]\nsources = ["ip2"]\n'
    toml = write_campaign(tmp_path, addresses(["w.test"], 15), toml=campaign_toml(policy=policy))
    with trio.fail_after(2 * DAY):
        async with running(SITES) as world:
            server = world.servers["warm"]
            first = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, limit=10)
            )
            assert server.stats.messages == 10
            assert first.counts[Status.PENDING] == 5
            sent_on_day_1: list[int] = []

            async def night() -> None:
                await trio.sleep(60)  # run 2 is well under way, on day 1 still
                sent_on_day_1.append(server.stats.messages)
                fast_clock.jump(DAY)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(night)
                second = await run_campaign(Campaign.load(toml, {}), run_options(tmp_path, world))
    assert sent_on_day_1 == [10]
    assert second.counts[Status.DELIVERED] == 15
    assert attempts(tmp_path) == {1}


def test_shards_split_each_days_allowance_so_that_the_shares_add_up() -> None:
    for total, count in ((10, 3), (1, 4), (50, 2)):
        shares = [Warmup((total,), 0.0, share=(i, count)).allowance(0.0) for i in range(count)]
        assert sum(s or 0 for s in shares) == total
        assert max(s or 0 for s in shares) - min(s or 0 for s in shares) <= 1


async def test_processes_take_blocks_of_the_allowance_and_give_back_what_they_did_not_send(
    tmp_path: Path,
) -> None:
    # Two processes' warm-ups of one source over one journal (the ledger): 300 a day, taken
    # in blocks of 3; what the first took and did not send, a later run may send that day.
    with Journal.open(tmp_path / "j.sqlite3", {"campaign": "c"}) as journal:

        async def ledger(change: Callable[[str | None], str]) -> str:
            return journal.update_warmup("ip2", change)

        first, second = (Warmup((300,), 0.0, ledger=ledger) for _ in range(2))
        assert [await first.acquire(10.0) for _ in range(4)] == [0.0] * 4  # two blocks
        sent = 0
        while await second.acquire(10.0) == 0.0:
            sent += 1
        assert sent == 300 - 6  # the first holds 2 of its 6
        assert first.sent_today(10.0) == 4
        await first.give_back()
        later = Warmup((300,), 0.0, ledger=ledger)
        assert [await later.acquire(20.0) for _ in range(3)] == [0.0, 0.0, DAY - 20.0]


PROVIDER_POLICY = """
[policy.defaults]
pool = "main"
max_connections = 2

[policy.domains."o.test"]
pool = "solo"

[policy.providers.acme]
match = ["w.test"]

[[egress.source]]
name = "ip2"
address = "127.0.0.2"
warmup_providers = { acme = [5] }

[[egress.source]]
name = "ip3"
address = "127.0.0.3"

[egress.pool.main]
sources = ["ip2", "ip3"]

[egress.pool.solo]
sources = ["ip2"]
"""


async def test_a_source_warms_up_per_provider_and_sends_freely_elsewhere(tmp_path: Path) -> None:
    # ip2 may send 5 a day to acme (w.test): the rest of acme's 40 go from ip3; to o.test (no
    # provider, ip2 alone) it sends all 20 the same day.
    sites = [*SITES, SiteSpec("other", ("o.test",), "127.0.0.21")]
    recipients = addresses(["w.test"], 40) + addresses(["o.test"], 20)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=PROVIDER_POLICY))
    metrics = Metrics()
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world), metrics=metrics
            )
    assert summary.counts[Status.DELIVERED] == 60
    acme = Counter(t.peer for t in world.servers["warm"].transactions)
    assert acme == {"127.0.0.2": 5, "127.0.0.3": 35}
    assert Counter(t.peer for t in world.servers["other"].transactions) == {"127.0.0.2": 20}
    assert attempts(tmp_path) == {1}
    labels = {"source": "ip2/acme"}
    assert metrics.registry.get_sample_value("bulksend_egress_warmup_sent", labels) == 5
    assert metrics.registry.get_sample_value("bulksend_egress_warmup_allowance", labels) == 5


async def test_a_provider_warmup_must_name_a_provider(tmp_path: Path) -> None:
    policy = PROVIDER_POLICY.replace("{ acme = [5] }", "{ acmee = [5] }")
    toml = write_campaign(tmp_path, addresses(["w.test"], 1), toml=campaign_toml(policy=policy))
    async with running(SITES) as world:
        with pytest.raises(ConfigError) as caught:
            await run_campaign(Campaign.load(toml, {}), run_options(tmp_path, world))
    message = str(caught.value)
    assert "egress source 'ip2': warmup_providers.acmee: no provider of that name" in message
    assert "acme, " in message  # the known names
    assert "\n" not in message
